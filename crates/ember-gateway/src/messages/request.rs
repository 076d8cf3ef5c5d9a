//! An Anthropic Messages request as the chat completion body it means:
//! `system` becomes the system message, `tool_use` blocks the assistant's
//! `tool_calls`, `tool_result` blocks tool messages, `tools` with
//! `input_schema` function tools, `tool_choice` and `stop_sequences` their
//! chat spellings. Fields are refused by name when unknown, and when known
//! but not something a text model in front of a chat API can do.

use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::error::ApiError;
use crate::openai::KnownFields;
use crate::params::deserialize;
use crate::translate::text_of;

/// `POST /v1/messages`; `count_tokens` takes the same body, `max_tokens`
/// optional.
#[derive(Debug, Deserialize)]
pub struct MessagesRequest {
    pub model: String,
    pub max_tokens: Option<i64>,
    pub messages: Vec<InputMessage>,
    pub system: Option<Value>,
    pub tools: Option<Vec<Value>>,
    pub tool_choice: Option<ToolChoice>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub stop_sequences: Option<Vec<String>>,
    pub stream: Option<bool>,
    pub metadata: Option<Metadata>,
    pub thinking: Option<Value>,
    pub output_config: Option<OutputConfig>,
    pub container: Option<Value>,
    pub mcp_servers: Option<Value>,
    pub context_management: Option<Value>,
}

/// Accepted beside the struct's fields, because they ask nothing of the
/// answer: `cache_control` (prefix reuse here is automatic), `service_tier`
/// and `speed` (one tier, one speed), `inference_geo`, `diagnostics`,
/// `user_profile_id` and `workspace_id` (Anthropic's accounts).
impl KnownFields for MessagesRequest {
    const SAMPLING: bool = false;
    const FIELDS: &'static [&'static str] = &[
        "model", "max_tokens", "messages", "system", "tools", "tool_choice", "temperature", "top_p", "top_k",
        "stop_sequences", "stream", "metadata", "thinking", "output_config", "container", "mcp_servers",
        "context_management", "cache_control", "service_tier", "speed", "inference_geo", "diagnostics",
        "user_profile_id", "workspace_id",
    ];
}

