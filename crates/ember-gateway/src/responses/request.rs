//! A Responses API request as the chat completion body it means: the
//! stored conversation of `previous_response_id`, `instructions` as the
//! system message, `input` items as messages (`function_call` items as the
//! assistant's `tool_calls`, `function_call_output` items as tool
//! messages), flat function `tools`, `text.format` as `response_format`.
//! Fields are refused by name when unknown, and when known but not
//! something Ember does (built-in tools, `background`, ...).

use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::error::ApiError;
use crate::openai::KnownFields;
use crate::params::deserialize;
use crate::translate::text_of;

#[derive(Debug, Deserialize)]
pub struct ResponsesRequest {
    pub model: String,
    pub input: Option<Value>,
    pub instructions: Option<String>,
    pub tools: Option<Vec<Value>>,
    pub tool_choice: Option<Value>,
    pub parallel_tool_calls: Option<bool>,
    pub text: Option<TextConfig>,
    pub max_output_tokens: Option<i64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub metadata: Option<Map<String, Value>>,
    pub store: Option<bool>,
    pub stream: Option<bool>,
    pub previous_response_id: Option<String>,
    pub user: Option<String>,
    pub safety_identifier: Option<String>,
    /// A hint for OpenAI's cache routing; prefix reuse here is automatic.
    pub prompt_cache_key: Option<String>,
    pub truncation: Option<String>,
    pub include: Option<Vec<String>>,
    pub reasoning: Option<Value>,
    pub background: Option<bool>,
    pub top_logprobs: Option<i64>,
    pub max_tool_calls: Option<i64>,
    pub prompt: Option<Value>,
    pub conversation: Option<Value>,
}

/// Accepted beside the struct's fields: `stream_options` (OpenAI's
/// `include_obfuscation` padding, which a loopback or TLS client does not
/// need) and `service_tier` (there is one tier).
impl KnownFields for ResponsesRequest {
    const SAMPLING: bool = false;
    const FIELDS: &'static [&'static str] = &[
        "model", "input", "instructions", "tools", "tool_choice", "parallel_tool_calls", "text", "max_output_tokens",
        "temperature", "top_p", "metadata", "store", "stream", "previous_response_id", "user", "safety_identifier",
        "prompt_cache_key", "stream_options", "service_tier", "truncation", "include", "reasoning", "background",
        "top_logprobs", "max_tool_calls", "prompt", "conversation",
    ];
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextConfig {
    pub format: Option<Value>,
    /// GPT-5's answer length knob; only its default, `medium`, is honoured.
    pub verbosity: Option<String>,
}

/// Chat errors name the chat fields; these are their Responses names.
pub const RENAMES: &[(&str, &str)] = &[
    ("max_completion_tokens", "max_output_tokens"),
    ("response_format", "text.format"),
    ("messages", "input"),
];

/// Most `metadata` pairs, and the longest key and value (OpenAI's limits).
const METADATA_PAIRS: usize = 16;
const METADATA_KEY: usize = 64;
const METADATA_VALUE: usize = 512;

/// Parses and checks a Responses body.
pub fn parse(body: &Map<String, Value>) -> Result<ResponsesRequest, ApiError> {
    if let Some(field) = ResponsesRequest::unknown_field(body) {
        return Err(ApiError::invalid(field.clone(), format!("unknown field `{field}`")));
    }
    let req: ResponsesRequest = deserialize(body)?;
    let refuse = |field: &str, why: &str| Err(ApiError::unsupported(field, why));
    if req.background == Some(true) {
        return refuse("background", "responses run while the request is open; stream them instead");
    }
    if req.prompt.is_some() {
        return refuse("prompt", "stored prompt templates live on OpenAI's platform; send `input`");
    }
    if req.conversation.is_some() {
        return refuse("conversation", "there are no conversation objects; continue with `previous_response_id`");
    }
    if req.truncation.as_deref().is_some_and(|t| t != "disabled") {
        return refuse("truncation", "an input over the context window is an error (`disabled`)");
    }
    if let Some(reasoning) = &req.reasoning
        && !reasoning.is_null()
        && reasoning.as_object().is_none_or(|r| r.values().any(|v| !v.is_null()))
    {
        return refuse("reasoning", "the model has no reasoning-effort control");
    }
    if let Some(include) = req.include.as_ref().and_then(|list| list.first()) {
        return refuse("include", &format!("`{include}`: no extra output data is available"));
    }
    if req.top_logprobs.is_some_and(|k| k != 0) {
        return refuse("top_logprobs", "log probabilities are served by /v1/chat/completions");
    }
    if req.max_tool_calls.is_some() {
        return refuse("max_tool_calls", "only built-in tools are counted, and there are none");
    }
    if req.text.as_ref().and_then(|t| t.verbosity.as_deref()).is_some_and(|v| v != "medium") {
        return refuse("text.verbosity", "the model has no verbosity control");
    }
    if req.input.is_none() {
        return Err(ApiError::invalid("input", "`input` is required"));
    }
    if let Some(metadata) = &req.metadata {
        check_metadata(metadata)?;
    }
    Ok(req)
}

