//! Fuzzes the grammar compiler with client schemas: any bytes, taken as a
//! `response_format` JSON schema and as a tool's `parameters`, must compile
//! or give an error, never panic or hang. A compiled grammar also runs a
//! few steps of its matcher (mask, then one allowed token), which is where
//! llguidance does the rest of its work lazily.
//!
//! The compiler (token trie of the tiny Qwen3 fixture's tokenizer) is built
//! once, as `ember serve` builds it once per model.
#![no_main]

use std::path::Path;
use std::sync::LazyLock;

use ember_engine::{CompiledGrammar, Grammar, GrammarCompiler, LogitsProcessor, TextTokenizer};
use ember_gateway::fuzz_api::{CLOSE_TAG, OPEN_TAG, Tags, Tools};
use serde_json::{Value, json};

const TOKENIZER: &str = include_str!("../../tests/fixtures/qwen3-tiny/tokenizer.json");
/// The model's output width, padded past the fixture's vocabulary as real models are.
const VOCAB: usize = 512;
/// Matcher steps per compiled grammar.
const STEPS: usize = 8;

struct Setup {
    compiler: GrammarCompiler,
    /// `<tool_call>`/`</tool_call>` as single tokens (Qwen3), and as text (SmolLM2).
    tags: [Tags; 2],
}

static SETUP: LazyLock<Setup> = LazyLock::new(|| {
    // The fixture plus the tool tags as tokens 392/393, as the gateway tests do.
    let mut json: Value = serde_json::from_str(TOKENIZER).expect("fixture tokenizer");
    let added = json["added_tokens"].as_array_mut().expect("added_tokens");
    for (id, content) in [(392, OPEN_TAG), (393, CLOSE_TAG)] {
        added.push(json!({"id": id, "content": content, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": false}));
    }
    let tokenizer = TextTokenizer::from_json(&json.to_string(), Path::new("tokenizer.json")).expect("fixture tokenizer");
    let end: Vec<u32> = tokenizer.token_id("<|im_end|>").into_iter().collect();
    let compiler = GrammarCompiler::new(&tokenizer, VOCAB, &end).expect("grammar compiler");
    let special = Tags::for_tokenizer(&tokenizer);
    assert!(special.special, "tool tags are single tokens");
    let text = Tags {
        open: format!("{OPEN_TAG:?}"),
        close: format!("{CLOSE_TAG:?}"),
        special: false,
    };
    Setup {
        compiler,
        tags: [special, text],
    }
});

/// A few steps of a fresh matcher: the mask, then an allowed token picked by `salt`.
fn walk(compiled: &CompiledGrammar, salt: usize) {
    let mut matcher = compiled.matcher();
    let mut logits = vec![0.0f32; VOCAB];
    for step in 0..STEPS {
        logits.fill(0.0);
        if matcher.process(&mut logits).is_err() {
            return;
        }
        let allowed: Vec<u32> = (0..VOCAB as u32).filter(|&i| logits[i as usize].is_finite()).collect();
        if allowed.is_empty() {
            return;
        }
        let token = allowed[(salt.wrapping_mul(31).wrapping_add(step * 7)) % allowed.len()];
        match matcher.accept(token) {
            Ok(false) => {}
            Ok(true) | Err(_) => return,
        }
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let setup = &*SETUP;
    let Ok(schema) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let salt = data.len();
    // As `response_format.json_schema.schema` (the handler passes objects and `true`).
    if let Ok(compiled) = setup.compiler.compile(&Grammar::JsonSchema(schema.clone())) {
        walk(&compiled, salt);
    }
    // As one tool's `parameters`, in the Lark grammar of a whole answer.
    let tools = json!([{"type": "function", "function": {"name": "f", "parameters": schema}}]);
    let choice = ["auto", "required", "none"][salt % 3];
    let Ok(Some(tools)) = Tools::from_request(Some(&tools), Some(&json!(choice)), Some(&json!(salt % 2 == 0))) else {
        return;
    };
    let Ok(grammar) = tools.grammar(&setup.tags[(salt / 3) % 2], None) else {
        return;
    };
    match setup.compiler.compile(&grammar) {
        Ok(compiled) => walk(&compiled, salt),
        // What the handler does to name the tool at fault.
        Err(_) => {
            let _ = setup.compiler.compile(&Tools::function_grammar(&tools.functions[0]));
        }
    }
});
