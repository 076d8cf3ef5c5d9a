//! The one translation layer under the Responses and Messages APIs: each
//! turns its request into the JSON body of a chat completion, which is
//! parsed and checked exactly as `/v1/chat/completions` parses it, so a
//! local model and an upstream that only speaks chat completions answer it
//! alike; the backend's events are shaped back by each API's handler.

use serde_json::{Map, Value};

use crate::backend::{BackendRequest, Endpoint};
use crate::error::ApiError;
use crate::openai::{ChatCompletionRequest, SamplingFields};
use crate::params::parse_map;

/// A chat completion body as the typed request every backend takes.
pub fn chat_request(body: Map<String, Value>, renames: &[(&str, &str)]) -> Result<BackendRequest, ApiError> {
    let (chat, sampling, body) = parse_chat(body, renames)?;
    Ok(BackendRequest {
        endpoint: Endpoint::Chat(Box::new(chat)),
        sampling,
        body,
    })
}

/// A chat completion body parsed as `/v1/chat/completions` parses it.
pub fn parse_chat(
    body: Map<String, Value>,
    renames: &[(&str, &str)],
) -> Result<(ChatCompletionRequest, SamplingFields, Map<String, Value>), ApiError> {
    parse_map(body).map_err(|e| renamed(e, renames))
}

/// An error about a chat field, naming the field the client sent instead
/// (`renames` pairs a chat field's name with its name in the client's API;
/// a path under it keeps its tail: `response_format.json_schema` ->
/// `text.format.json_schema`).
pub fn renamed(mut error: ApiError, renames: &[(&str, &str)]) -> ApiError {
    if let Some(param) = &error.param {
        for (chat, theirs) in renames {
            if let Some(rest) = param.strip_prefix(chat)
                && (rest.is_empty() || rest.starts_with(['.', '[']))
            {
                let renamed = format!("{theirs}{rest}");
                error.message = error.message.replace(&format!("`{param}`"), &format!("`{renamed}`"));
                error.message = error.message.replace(&format!("`{chat}`"), &format!("`{theirs}`"));
                error.param = Some(renamed);
                break;
            }
        }
    }
    error
}

/// A tool call's `arguments` text as the JSON object Anthropic's
/// `tool_use.input` holds; arguments cut off by the token limit (or not an
/// object) give an empty object.
pub fn arguments_object(arguments: &str) -> Value {
    match serde_json::from_str::<Value>(arguments) {
        Ok(Value::Object(map)) => Value::Object(map),
        _ => Value::Object(Map::new()),
    }
}

/// The text of a content field that is a string or a list of text parts
/// (`{"type": <text_kind>, "text": ...}`), `field` naming it in errors.
pub fn text_of(content: &Value, text_kinds: &[&str], field: &str) -> Result<String, ApiError> {
    match content {
        Value::String(text) => Ok(text.clone()),
        Value::Array(parts) => {
            let mut text = String::new();
            for (i, part) in parts.iter().enumerate() {
                let kind = part.get("type").and_then(Value::as_str).unwrap_or_default();
                match part.get("text").and_then(Value::as_str) {
                    Some(t) if text_kinds.contains(&kind) => text.push_str(t),
                    None if text_kinds.contains(&kind) => {
                        return Err(ApiError::invalid(format!("{field}[{i}].text"), "a text part needs `text` as a string"));
                    }
                    _ => {
                        return Err(ApiError::unsupported(
                            &format!("{field}[{i}].type"),
                            &format!("`{kind}` parts are not supported; the model reads text"),
                        ));
                    }
                }
            }
            Ok(text)
        }
        Value::Null => Ok(String::new()),
        _ => Err(ApiError::invalid(field, "must be a string or a list of text parts")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_field_the_client_sent() {
        let renames = [("max_completion_tokens", "max_output_tokens"), ("response_format", "text.format")];
        let e = renamed(ApiError::invalid("max_completion_tokens", "`max_completion_tokens` must be at least 1"), &renames);
        assert_eq!(e.param.as_deref(), Some("max_output_tokens"));
        assert_eq!(e.message, "`max_output_tokens` must be at least 1");
        let e = renamed(ApiError::invalid("response_format.json_schema", "bad"), &renames);
        assert_eq!(e.param.as_deref(), Some("text.format.json_schema"));
        let e = renamed(ApiError::invalid("response_formats", "x"), &renames);
        assert_eq!(e.param.as_deref(), Some("response_formats"));
    }

    #[test]
    fn cut_off_arguments_become_an_empty_object() {
        assert_eq!(arguments_object(r#"{"city": "Paris"}"#)["city"], "Paris");
        assert_eq!(arguments_object(r#"{"city": "Par"#), Value::Object(Map::new()));
    }
}
