//! The tokenizer wrapper against encodings made by Hugging Face `tokenizers`
//! (scripts/make_fixtures.py), including accents, CJK and emoji.

use std::path::PathBuf;

use ember_engine::TextTokenizer;
use serde::Deserialize;

#[derive(Deserialize)]
struct Case {
    text: String,
    ids: Vec<u32>,
    decoded: String,
}

#[derive(Deserialize)]
struct Reference {
    tokenizer: Vec<Case>,
}

#[test]
fn encodes_and_decodes_like_hugging_face() -> anyhow::Result<()> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/qwen3-tiny");
    let reference: Reference = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json"))?)?;
    let tokenizer = TextTokenizer::from_file(&dir.join("tokenizer.json"))?;
    assert!(!reference.tokenizer.is_empty());
    for case in reference.tokenizer {
        assert_eq!(tokenizer.encode(&case.text, true)?, case.ids, "{}", case.text);
        assert_eq!(tokenizer.decode(&case.ids)?, case.decoded, "{}", case.text);
    }
    Ok(())
}

#[test]
fn missing_tokenizer_file_is_named() {
    let err = TextTokenizer::from_file(std::path::Path::new("/no/such/tokenizer.json"))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("/no/such/tokenizer.json"), "{err}");
}

/// Found by the `model_files` fuzz target: tokenizers 0.22 panics (an
/// `expect("Helper")` in its decoder deserializer) on a JSON syntax error
/// inside `decoder`, so a tokenizer.json cut short there took the server
/// down at load instead of naming the file.
#[test]
fn tokenizer_json_cut_short_in_its_decoder_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    for text in ["{\"decoder\":", "{\"decoder\": {\"type\": \"ByteLevel\",", "{\"decoder\": [}"] {
        let path = dir.path().join("tokenizer.json");
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
        let err = TextTokenizer::from_file(&path).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("tokenizer.json"), "{text}: {err}");
        let err = TextTokenizer::from_json(text, &path).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("tokenizer.json"), "{text}: {err}");
    }
}
