//! Qwen3's own chat templates (Qwen3-Instruct-2507 and the original
//! hybrid-thinking Qwen3) render exactly the strings Hugging Face's renderer
//! gives: plain chats, system prompts, tools (`tojson` spelled as Python's
//! `json.dumps`), tool calls with dict and string arguments, tool results,
//! reasoning content. References: tests/fixtures/qwen3-templates/reference.json,
//! made by scripts/make_qwen3_template_reference.py.
//!
//! Needs the templates: scripts/fetch-qwen3-templates.sh (scripts/test.sh runs it).

use std::path::PathBuf;

use ember_engine::default_model::cache_dir;
use ember_engine::{ChatTemplate, RenderOptions};
use serde::Deserialize;
use serde_json::Value;

#[derive(Deserialize)]
struct Case {
    name: String,
    messages: Vec<Value>,
    tools: Option<Vec<Value>>,
    add_generation_prompt: bool,
    rendered: String,
}

#[derive(Deserialize)]
struct Template {
    file: String,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Reference {
    templates: Vec<Template>,
}

#[test]
fn qwen3_templates_render_like_hugging_face() -> anyhow::Result<()> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/qwen3-templates/reference.json");
    let reference: Reference = serde_json::from_str(&std::fs::read_to_string(path)?)?;
    assert_eq!(reference.templates.len(), 2);
    for template in &reference.templates {
        let file = cache_dir().join("qwen3").join(&template.file);
        anyhow::ensure!(file.is_file(), "{} is missing: run scripts/fetch-qwen3-templates.sh", file.display());
        let compiled = ChatTemplate::new(&std::fs::read_to_string(&file)?, "", "<|im_end|>")?;
        assert!(!template.cases.is_empty(), "{}: no reference cases", template.file);
        for case in &template.cases {
            let rendered = compiled.render(RenderOptions {
                messages: &case.messages,
                tools: case.tools.as_deref(),
                add_generation_prompt: case.add_generation_prompt,
            })?;
            assert_eq!(rendered, case.rendered, "{}: {}", template.file, case.name);
        }
    }
    Ok(())
}
