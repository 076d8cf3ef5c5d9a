//! Chat templates: the model's own Jinja `chat_template` (from
//! tokenizer_config.json or GGUF `tokenizer.chat_template`), rendered with
//! minijinja configured like Hugging Face's `apply_chat_template`:
//! `trim_blocks` and `lstrip_blocks` on, Python string methods
//! (`.strip()`, `.startswith()`, ...) through minijinja-contrib's pycompat,
//! `raise_exception`, and `tojson` keeping key order.

use minijinja::{Environment, Error as JinjaError, ErrorKind, Value, context};
use serde::Serialize;

/// Why a template could not be compiled or rendered.
#[derive(Debug, thiserror::Error)]
#[error("chat template: {0:#}")]
pub struct ChatTemplateError(#[from] JinjaError);

/// A compiled chat template and the special tokens it may refer to.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

/// What a template is rendered with.
#[derive(Debug, Clone, Copy)]
pub struct RenderOptions<'a, M: Serialize, T: Serialize> {
    /// OpenAI-shaped messages (`role`, `content`, ...).
    pub messages: &'a [M],
    /// Tool definitions, passed as `tools` when present.
    pub tools: Option<&'a [T]>,
    /// Append the assistant turn opener.
    pub add_generation_prompt: bool,
}

const TEMPLATE_NAME: &str = "chat";

impl ChatTemplate {
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self, ChatTemplateError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |message: String| -> Result<Value, JinjaError> {
            Err(JinjaError::new(ErrorKind::InvalidOperation, message))
        });
        env.add_template_owned(TEMPLATE_NAME.to_owned(), source.to_owned())?;
        Ok(Self {
            env,
            bos_token: bos_token.to_owned(),
            eos_token: eos_token.to_owned(),
        })
    }

    /// Renders messages into the prompt text the model was trained on.
    pub fn render<M: Serialize, T: Serialize>(&self, options: RenderOptions<'_, M, T>) -> Result<String, ChatTemplateError> {
        let template = self.env.get_template(TEMPLATE_NAME)?;
        let tools = options.tools.map(Value::from_serialize);
        Ok(template.render(context! {
            messages => Value::from_serialize(options.messages),
            tools => tools,
            add_generation_prompt => options.add_generation_prompt,
            bos_token => self.bos_token,
            eos_token => self.eos_token,
        })?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NO_TOOLS: Option<&[serde_json::Value]> = None;

    #[test]
    fn python_string_methods_and_trimming_work() -> Result<(), ChatTemplateError> {
        let t = ChatTemplate::new(
            "{% for m in messages %}\n  {{ m.role.upper() }}: {{ m.content.strip() }}\n{% endfor %}{% if add_generation_prompt %}A:{% endif %}",
            "<s>",
            "</s>",
        )?;
        let out = t.render(RenderOptions {
            messages: &[json!({"role": "user", "content": "  hi  "})],
            tools: NO_TOOLS,
            add_generation_prompt: true,
        })?;
        // As Jinja2 with trim_blocks + lstrip_blocks renders it.
        assert_eq!(out, "  USER: hi\nA:");
        Ok(())
    }

    #[test]
    fn raise_exception_is_an_error_not_a_panic() -> Result<(), ChatTemplateError> {
        let t = ChatTemplate::new("{{ raise_exception('no system role') }}", "", "")?;
        let err = t.render(RenderOptions {
            messages: &[json!({"role": "system", "content": ""})],
            tools: NO_TOOLS,
            add_generation_prompt: false,
        });
        assert!(err.is_err_and(|e| e.to_string().contains("no system role")));
        Ok(())
    }
}