fn check_metadata(metadata: &Map<String, Value>) -> Result<(), ApiError> {
    if metadata.len() > METADATA_PAIRS {
        return Err(ApiError::invalid("metadata", format!("at most {METADATA_PAIRS} pairs")));
    }
    for (key, value) in metadata {
        let ok = key.chars().count() <= METADATA_KEY && value.as_str().is_some_and(|v| v.chars().count() <= METADATA_VALUE);
        if !ok {
            return Err(ApiError::invalid(
                format!("metadata.{key}"),
                format!("keys are at most {METADATA_KEY} characters and values strings of at most {METADATA_VALUE}"),
            ));
        }
    }
    Ok(())
}

/// The conversation `input` adds, as chat messages.
pub fn input_messages(input: &Value) -> Result<Vec<Value>, ApiError> {
    let items = match input {
        Value::String(text) => return Ok(vec![json!({"role": "user", "content": text})]),
        Value::Array(items) => items,
        _ => return Err(ApiError::invalid("input", "`input` must be a string or a list of items")),
    };
    let mut out: Vec<Value> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let at = |field: &str| format!("input[{i}]{field}");
        let kind = item.get("type").and_then(Value::as_str);
        let field = |name: &str| {
            item.get(name)
                .and_then(Value::as_str)
                .ok_or_else(|| ApiError::invalid(at(&format!(".{name}")), format!("a `{}` item needs `{name}` as a string", kind.unwrap_or("message"))))
        };
        match kind {
            None | Some("message") => {
                let role = field("role")?;
                if !["user", "system", "developer", "assistant"].contains(&role) {
                    return Err(ApiError::invalid(at(".role"), format!("unknown role `{role}`; expected user, system, developer or assistant")));
                }
                let content = item.get("content").unwrap_or(&Value::Null);
                let text = text_of(content, &["input_text", "output_text", "text"], &at(".content"))?;
                out.push(json!({"role": role, "content": text}));
            }
            Some("function_call") => {
                let call = json!({
                    "id": field("call_id")?,
                    "type": "function",
                    "function": {"name": field("name")?, "arguments": field("arguments")?},
                });
                // A turn's text and its calls are one assistant message.
                match out.last_mut() {
                    Some(last) if last["role"] == "assistant" => match last.get_mut("tool_calls").and_then(Value::as_array_mut) {
                        Some(calls) => calls.push(call),
                        None => last["tool_calls"] = json!([call]),
                    },
                    _ => out.push(json!({"role": "assistant", "content": "", "tool_calls": [call]})),
                }
            }
            Some("function_call_output") => {
                let output = item.get("output").unwrap_or(&Value::Null);
                let text = text_of(output, &["input_text", "output_text", "text"], &at(".output"))?;
                out.push(json!({"role": "tool", "tool_call_id": field("call_id")?, "content": text}));
            }
            // A reasoning model's summaries, replayed by clients: nothing to render.
            Some("reasoning") => {}
            Some(other) => {
                return Err(ApiError::unsupported(&at(".type"), &format!("`{other}` items are not supported; Ember takes messages and function calls")));
            }
        }
    }
    Ok(out)
}

/// The chat completion body: `history` (an earlier response's
/// conversation) and `input` after `instructions`.
pub fn chat_body(req: &ResponsesRequest, history: &[Value], input: &[Value]) -> Result<Map<String, Value>, ApiError> {
    let mut messages = Vec::with_capacity(history.len() + input.len() + 1);
    if let Some(instructions) = req.instructions.as_ref().filter(|i| !i.is_empty()) {
        messages.push(json!({"role": "system", "content": instructions}));
    }
    messages.extend(history.iter().cloned());
    messages.extend(input.iter().cloned());
    let mut body = Map::new();
    body.insert("model".into(), json!(req.model));
    body.insert("messages".into(), Value::Array(messages));
    // The Agents SDK sends `tools: []` for an agent without tools, which
    // OpenAI's Responses API takes and its chat API refuses.
    if let Some(tools) = req.tools.as_ref().filter(|t| !t.is_empty()) {
        body.insert("tools".into(), function_tools(tools)?);
    }
    if let Some(choice) = &req.tool_choice {
        body.insert("tool_choice".into(), tool_choice(choice)?);
    }
    if let Some(format) = req.text.as_ref().and_then(|t| t.format.as_ref()) {
        if let Some(format) = response_format(format)? {
            body.insert("response_format".into(), format);
        }
    }
    let optional = [
        ("parallel_tool_calls", req.parallel_tool_calls.map(|p| json!(p))),
        ("max_completion_tokens", req.max_output_tokens.map(|m| json!(m))),
        ("temperature", req.temperature.map(|t| json!(t))),
        ("top_p", req.top_p.map(|t| json!(t))),
        ("stream", req.stream.map(|s| json!(s))),
        ("user", req.safety_identifier.as_ref().or(req.user.as_ref()).map(|u| json!(u))),
    ];
    for (name, value) in optional {
        if let Some(value) = value {
            body.insert(name.into(), value);
        }
    }
    Ok(body)
}