/// `output_config`: a JSON schema the answer must follow, and an effort
/// level (accepted and ignored, as the model has no effort control, so a
/// client that sets it for Claude still works).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputConfig {
    pub format: Option<Value>,
    #[serde(rename = "effort")]
    pub _effort: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputMessage {
    pub role: String,
    pub content: Value,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolChoice {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: Option<String>,
    pub disable_parallel_tool_use: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    pub user_id: Option<String>,
}

/// Chat errors name the chat fields; these are their Messages names.
pub const RENAMES: &[(&str, &str)] = &[
    ("max_completion_tokens", "max_tokens"),
    ("stop", "stop_sequences"),
    ("user", "metadata.user_id"),
    ("response_format.json_schema.schema", "output_config.format.schema"),
    ("response_format", "output_config.format"),
];

/// Parses and checks a Messages body; `needs_max_tokens` is false for
/// `count_tokens`, which takes no output limit.
pub fn parse(body: &Map<String, Value>, needs_max_tokens: bool) -> Result<MessagesRequest, ApiError> {
    if let Some(field) = MessagesRequest::unknown_field(body) {
        return Err(ApiError::invalid(field.clone(), format!("unknown field `{field}`")));
    }
    let req: MessagesRequest = deserialize(body)?;
    if needs_max_tokens && req.max_tokens.is_none() {
        return Err(ApiError::invalid("max_tokens", "`max_tokens` is required"));
    }
    let refuse = |field: &str, why: &str| Err(ApiError::unsupported(field, why));
    if let Some(thinking) = &req.thinking
        && thinking.get("type").and_then(Value::as_str) != Some("disabled")
    {
        return refuse("thinking", "extended thinking is not available; send `{\"type\": \"disabled\"}` or leave it out");
    }
    if req.container.is_some() {
        return refuse("container", "no code-execution containers");
    }
    if req.mcp_servers.as_ref().is_some_and(|v| !v.is_null()) {
        return refuse("mcp_servers", "Ember does not connect to MCP servers; give the tools as `tools`");
    }
    if req.context_management.is_some() {
        return refuse("context_management", "context editing is not implemented");
    }
    Ok(req)
}

/// The chat completion body of `req`.
pub fn chat_body(req: &MessagesRequest) -> Result<Map<String, Value>, ApiError> {
    let mut messages = Vec::new();
    if let Some(system) = &req.system {
        let text = text_of(system, &["text"], "system")?;
        if !text.is_empty() {
            messages.push(json!({"role": "system", "content": text}));
        }
    }
    if req.messages.is_empty() {
        return Err(ApiError::invalid("messages", "`messages` must not be empty"));
    }
    for (i, message) in req.messages.iter().enumerate() {
        match message.role.as_str() {
            "user" => user_turn(i, &message.content, &mut messages)?,
            "assistant" => messages.push(assistant_turn(i, &message.content)?),
            other => {
                return Err(ApiError::invalid(
                    format!("messages[{i}].role"),
                    format!("unknown role `{other}`; expected `user` or `assistant` (the system prompt goes in `system`)"),
                ));
            }
        }
    }
    let mut body = Map::new();
    body.insert("model".into(), json!(req.model));
    body.insert("messages".into(), Value::Array(messages));
    if let Some(max_tokens) = req.max_tokens {
        body.insert("max_completion_tokens".into(), json!(max_tokens));
    }
    // Anthropic takes `tools: []` as no tools; the chat API refuses it.
    if let Some(tools) = req.tools.as_ref().filter(|t| !t.is_empty()) {
        body.insert("tools".into(), function_tools(tools)?);
    }
    if let Some(format) = req.output_config.as_ref().and_then(|c| c.format.as_ref()).filter(|f| !f.is_null()) {
        if format.get("type").and_then(Value::as_str) != Some("json_schema") {
            return Err(ApiError::invalid("output_config.format.type", "expected `json_schema`"));
        }
        let schema = format.get("schema").ok_or_else(|| ApiError::invalid("output_config.format.schema", "a format needs `schema`"))?;
        let format = json!({"type": "json_schema", "json_schema": {"name": "output", "schema": schema, "strict": true}});
        body.insert("response_format".into(), format);
    }
    if let Some(choice) = &req.tool_choice {
        let (tool_choice, parallel) = tool_choice(choice)?;
        body.insert("tool_choice".into(), tool_choice);
        if let Some(parallel) = parallel {
            body.insert("parallel_tool_calls".into(), json!(parallel));
        }
    }
    let optional = [
        ("temperature", req.temperature.map(|t| json!(t))),
        ("top_p", req.top_p.map(|t| json!(t))),
        ("top_k", req.top_k.map(|k| json!(k))),
        ("stop", req.stop_sequences.as_ref().map(|s| json!(s))),
        ("stream", req.stream.map(|s| json!(s))),
        ("user", req.metadata.as_ref().and_then(|m| m.user_id.as_ref()).map(|u| json!(u))),
    ];
    for (name, value) in optional {
        if let Some(value) = value {
            body.insert(name.into(), value);
        }
    }
    Ok(body)
}

/// A user turn: its `tool_result` blocks become tool messages, its text a
/// user message, in the order they come.
fn user_turn(i: usize, content: &Value, out: &mut Vec<Value>) -> Result<(), ApiError> {
    let Value::Array(blocks) = content else {
        out.push(json!({"role": "user", "content": text_of(content, &["text"], &format!("messages[{i}].content"))?}));
        return Ok(());
    };
    let mut text = String::new();
    for (j, block) in blocks.iter().enumerate() {
        let at = format!("messages[{i}].content[{j}]");
        match block_type(block, &at)? {
            "text" => text.push_str(&text_of(&Value::Array(vec![block.clone()]), &["text"], &at)?),
            "tool_result" => {
                if !text.is_empty() {
                    out.push(json!({"role": "user", "content": std::mem::take(&mut text)}));
                }
                let id = block
                    .get("tool_use_id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| ApiError::invalid(format!("{at}.tool_use_id"), "a `tool_result` needs `tool_use_id`"))?;
                let mut result = text_of(block.get("content").unwrap_or(&Value::Null), &["text"], &format!("{at}.content"))?;
                if block.get("is_error").and_then(Value::as_bool) == Some(true) {
                    result = format!("Error: {result}");
                }
                out.push(json!({"role": "tool", "tool_call_id": id, "content": result}));
            }
            other => return Err(unsupported_block(&at, other)),
        }
    }
    if !text.is_empty() {
        out.push(json!({"role": "user", "content": text}));
    }
    Ok(())
}

/// An assistant turn: text and `tool_use` blocks as one assistant message;
/// earlier thinking blocks are left out (there is nothing to render them as).
fn assistant_turn(i: usize, content: &Value) -> Result<Value, ApiError> {
    let Value::Array(blocks) = content else {
        return Ok(json!({"role": "assistant", "content": text_of(content, &["text"], &format!("messages[{i}].content"))?}));
    };
    let mut text = String::new();
    let mut calls = Vec::new();
    for (j, block) in blocks.iter().enumerate() {
        let at = format!("messages[{i}].content[{j}]");
        match block_type(block, &at)? {
            "text" => text.push_str(&text_of(&Value::Array(vec![block.clone()]), &["text"], &at)?),
            "tool_use" => {
                let field = |name: &str| block.get(name).ok_or_else(|| ApiError::invalid(format!("{at}.{name}"), format!("a `tool_use` block needs `{name}`")));
                let input = field("input")?;
                calls.push(json!({
                    "id": field("id")?,
                    "type": "function",
                    "function": {"name": field("name")?, "arguments": input.to_string()},
                }));
            }
            "thinking" | "redacted_thinking" => {}
            other => return Err(unsupported_block(&at, other)),
        }
    }
    let mut message = json!({"role": "assistant", "content": text});
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    Ok(message)
}

fn block_type<'a>(block: &'a Value, at: &str) -> Result<&'a str, ApiError> {
    block
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::invalid(format!("{at}.type"), "a content block needs a `type`"))
}

