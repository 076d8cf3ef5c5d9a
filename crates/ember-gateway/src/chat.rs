//! `POST /v1/chat/completions`: messages through the model's own chat
//! template, then the engine; one JSON response or a stream of
//! `chat.completion.chunk` events.

use std::borrow::Cow;

use actix_web::{HttpResponse, web};
use ember_engine::{
    ChatTemplate, EncodedPrompt, EngineHandle, FinishReason, Grammar, LogitsProcessorFactory, ModelInfo, RenderOptions, TextTokenizer,
    TokenLogprob,
};
use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::openai::{ChatCompletionRequest, ChatLogprobs, ChatMessage, MessageContent, TokenLogprobJson, TopLogprob};
use crate::params::{LengthFields, generation_request, off_workers, parse_body, reject_present, streaming, submit};
use crate::response_format::content_schema;
use crate::state::{AppState, fingerprint, random_id, unix_time};
use crate::streams::{Frame, collect, merge, sse_body, sse_event, sse_response};
use crate::tool_parser::{ToolCallParser, ToolEvent, parse_all};
use crate::tools::{Tags, Tools, hermes_messages};

const ROLES: [&str; 5] = ["system", "developer", "user", "assistant", "tool"];

pub async fn chat_completions(state: web::Data<AppState>, body: web::Json<Value>) -> Result<HttpResponse, ApiError> {
    let (req, sampling): (ChatCompletionRequest, _) = parse_body(body)?;
    let engine = state.engine()?.clone();
    state.check_model(&req.model)?;
    reject_present(&[
        ("functions", req.functions.is_some(), "deprecated by OpenAI; use `tools`"),
        ("function_call", req.function_call.is_some(), "deprecated by OpenAI; use `tool_choice`"),
        ("logit_bias", req.logit_bias.is_some(), "logit biases are not implemented"),
        ("audio", req.audio.is_some(), "the model is text-only"),
        ("modalities", req.modalities.is_some(), "the model is text-only"),
        ("prediction", req.prediction.is_some(), "predicted outputs are not implemented"),
        ("reasoning_effort", req.reasoning_effort.is_some(), "the model has no reasoning-effort control"),
        ("web_search_options", req.web_search_options.is_some(), "no web search"),
        ("service_tier", req.service_tier.is_some(), "there is one tier"),
        ("store", req.store.as_ref().is_some_and(|v| v != &Value::Bool(false)), "completions are not stored"),
        ("metadata", req.metadata.is_some(), "completions are not stored"),
    ])?;
    let (stream, include_usage) = streaming(&sampling)?;
    let tools = Tools::from_request(req.tools.as_ref(), req.tool_choice.as_ref(), req.parallel_tool_calls.as_ref())?;
    let schema = content_schema(req.response_format.as_ref())?;

    let model = engine.model();
    let Some(tokenizer) = model.tokenizer.clone().filter(|_| model.chat_template.is_some()) else {
        return Err(ApiError::bad_request(
            "this model has no tokenizer or chat template; use /v1/completions with token ids",
        ));
    };
    let prompt = {
        let (engine, messages, tools, limit) = (engine.clone(), req.messages, tools.clone(), state.limits.max_messages);
        off_workers(move || chat_prompt(engine.model(), &messages, limit, tools.as_ref(), true, false)).await?
    };
    let grammar = match (&tools, &schema) {
        (Some(tools), schema) => Some(tools.grammar(&Tags::for_tokenizer(&tokenizer), schema.as_ref())?),
        (None, Some(schema)) => Some(Grammar::JsonSchema(schema.clone())),
        (None, None) => None,
    };
    let constraint = match grammar {
        Some(grammar) => Some(compile(&engine, grammar, tools.clone(), schema.is_some()).await?),
        None => None,
    };

    let max_tokens = match (req.max_completion_tokens, req.max_tokens) {
        (Some(m), _) => Some(("max_completion_tokens", m)),
        (None, Some(m)) => Some(("max_tokens", m)),
        (None, None) => None,
    };
    let logprobs = req.logprobs.unwrap_or(false);
    let request = generation_request(
        prompt,
        &sampling,
        &model.generation_defaults,
        max_tokens,
        logprobs,
        req.top_logprobs.map(|k| ("top_logprobs", k)),
        model.chat_stop_ids(),
    )?;
    let request = ember_engine::GenerationRequest {
        logits_processor: constraint,
        ..request
    };
    let fields = LengthFields {
        prompt: "messages",
        max_tokens: max_tokens.map_or("max_tokens", |(name, _)| name),
    };
    let n = request.n;
    let events = submit(&engine, request, fields).await?;
    let items = merge(vec![events], n, state.limits.request_timeout);
    let head = Head {
        id: random_id("chatcmpl"),
        created: unix_time(),
        model: state.model_name.clone(),
    };
    let parse_calls = tools.is_some();
    if stream {
        let body = chat_sse(items, head, n, include_usage, logprobs, parse_calls, tokenizer);
        return Ok(sse_response(body));
    }
    let (choices, usage) = collect(items).await?;
    let choices: Vec<Value> = choices
        .iter()
        .enumerate()
        .map(|(index, choice)| {
            let reason = choice.finish_reason.as_ref().map(FinishReason::as_str);
            let (message, reason) = if parse_calls {
                let (content, calls) = parse_all(&choice.text);
                let mut message = json!({"role": "assistant", "content": content});
                if !calls.is_empty() {
                    let calls: Vec<Value> = calls
                        .iter()
                        .map(|c| json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}))
                        .collect();
                    message["tool_calls"] = json!(calls);
                }
                (message, finish_with_calls(reason, !calls.is_empty()))
            } else {
                (json!({"role": "assistant", "content": choice.text}), reason)
            };
            json!({
                "index": index,
                "message": message,
                "logprobs": logprobs.then(|| chat_logprobs(&tokenizer, &choice.logprobs)),
                "finish_reason": reason,
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({
        "id": head.id,
        "object": "chat.completion",
        "created": head.created,
        "model": head.model,
        "system_fingerprint": fingerprint(),
        "choices": choices,
        "usage": crate::openai::Usage::from(usage),
    })))
}

