//! Chat templates: the model's own Jinja `chat_template` (from
//! tokenizer_config.json or GGUF `tokenizer.chat_template`), rendered with
//! minijinja configured like Hugging Face's `apply_chat_template`:
//! `trim_blocks` and `lstrip_blocks` on, Python string methods
//! (`.strip()`, `.startswith()`, ...) through minijinja-contrib's pycompat,
//! `raise_exception`, and a `tojson` that writes what Python's
//! `json.dumps` writes (key order kept, `", "` and `": "` separators, no
//! HTML escaping, `indent`), since tool signatures reach the model through it.

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
    /// Whether the source uses `tools` at all, found once at compile time.
    reads_tools: bool,
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
        env.add_filter("tojson", tojson);
        env.add_template_owned(TEMPLATE_NAME.to_owned(), source.to_owned())?;
        // Static analysis re-parses the source, so it runs once, not per request.
        let reads_tools = env.get_template(TEMPLATE_NAME)?.undeclared_variables(false).contains("tools");
        Ok(Self {
            env,
            bos_token: bos_token.to_owned(),
            eos_token: eos_token.to_owned(),
            reads_tools,
        })
    }

    /// Whether the template reads `tools` at all; many (SmolLM2's among
    /// them) ignore it, and then Ember writes the tool prompt itself.
    pub fn reads_tools(&self) -> bool {
        self.reads_tools
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

/// `json.dumps(value, ensure_ascii=False)`: how Qwen3's template writes a
/// tool signature, for prompts Ember writes itself.
pub fn python_json<T: Serialize + ?Sized>(value: &T) -> String {
    to_python_json(value, None)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default()
}

/// Hugging Face's `tojson`: `json.dumps(value, ensure_ascii=False,
/// indent=indent)`. minijinja's own escapes `<`, `>`, `&` and `'` for HTML and
/// writes no spaces, which would change the prompt the model sees.
fn tojson(value: &Value, kwargs: minijinja::value::Kwargs) -> Result<Value, JinjaError> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    // Serialized straight from the template value, which keeps key order.
    let written = if sort_keys == Some(true) {
        let mut json = serde_json::to_value(value).map_err(|e| JinjaError::new(ErrorKind::InvalidOperation, e.to_string()))?;
        json.sort_all_objects();
        to_python_json(&json, indent)
    } else {
        to_python_json(value, indent)
    };
    let out = written.map_err(|e| JinjaError::new(ErrorKind::InvalidOperation, e.to_string()))?;
    Ok(Value::from_safe_string(String::from_utf8_lossy(&out).into_owned()))
}

/// `json.dumps(value, ensure_ascii=False, indent=indent)`.
fn to_python_json<T: Serialize + ?Sized>(value: &T, indent: Option<usize>) -> serde_json::Result<Vec<u8>> {
    let mut out = Vec::new();
    match indent {
        Some(n) => {
            let spaces = vec![b' '; n];
            let formatter = serde_json::ser::PrettyFormatter::with_indent(&spaces);
            value.serialize(&mut serde_json::Serializer::with_formatter(&mut out, formatter))?;
        }
        None => value.serialize(&mut serde_json::Serializer::with_formatter(&mut out, PythonFormatter))?,
    }
    Ok(out)
}
/// Python's default `json.dumps` separators: `", "` between items, `": "`
/// after keys.
struct PythonFormatter;

impl serde_json::ser::Formatter for PythonFormatter {
    fn begin_array_value<W: ?Sized + std::io::Write>(&mut self, writer: &mut W, first: bool) -> std::io::Result<()> {
        if first { Ok(()) } else { writer.write_all(b", ") }
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(&mut self, writer: &mut W, first: bool) -> std::io::Result<()> {
        if first { Ok(()) } else { writer.write_all(b", ") }
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, writer: &mut W) -> std::io::Result<()> {
        writer.write_all(b": ")
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
    fn tojson_writes_what_python_json_dumps_writes() -> Result<(), ChatTemplateError> {
        let t = ChatTemplate::new("{{ messages[0] | tojson }}|{{ messages[0] | tojson(indent=2) }}", "", "")?;
        let out = t.render(RenderOptions {
            messages: &[json!({"z": "a<b & 'c' 東京", "a": [1, 2.5, true, null], "e": {}})],
            tools: NO_TOOLS,
            add_generation_prompt: false,
        })?;
        // json.dumps(..., ensure_ascii=False) and json.dumps(..., ensure_ascii=False, indent=2):
        let compact = r#"{"z": "a<b & 'c' 東京", "a": [1, 2.5, true, null], "e": {}}"#;
        let pretty = "{\n  \"z\": \"a<b & 'c' 東京\",\n  \"a\": [\n    1,\n    2.5,\n    true,\n    null\n  ],\n  \"e\": {}\n}";
        assert_eq!(out, format!("{compact}|{pretty}"));
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