fn unsupported_block(at: &str, kind: &str) -> ApiError {
    ApiError::unsupported(&format!("{at}.type"), &format!("`{kind}` blocks are not supported; the model reads text and tool results"))
}

/// Anthropic's tools as chat function tools. Server tools (web search,
/// code execution, ...) have a `type` other than `custom` and are refused.
fn function_tools(tools: &[Value]) -> Result<Value, ApiError> {
    let mut out = Vec::with_capacity(tools.len());
    for (i, tool) in tools.iter().enumerate() {
        let at = |field: &str| format!("tools[{i}].{field}");
        if let Some(kind) = tool.get("type").and_then(Value::as_str)
            && kind != "custom"
        {
            return Err(ApiError::unsupported(&at("type"), &format!("`{kind}` is one of Anthropic's server tools; Ember runs none")));
        }
        let name = tool.get("name").and_then(Value::as_str).ok_or_else(|| ApiError::invalid(at("name"), "a tool needs a `name`"))?;
        let schema = tool.get("input_schema").ok_or_else(|| ApiError::invalid(at("input_schema"), "a tool needs an `input_schema`"))?;
        let mut function = json!({"name": name, "parameters": schema});
        if let Some(description) = tool.get("description") {
            function["description"] = description.clone();
        }
        out.push(json!({"type": "function", "function": function}));
    }
    Ok(Value::Array(out))
}

