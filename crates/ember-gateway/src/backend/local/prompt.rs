//! A chat request's prompt for the engine in this process: the messages
//! checked and put into Hugging Face's dict shape, rendered by the model's
//! own chat template (or Ember's hermes rendering of tools when the template
//! ignores them), `[IMPORTANT]` markers turned into global spans, tokenized.

use std::borrow::Cow;

use ember_engine::{ChatTemplate, EncodedPrompt, ModelInfo, RenderOptions};
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::openai::{ChatMessage, MessageContent};
use crate::backend::local::tools::{Tools, hermes_messages};

const ROLES: [&str; 5] = ["system", "developer", "user", "assistant", "tool"];

/// A conversation's prompt tokens through the model's own chat template,
/// with the global spans of its `[IMPORTANT]` markers when attention is
/// sparse (blocking: call it off the async workers). The rendered template
/// holds its special tokens already, so `add_special_tokens` is normally
/// false (`/tokenize` lets a client ask otherwise).
pub fn chat_prompt(
    model: &ModelInfo,
    messages: &[ChatMessage],
    max_messages: usize,
    tools: Option<&Tools>,
    add_generation_prompt: bool,
    add_special_tokens: bool,
) -> Result<EncodedPrompt, ApiError> {
    let (Some(_), Some(template)) = (&model.tokenizer, &model.chat_template) else {
        return Err(ApiError::bad_request("this model has no tokenizer or chat template"));
    };
    let mut messages = template_messages(messages, max_messages)?;
    for message in &mut messages {
        if let Some(Value::String(content)) = message.get_mut("content")
            && let Cow::Owned(marked) = model.mark_important(content)
        {
            *content = marked;
        }
    }
    let rendered = render_template_messages(template, &messages, tools, add_generation_prompt)?;
    Ok(model.encode_prompt(&rendered, add_special_tokens)?)
}

/// A conversation's prompt text through the model's own template. A
/// template that ignores `tools` gets Ember's hermes rendering of the tools
/// and the tool turns; one that reads them renders them itself.
pub fn render_chat(
    template: &ChatTemplate,
    messages: &[ChatMessage],
    max_messages: usize,
    tools: Option<&Tools>,
    add_generation_prompt: bool,
) -> Result<String, ApiError> {
    render_template_messages(template, &template_messages(messages, max_messages)?, tools, add_generation_prompt)
}

/// Checked messages (`template_messages`) through the template.
fn render_template_messages(
    template: &ChatTemplate,
    messages: &[Value],
    tools: Option<&Tools>,
    add_generation_prompt: bool,
) -> Result<String, ApiError> {
    let rendered = if template.reads_tools() {
        template.render(RenderOptions {
            messages,
            tools: tools.map(|t| t.definitions.as_slice()),
            add_generation_prompt,
        })?
    } else {
        template.render(RenderOptions {
            messages: &hermes_messages(messages, tools),
            tools: None::<&[Value]>,
            add_generation_prompt,
        })?
    };
    Ok(rendered)
}


/// The messages as the template sees them (Hugging Face's dict shape).
fn template_messages(messages: &[ChatMessage], limit: usize) -> Result<Vec<Value>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid("messages", "`messages` must not be empty"));
    }
    if messages.len() > limit {
        return Err(ApiError::invalid("messages", format!("at most {limit} messages per request")));
    }
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            if !ROLES.contains(&m.role.as_str()) {
                return Err(ApiError::invalid(
                    format!("messages[{i}].role"),
                    format!("unknown role `{}`; expected one of {}", m.role, ROLES.join(", ")),
                ));
            }
            if m.tool_calls.is_some() && m.role != "assistant" {
                return Err(ApiError::invalid(
                    format!("messages[{i}].tool_calls"),
                    "only assistant messages carry `tool_calls`",
                ));
            }
            if m.role == "tool" && m.tool_call_id.is_none() {
                return Err(ApiError::invalid(
                    format!("messages[{i}].tool_call_id"),
                    "a tool message needs `tool_call_id`",
                ));
            }
            let content = match &m.content {
                None => String::new(),
                Some(MessageContent::Text(t)) => t.clone(),
                Some(MessageContent::Parts(parts)) => {
                    let mut texts = Vec::new();
                    for (j, part) in parts.iter().enumerate() {
                        match (part.kind.as_str(), &part.text) {
                            ("text", Some(text)) => texts.push(text.as_str()),
                            ("text", None) => {
                                return Err(ApiError::invalid(format!("messages[{i}].content[{j}].text"), "a text part needs `text`"));
                            }
                            (other, _) => {
                                return Err(ApiError::unsupported(
                                    &format!("messages[{i}].content[{j}].type"),
                                    &format!("`{other}` parts are not supported; the model reads text"),
                                ));
                            }
                        }
                    }
                    texts.join("\n")
                }
            };
            let tool_calls = match &m.tool_calls {
                Some(calls) if !calls.is_null() => Some(template_tool_calls(i, calls)?),
                _ => None,
            };
            if m.content.is_none() && m.role != "assistant" {
                return Err(ApiError::invalid(format!("messages[{i}].content"), "`content` is required"));
            }
            // OpenAI's `developer` role is the system prompt of newer models.
            let role = if m.role == "developer" { "system" } else { m.role.as_str() };
            let mut message = json!({"role": role, "content": content});
            if let Some(name) = &m.name {
                message["name"] = json!(name);
            }
            if let Some(calls) = tool_calls {
                message["tool_calls"] = calls;
            }
            if let Some(id) = &m.tool_call_id {
                message["tool_call_id"] = json!(id);
            }
            if let Some(reasoning) = &m.reasoning_content {
                message["reasoning_content"] = json!(reasoning);
            }
            Ok(message)
        })
        .collect()
}

/// An assistant message's `tool_calls` as chat templates expect them:
/// `arguments` parsed into an object (Hugging Face's convention; Qwen3's
/// template writes it back as the same JSON text).
fn template_tool_calls(i: usize, calls: &Value) -> Result<Value, ApiError> {
    let list = calls
        .as_array()
        .ok_or_else(|| ApiError::invalid(format!("messages[{i}].tool_calls"), "`tool_calls` must be an array"))?;
    let mut out = Vec::with_capacity(list.len());
    for (j, call) in list.iter().enumerate() {
        let at = |path: &str| format!("messages[{i}].tool_calls[{j}]{path}");
        let function = call
            .get("function")
            .and_then(Value::as_object)
            .ok_or_else(|| ApiError::invalid(at(".function"), "a tool call needs a `function` object"))?;
        let name = function
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::invalid(at(".function.name"), "`name` must be a string"))?;
        let arguments = match function.get("arguments") {
            Some(Value::String(text)) => serde_json::from_str::<Value>(text)
                .ok()
                .filter(Value::is_object)
                .unwrap_or_else(|| Value::String(text.clone())),
            Some(object @ Value::Object(_)) => object.clone(),
            _ => return Err(ApiError::invalid(at(".function.arguments"), "`arguments` must be a JSON string")),
        };
        let mut entry = json!({"type": "function", "function": {"name": name, "arguments": arguments}});
        if let Some(id) = call.get("id").and_then(Value::as_str) {
            entry["id"] = json!(id);
        }
        out.push(entry);
    }
    Ok(Value::Array(out))
}

