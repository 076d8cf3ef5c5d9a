//! Fuzzes a chat-completions request body the way the handler takes it:
//! any bytes must give a rendered prompt or an `ApiError`, never a panic or
//! a hang. The body goes through `parse_body` (unknown fields, types), the
//! streaming options, `tools`/`tool_choice`/`parallel_tool_calls` (and the
//! grammar text they make), `response_format`, then the message checks and
//! the chat template and tokenizer, in the order the handler runs them
//! but without stopping at the first error, so that a bad field elsewhere
//! does not hide the rest from the fuzzer.
//!
//! Templates: a ChatML one that ignores `tools` (the hermes rewrite runs)
//! and, when scripts/fetch-qwen3-templates.sh has fetched them, Qwen3's own
//! two, which read `tools` themselves.
#![no_main]

use std::path::Path;
use std::sync::LazyLock;

use ember_engine::default_model::cache_dir;
use ember_engine::{ChatTemplate, TextTokenizer};
use ember_gateway::Limits;
use ember_gateway::fuzz_api::{
    Tags, Tools, content_schema, parse_chat_request, render_chat, streaming,
};
use serde_json::Value;

/// The gateway tests' ChatML template (SmolLM2's layout).
const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

const TOKENIZER: &str = include_str!("../../tests/fixtures/qwen3-tiny/tokenizer.json");

struct Setup {
    templates: Vec<ChatTemplate>,
    tokenizer: TextTokenizer,
    /// Textual tags (SmolLM2) and single-token tags (Qwen3's ids 151657/8).
    tags: [Tags; 2],
    max_messages: usize,
}

static SETUP: LazyLock<Setup> = LazyLock::new(|| {
    let mut templates = vec![ChatTemplate::new(CHATML, "", "<|im_end|>").expect("ChatML template")];
    let qwen3 = cache_dir().join("qwen3");
    for file in ["Qwen3-Instruct-2507.jinja", "Qwen3-hybrid.jinja"] {
        match std::fs::read_to_string(qwen3.join(file)) {
            Ok(source) => templates.push(ChatTemplate::new(&source, "", "<|im_end|>").expect("Qwen3 template")),
            Err(e) => eprintln!("{file} not used ({e}); run scripts/fetch-qwen3-templates.sh"),
        }
    }
    let tokenizer = TextTokenizer::from_json(TOKENIZER, Path::new("tokenizer.json")).expect("fixture tokenizer");
    let tags = [
        Tags::for_tokenizer(&tokenizer),
        Tags {
            open: "<[151657]>".into(),
            close: "<[151658]>".into(),
            special: true,
        },
    ];
    Setup {
        templates,
        tokenizer,
        tags,
        max_messages: Limits::default().max_messages,
    }
});

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let setup = &*SETUP;
    // actix's JSON extractor: anything that is not JSON never reaches the handler.
    let Ok(body) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let Ok((req, sampling)) = parse_chat_request(body) else {
        return;
    };
    let _ = streaming(&sampling);
    let tools = Tools::from_request(req.tools.as_ref(), req.tool_choice.as_ref(), req.parallel_tool_calls.as_ref())
        .ok()
        .flatten();
    let schema = content_schema(req.response_format.as_ref()).ok().flatten();
    if let Some(tools) = &tools {
        for tags in &setup.tags {
            if let Ok(grammar) = tools.grammar(tags, schema.as_ref()) {
                std::hint::black_box(grammar);
            }
        }
    }
    for template in &setup.templates {
        for add_generation_prompt in [true, false] {
            if let Ok(prompt) = render_chat(template, &req, setup.max_messages, tools.as_ref(), add_generation_prompt) {
                let _ = setup.tokenizer.encode(&prompt, false);
            }
        }
    }
});
