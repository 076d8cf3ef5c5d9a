//! Fuzzes the model-directory files Ember parses, each through the
//! project's own functions: any bytes as `tokenizer.json` (then encode,
//! decode, stream-decode, the tool tags and the grammar compiler's token
//! trie), as `config.json` (`ModelConfig::from_json_str`), as
//! `tokenizer_config.json` (the chat template it names, compiled and
//! rendered) and as `generation_config.json` (its `eos_token_id`). Each
//! input is tried as all four: seeds of one kind mutate into the others.
//! Ok or an error, never a panic or a hang.
#![no_main]

use std::path::Path;

use ember_engine::loaded_model::template_from_tokenizer_config;
use ember_engine::tokenizer::IncrementalDecoder;
use ember_engine::{GrammarCompiler, RenderOptions, TextTokenizer};
use ember_gateway::fuzz_api::Tags;
use ember_model::ModelConfig;
use serde_json::{Value, json};

const SAMPLE: &str = "Hello <tool_call>\n{\"a\": 1}\n</tool_call> naïve 東京 🙂\n\n";

fn tokenizer_json(text: &str) {
    // `TextTokenizer::from_file` after reading the file.
    let Ok(tokenizer) = TextTokenizer::from_json(text, Path::new("tokenizer.json")) else {
        return;
    };
    for special in [false, true] {
        if let Ok(ids) = tokenizer.encode(SAMPLE, special) {
            let _ = tokenizer.decode(&ids);
            let mut decoder = IncrementalDecoder::new(&tokenizer);
            for &id in ids.iter().take(64) {
                let _ = decoder.push(id);
            }
            let _ = decoder.finish();
            for &id in ids.iter().take(8) {
                let _ = tokenizer.token_text(id);
            }
        }
    }
    let _ = tokenizer.decode(&[0, 1, 2, u32::MAX]);
    let _ = Tags::for_tokenizer(&tokenizer);
    let end: Vec<u32> = tokenizer.token_id("<|im_end|>").into_iter().collect();
    let _ = GrammarCompiler::new(&tokenizer, 512, &end);
}

fn tokenizer_config(config: &Value) {
    let Ok(Some(template)) = template_from_tokenizer_config(config, Path::new("tokenizer_config.json")) else {
        return;
    };
    let messages = [
        json!({"role": "system", "content": "Be brief."}),
        json!({"role": "user", "content": "Weather in Paris?"}),
        json!({"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}),
        json!({"role": "tool", "tool_call_id": "call_1", "content": "18C"}),
    ];
    let tools = [json!({"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}})];
    let _ = template.render(RenderOptions {
        messages: &messages,
        tools: template.reads_tools().then_some(&tools[..]),
        add_generation_prompt: true,
    });
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // The files are read with `read_to_string`: not UTF-8 is an I/O error.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    tokenizer_json(text);
    let _ = ModelConfig::from_json_str(text, Path::new("config.json"));
    if let Ok(json) = serde_json::from_str::<Value>(text) {
        tokenizer_config(&json);
        let _ = ember_model::config::token_ids(json.get("eos_token_id"));
    }
});