/// A conversation's prompt tokens through the model's own chat template,
/// with the global spans of its `[IMPORTANT]` markers when attention is
/// sparse (blocking: call it off the async workers). The rendered template
/// holds its special tokens already, so `add_special_tokens` is normally
/// false (`/tokenize` lets a client ask otherwise).
pub(crate) fn chat_prompt(
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
pub(crate) fn render_chat(
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

/// Compiles the answer's grammar off the async workers (the first use also
/// builds the model's token trie). A grammar llguidance refuses is a 400
/// naming the schema at fault.
async fn compile(
    engine: &EngineHandle,
    grammar: Grammar,
    tools: Option<Tools>,
    has_schema: bool,
) -> Result<std::sync::Arc<dyn LogitsProcessorFactory>, ApiError> {
    let engine = engine.clone();
    web::block(move || {
        let compiler = engine.model().grammar_compiler()?;
        match compiler.compile(&grammar) {
            Ok(compiled) => Ok(compiled.into_factory()),
            Err(e) => Err(grammar_error(&compiler, tools.as_ref(), has_schema, e)),
        }
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?
}

/// Which part of the request a grammar error is about: a tool's
/// `parameters`, else the `response_format` schema; with neither at fault,
/// Ember's own tool grammar failed.
fn grammar_error(
    compiler: &ember_engine::GrammarCompiler,
    tools: Option<&Tools>,
    has_schema: bool,
    error: ember_engine::EngineError,
) -> ApiError {
    for (i, function) in tools.iter().flat_map(|t| t.functions.iter().enumerate()) {
        if let Err(e) = compiler.compile(&Tools::function_grammar(function)) {
            return ApiError::invalid(format!("tools[{i}].function.parameters"), e.to_string());
        }
    }
    if has_schema {
        ApiError::invalid("response_format.json_schema.schema", error.to_string())
    } else {
        ApiError::internal(error.to_string())
    }
}

/// `tool_calls` when a choice that stopped on its own made calls.
fn finish_with_calls(reason: Option<&'static str>, made_calls: bool) -> Option<&'static str> {
    match reason {
        Some("stop") if made_calls => Some("tool_calls"),
        other => other,
    }
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

struct Head {
    id: String,
    created: u64,
    model: String,
}

/// OpenAI's logprobs: the token's text and bytes, and its alternatives.
fn chat_logprobs(tokenizer: &TextTokenizer, logprobs: &[TokenLogprob]) -> ChatLogprobs {
    let text = |id: u32| tokenizer.decode(&[id]).unwrap_or_default();
    ChatLogprobs {
        content: logprobs
            .iter()
            .map(|lp| {
                let token = text(lp.token);
                TokenLogprobJson {
                    bytes: token.as_bytes().to_vec(),
                    token,
                    logprob: lp.logprob,
                    top_logprobs: lp
                        .top
                        .iter()
                        .map(|&(id, logprob)| {
                            let token = text(id);
                            TopLogprob {
                                bytes: token.as_bytes().to_vec(),
                                token,
                                logprob,
                            }
                        })
                        .collect(),
                }
            })
            .collect(),
    }
}

/// `chat.completion.chunk` events: each choice's role first, then content
/// deltas (or, with tools, content and tool-call deltas), a finish chunk per
/// choice, the usage chunk if asked, `[DONE]`.
fn chat_sse(
    items: crate::streams::ItemStream,
    head: Head,
    n: usize,
    include_usage: bool,
    logprobs: bool,
    parse_calls: bool,
    tokenizer: std::sync::Arc<TextTokenizer>,
) -> impl futures_util::Stream<Item = Result<web::Bytes, actix_web::Error>> {
    let chunk = move |choices: Value, usage: Option<Value>| {
        let mut body = json!({
            "id": head.id,
            "object": "chat.completion.chunk",
            "created": head.created,
            "model": head.model,
            "system_fingerprint": fingerprint(),
            "choices": choices,
        });
        if include_usage {
            body["usage"] = usage.unwrap_or(Value::Null);
        }
        body
    };
    let choice = |index: usize, delta: Value, lp: Option<ChatLogprobs>, reason: Option<&str>| {
        json!([{"index": index, "delta": delta, "logprobs": lp, "finish_reason": reason}])
    };
    let roles: Vec<Value> = (0..n)
        .map(|index| chunk(choice(index, json!({"role": "assistant", "content": ""}), None, None), None))
        .collect();
    let mut parsers: Vec<ToolCallParser> = (0..n).map(|_| ToolCallParser::new()).collect();
    let rest = sse_body(items, move |frame| {
        let mut out = Vec::new();
        match frame {
            Frame::Delta { index, text, logprobs: lps } => {
                let mut lp = (logprobs && !lps.is_empty()).then(|| chat_logprobs(&tokenizer, &lps));
                let deltas = match parsers.get_mut(index).filter(|_| parse_calls) {
                    Some(parser) => parser.push(&text).into_iter().map(tool_delta).collect(),
                    None if text.is_empty() => Vec::new(),
                    None => vec![json!({"content": text})],
                };
                for delta in deltas {
                    out.push(chunk(choice(index, delta, lp.take(), None), None));
                }
                // Logprobs of tokens whose text is held back still go out.
                if let Some(lp) = lp {
                    out.push(chunk(choice(index, json!({"content": ""}), Some(lp), None), None));
                }
            }
            Frame::Finish { index, reason } => {
                let mut made_calls = false;
                if let Some(parser) = parsers.get_mut(index).filter(|_| parse_calls) {
                    for event in parser.finish() {
                        out.push(chunk(choice(index, tool_delta(event), None, None), None));
                    }
                    made_calls = parser.has_calls();
                }
                let reason = finish_with_calls(Some(reason), made_calls);
                out.push(chunk(choice(index, json!({}), None, reason), None));
            }
            Frame::Usage(usage) if include_usage => {
                out.push(chunk(json!([]), Some(json!(crate::openai::Usage::from(usage)))));
            }
            Frame::Usage(_) => {}
        }
        out
    });
    futures_util::stream::iter(roles.into_iter().map(|r| Ok(sse_event(&r)))).chain(rest)
}

/// One parser event as a chunk's `delta`.
fn tool_delta(event: ToolEvent) -> Value {
    match event {
        ToolEvent::Content(text) => json!({"content": text}),
        ToolEvent::CallStart { index, id, name } => json!({"tool_calls": [{
            "index": index, "id": id, "type": "function", "function": {"name": name, "arguments": ""}
        }]}),
        ToolEvent::Arguments { index, fragment } => json!({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]}),
    }
}