/// `tool_choice` and `parallel_tool_calls` of Anthropic's `tool_choice`.
fn tool_choice(choice: &ToolChoice) -> Result<(Value, Option<bool>), ApiError> {
    let value = match (choice.kind.as_str(), &choice.name) {
        ("auto", _) => json!("auto"),
        ("any", _) => json!("required"),
        ("none", _) => json!("none"),
        ("tool", Some(name)) => json!({"type": "function", "function": {"name": name}}),
        ("tool", None) => return Err(ApiError::invalid("tool_choice.name", "`tool_choice` of type `tool` needs `name`")),
        (other, _) => {
            return Err(ApiError::invalid(
                "tool_choice.type",
                format!("unknown tool choice `{other}`; expected auto, any, tool or none"),
            ));
        }
    };
    Ok((value, choice.disable_parallel_tool_use.map(|d| !d)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: Value) -> Map<String, Value> {
        json.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn a_tool_round_trip_becomes_chat_messages() {
        let req = parse(
            &body(json!({
                "model": "m", "max_tokens": 64,
                "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
                "messages": [
                    {"role": "user", "content": "Weather in Paris?"},
                    {"role": "assistant", "content": [
                        {"type": "text", "text": "Checking."},
                        {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}}
                    ]},
                    {"role": "user", "content": [
                        {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "18 C"}]},
                        {"type": "text", "text": "Thanks"}
                    ]}
                ],
                "tools": [{"name": "weather", "description": "d", "input_schema": {"type": "object"}}],
                "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
                "stop_sequences": ["END"], "top_k": 5, "metadata": {"user_id": "u1"}
            })),
            true,
        )
        .expect("parses");
        let chat = chat_body(&req).expect("translates");
        assert_eq!(chat["messages"][0], json!({"role": "system", "content": "Be brief."}));
        assert_eq!(chat["messages"][2]["tool_calls"][0]["function"]["arguments"], r#"{"city":"Paris"}"#);
        assert_eq!(chat["messages"][3], json!({"role": "tool", "tool_call_id": "toolu_1", "content": "18 C"}));
        assert_eq!(chat["messages"][4], json!({"role": "user", "content": "Thanks"}));
        assert_eq!(chat["tools"][0]["function"]["parameters"], json!({"type": "object"}));
        assert_eq!(chat["tool_choice"], "required");
        assert_eq!(chat["parallel_tool_calls"], false);
        assert_eq!(chat["stop"], json!(["END"]));
        assert_eq!(chat["max_completion_tokens"], 64);
        assert_eq!(chat["user"], "u1");
    }

    #[test]
    fn what_cannot_be_served_is_refused_by_name() {
        let refused = |json: Value| parse(&body(json), true).and_then(|r| chat_body(&r)).err().and_then(|e| e.param);
        let user = json!([{"role": "user", "content": "hi"}]);
        assert_eq!(refused(json!({"model": "m", "messages": user})).as_deref(), Some("max_tokens"));
        assert_eq!(refused(json!({"model": "m", "max_tokens": 1, "messages": user, "bogus": 1})).as_deref(), Some("bogus"));
        assert_eq!(
            refused(json!({"model": "m", "max_tokens": 1, "messages": user, "thinking": {"type": "enabled", "budget_tokens": 1024}})).as_deref(),
            Some("thinking")
        );
        let image = json!([{"role": "user", "content": [{"type": "image", "source": {}}]}]);
        assert_eq!(refused(json!({"model": "m", "max_tokens": 1, "messages": image})).as_deref(), Some("messages[0].content[0].type"));
        let search = json!([{"type": "web_search_20250305", "name": "web_search"}]);
        assert_eq!(refused(json!({"model": "m", "max_tokens": 1, "messages": user, "tools": search})).as_deref(), Some("tools[0].type"));
        let system = json!([{"role": "system", "content": "x"}]);
        assert_eq!(refused(json!({"model": "m", "max_tokens": 1, "messages": system})).as_deref(), Some("messages[0].role"));
    }
}
