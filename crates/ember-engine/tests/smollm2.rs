//! The real default model, SmolLM2-135M-Instruct (Q4_1 GGUF), against Hugging
//! Face transformers loading the same file (dequantized to f32): the chat
//! template renders the same text, the GGUF-built tokenizer gives the same
//! ids, and greedy answers are the same tokens. References:
//! tests/fixtures/gguf/smollm2.json, made by scripts/make_gguf_reference.py.
//!
//! Needs the default model: scripts/fetch-default-model.sh (scripts/test.sh runs it).

use std::path::PathBuf;

use ember_engine::default_model::default_model_path;
use ember_engine::{EngineConfig, EngineHandle, GenerationRequest, KvCacheMemory, LoadedModel, RenderOptions, SamplingParams};
use ember_model::{DType, Device};
use serde::Deserialize;
use serde_json::Value;

#[derive(Deserialize)]
struct Chat {
    messages: Vec<Value>,
    rendered: String,
    prompt_ids: Vec<u32>,
    greedy_tokens: Vec<u32>,
    answer: String,
}

#[derive(Deserialize)]
struct Reference {
    chats: Vec<Chat>,
}

fn load() -> anyhow::Result<(LoadedModel, Reference)> {
    let path = default_model_path();
    anyhow::ensure!(path.is_file(), "{} is missing: run scripts/fetch-default-model.sh", path.display());
    let reference_path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/gguf/smollm2.json");
    let reference = serde_json::from_str(&std::fs::read_to_string(reference_path)?)?;
    Ok((LoadedModel::open(&path, &Device::flex(), DType::F32)?, reference))
}

#[test]
fn chats_render_tokenize_and_answer_like_transformers() -> anyhow::Result<()> {
    let (loaded, reference) = load()?;
    let config = EngineConfig {
        kv_cache_memory: KvCacheMemory::Tokens(4096),
        ..EngineConfig::default()
    };
    let engine = EngineHandle::start(loaded, config)?;
    let model = engine.model();
    let tokenizer = model.tokenizer.as_ref().ok_or_else(|| anyhow::anyhow!("no tokenizer"))?;
    let template = model.chat_template.as_ref().ok_or_else(|| anyhow::anyhow!("no template"))?;
    assert_eq!(reference.chats.len(), 3);
    for chat in &reference.chats {
        let rendered = template.render(RenderOptions {
            messages: &chat.messages,
            tools: None::<&[Value]>,
            add_generation_prompt: true,
        })?;
        assert_eq!(rendered, chat.rendered);
        let ids = tokenizer.encode(&rendered, false)?;
        assert_eq!(ids, chat.prompt_ids, "{rendered}");

        let request = GenerationRequest {
            max_tokens: Some(chat.greedy_tokens.len()),
            sampling: SamplingParams::greedy(),
            ..GenerationRequest::new(ids)
        };
        let output = engine.submit(request)?.collect_blocking();
        let choice = &output.choices[0];
        assert_eq!(choice.token_ids, chat.greedy_tokens, "{:?}", chat.messages);
        assert_eq!(tokenizer.decode(&choice.token_ids)?, chat.answer);
        assert_eq!(choice.text, chat.answer.trim_end_matches("<|im_end|>"));
    }
    Ok(())
}

#[test]
fn gguf_config_and_special_tokens() -> anyhow::Result<()> {
    let (loaded, _) = load()?;
    let config = loaded.model.config();
    assert_eq!(
        (config.num_hidden_layers, config.hidden_size, config.num_attention_heads, config.num_key_value_heads),
        (30, 576, 9, 3)
    );
    assert_eq!((config.head_dim, config.vocab_size), (64, 49152));
    assert!(config.tie_word_embeddings);
    let tokenizer = loaded.info.tokenizer.as_ref().ok_or_else(|| anyhow::anyhow!("no tokenizer"))?;
    // Special tokens stay whole and decode away.
    assert_eq!(tokenizer.encode("<|im_start|>user", false)?[0], 1);
    assert_eq!(tokenizer.token_id("<|im_end|>"), Some(2));
    assert!(loaded.info.chat_stop_ids().contains(&2));
    Ok(())
}

/// The CPU fast path (Q4_1 blocks and the Q8_0 tied head multiplied by the
/// SIMD kernels, host KV pool, paged attention) against the generic path
/// (every tensor dequantized to f32 at load, Burn ops) on the real model:
/// all logits of the first chat's prompt agree within 0.05, and so does the
/// argmax at every position. The SIMD kernels round activations to i16
/// (15 bits of each 32 values' largest magnitude): measured 0.023 on logits
/// of magnitude ~20, where f32 activations differed by 1.1e-4 (summation
/// order only); the greedy answers above stay those of the f32 reference.
#[test]
fn fast_path_logits_match_the_generic_path() -> anyhow::Result<()> {
    use ember_model::gguf::GgufFile;
    use ember_model::{CausalLm, LoadOptions};

    let (_, reference) = load()?;
    let file = GgufFile::open(&default_model_path())?;
    let fast = CausalLm::from_gguf(&file, &Device::flex(), DType::F32)?;
    let generic_options = LoadOptions {
        cpu_fast_path: false,
        ..LoadOptions::default()
    };
    let generic = CausalLm::from_gguf_with(&file, &Device::flex(), DType::F32, generic_options)?;
    let prompt = &reference.chats[0].prompt_ids;
    let vocab = fast.config().vocab_size;
    let got: Vec<f32> = fast.logits(prompt)?.into_data().try_to_vec()?;
    let want: Vec<f32> = generic.logits(prompt)?.into_data().try_to_vec()?;
    assert_eq!(got.len(), prompt.len() * vocab);
    let worst = got
        .iter()
        .zip(&want)
        .map(|(g, w)| (g - w).abs())
        .fold(0.0f32, |worst, d| if d.is_nan() { f32::INFINITY } else { worst.max(d) });
    println!("SmolLM2 fast vs generic: max |logit diff| {worst}");
    assert!(worst <= 0.05, "max |logit diff| {worst}");
    let argmax = |row: &[f32]| row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i);
    for (position, (g, w)) in got.chunks(vocab).zip(want.chunks(vocab)).enumerate() {
        assert_eq!(argmax(g), argmax(w), "top token at position {position}");
    }
    Ok(())
}

/// `TextSide` read from the GGUF alone (what `ember eval --tokenizer`
/// counts with) gives a one-message chat as many tokens as transformers.
#[test]
fn the_text_side_alone_counts_a_user_message_like_transformers() -> anyhow::Result<()> {
    let (_, reference) = load()?;
    let side = ember_engine::TextSide::open(&default_model_path())?;
    let mut checked = 0;
    for chat in &reference.chats {
        if let [message] = chat.messages.as_slice()
            && message["role"] == "user"
        {
            let content = message["content"].as_str().unwrap_or_default();
            assert_eq!(side.count_user_message(content)?, chat.prompt_ids.len(), "{content}");
            checked += 1;
        }
    }
    assert!(checked > 0, "the reference has a one-message chat");
    Ok(())
}