/// Flat Responses function tools as chat's nested ones; built-in tools
/// (web search, file search, computer use, ...) are refused.
fn function_tools(tools: &[Value]) -> Result<Value, ApiError> {
    let mut out = Vec::with_capacity(tools.len());
    for (i, tool) in tools.iter().enumerate() {
        let kind = tool.get("type").and_then(Value::as_str).unwrap_or_default();
        if kind != "function" {
            return Err(ApiError::unsupported(&format!("tools[{i}].type"), &format!("`{kind}` is a built-in tool; Ember runs function tools only")));
        }
        // Every other key goes into the chat tool's function, whose checks
        // refuse the unknown ones by name.
        let function: Map<String, Value> = tool
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(key, value)| key.as_str() != "type" && !value.is_null())
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        out.push(json!({"type": "function", "function": function}));
    }
    Ok(Value::Array(out))
}

fn tool_choice(choice: &Value) -> Result<Value, ApiError> {
    match choice {
        Value::String(_) => Ok(choice.clone()),
        Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => {
            let name = o.get("name").ok_or_else(|| ApiError::invalid("tool_choice.name", "a function tool choice needs `name`"))?;
            Ok(json!({"type": "function", "function": {"name": name}}))
        }
        _ => Err(ApiError::unsupported("tool_choice", "only `auto`, `none`, `required` and a named function are supported")),
    }
}

/// `text.format` as chat's `response_format` (`None` for plain text).
fn response_format(format: &Value) -> Result<Option<Value>, ApiError> {
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(json!({"type": "json_object"}))),
        Some("json_schema") => {
            let mut schema = Map::new();
            for key in ["name", "description", "schema", "strict"] {
                if let Some(value) = format.get(key) {
                    schema.insert(key.into(), value.clone());
                }
            }
            Ok(Some(json!({"type": "json_schema", "json_schema": schema})))
        }
        _ => Err(ApiError::invalid("text.format.type", "expected `text`, `json_object` or `json_schema`")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: Value) -> Map<String, Value> {
        json.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn function_calls_and_their_outputs_become_tool_turns() {
        let input = json!([
            {"role": "user", "content": [{"type": "input_text", "text": "Weather in Paris?"}]},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking.", "annotations": []}]},
            {"type": "function_call", "call_id": "call_1", "name": "weather", "arguments": "{\"city\":\"Paris\"}"},
            {"type": "function_call", "call_id": "call_2", "name": "time", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "call_1", "output": "18 C"},
        ]);
        let messages = input_messages(&input).expect("translates");
        assert_eq!(messages.len(), 3);
        assert_eq!(messages[1]["content"], "Checking.");
        assert_eq!(messages[1]["tool_calls"][1]["id"], "call_2");
        assert_eq!(messages[2], json!({"role": "tool", "tool_call_id": "call_1", "content": "18 C"}));
    }

    #[test]
    fn instructions_history_tools_and_format_reach_the_chat_body() {
        let req = parse(&body(json!({
            "model": "m", "input": "again", "instructions": "Be brief.",
            "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}, "strict": null}],
            "tool_choice": {"type": "function", "name": "f"},
            "text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}, "strict": true}},
            "max_output_tokens": 9, "metadata": {"k": "v"}, "include": [], "reasoning": null, "store": true
        })))
        .expect("parses");
        let history = [json!({"role": "user", "content": "hi"}), json!({"role": "assistant", "content": "hello"})];
        let chat = chat_body(&req, &history, &input_messages(&json!("again")).expect("input")).expect("translates");
        assert_eq!(chat["messages"][0], json!({"role": "system", "content": "Be brief."}));
        assert_eq!(chat["messages"][2]["content"], "hello");
        assert_eq!(chat["messages"][3]["content"], "again");
        assert_eq!(chat["tools"][0], json!({"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}));
        assert_eq!(chat["tool_choice"]["function"]["name"], "f");
        assert_eq!(chat["response_format"]["json_schema"]["name"], "x");
        assert_eq!(chat["max_completion_tokens"], 9);
    }

    #[test]
    fn what_ember_does_not_do_is_refused_by_name() {
        let refused = |json: Value| {
            parse(&body(json))
                .and_then(|r| chat_body(&r, &[], &input_messages(r.input.as_ref().unwrap_or(&Value::Null))?))
                .err()
                .and_then(|e| e.param)
        };
        assert_eq!(refused(json!({"model": "m", "input": "x", "tools": [{"type": "web_search"}]})).as_deref(), Some("tools[0].type"));
        assert_eq!(refused(json!({"model": "m", "input": "x", "background": true})).as_deref(), Some("background"));
        assert_eq!(refused(json!({"model": "m", "input": "x", "bogus": 1})).as_deref(), Some("bogus"));
        assert_eq!(refused(json!({"model": "m", "input": [{"type": "input_image"}]})).as_deref(), Some("input[0].type"));
        let image = json!([{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]);
        assert_eq!(refused(json!({"model": "m", "input": image})).as_deref(), Some("input[0].content[0].type"));
        assert_eq!(refused(json!({"model": "m", "input": "x", "reasoning": "high"})).as_deref(), Some("reasoning"));
        assert_eq!(refused(json!({"model": "m"})).as_deref(), Some("input"));
    }
}
