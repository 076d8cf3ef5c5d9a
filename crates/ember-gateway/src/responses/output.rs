//! A backend's events as a Responses API answer: the `response` object
//! with `message` and `function_call` output items, or its event stream
//! (`response.created`, `response.in_progress`, per item
//! `response.output_item.added` ... `response.output_item.done`, then
//! `response.completed` or `response.incomplete`), each event numbered.
//! A finished response is stored when the request asked for it.

use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::store::{ResponseStore, Stored};
use crate::backend::{Event, Usage};
use crate::error::ApiError;
use crate::streams::{CollectedChoice, EventShaper};

/// What a response carries besides its output: the request's echoed
/// fields, the conversation so far, and where to store it.
pub struct Draft {
    pub id: String,
    pub created_at: u64,
    /// `model`, `instructions`, `tools`, ... as the response object echoes them.
    pub echo: Map<String, Value>,
    /// Chat messages before this response's answer, without instructions.
    pub conversation: Vec<Value>,
    /// Set when the response is to be stored.
    pub store: Option<Arc<ResponseStore>>,
}

impl Draft {
    /// The response object in `status`.
    fn response(&self, status: &str, output: Vec<Value>, usage: Option<&Usage>, incomplete: Option<&str>, error: Option<Value>) -> Value {
        let mut response = json!({
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "error": error,
            "incomplete_details": incomplete.map(|reason| json!({"reason": reason})),
            "output": output,
            "usage": usage.map(usage_json),
        });
        for (key, value) in &self.echo {
            response[key] = value.clone();
        }
        response
    }

    /// The finished response, stored if asked.
    pub fn finish(&self, items: Vec<Value>, finish_reason: Option<&str>, usage: &Usage) -> Value {
        let cut = finish_reason == Some("length");
        let status = if cut { "incomplete" } else { "completed" };
        let answer = assistant_message(&items);
        let response = self.response(status, items, Some(usage), cut.then_some("max_output_tokens"), None);
        if let Some(store) = &self.store {
            let mut conversation = self.conversation.clone();
            conversation.push(answer);
            store.insert(self.id.clone(), Stored { response: response.clone(), conversation });
        }
        response
    }
}

fn usage_json(usage: &Usage) -> Value {
    json!({
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_tokens},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    })
}

/// `msg_...`, `fc_...`: ids of output items.
fn item_id(prefix: &str) -> String {
    format!("{prefix}_{:032x}", rand::random::<u128>())
}

fn message_item(id: &str, text: &str, status: &str) -> Value {
    let content = if status == "in_progress" { json!([]) } else { json!([text_part(text)]) };
    json!({"type": "message", "id": id, "status": status, "role": "assistant", "content": content})
}

fn text_part(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
}

fn call_item(id: &str, call_id: &str, name: &str, arguments: &str, status: &str) -> Value {
    json!({"type": "function_call", "id": id, "call_id": call_id, "name": name, "arguments": arguments, "status": status})
}

/// A whole choice's output items: its text, then its function calls.
pub fn items(choice: &CollectedChoice) -> Vec<Value> {
    let mut items = Vec::new();
    if !choice.text.is_empty() || choice.calls.is_empty() {
        items.push(message_item(&item_id("msg"), &choice.text, "completed"));
    }
    for call in &choice.calls {
        items.push(call_item(&item_id("fc"), &call.id, &call.name, &call.arguments, "completed"));
    }
    items
}

/// Output items as the chat message the next turn's prompt replays.
fn assistant_message(items: &[Value]) -> Value {
    let mut text = String::new();
    let mut calls = Vec::new();
    for item in items {
        match item["type"].as_str() {
            Some("message") => {
                for part in item["content"].as_array().into_iter().flatten() {
                    text.push_str(part["text"].as_str().unwrap_or_default());
                }
            }
            Some("function_call") => calls.push(json!({
                "id": item["call_id"], "type": "function",
                "function": {"name": item["name"], "arguments": item["arguments"]},
            })),
            _ => {}
        }
    }
    let mut message = json!({"role": "assistant", "content": text});
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    message
}

/// The output item a stream has open.
enum Open {
    Message { id: String, text: String },
    Call { id: String, call_id: String, name: String, arguments: String },
}

type Frames = Vec<(&'static str, Value)>;

/// Adds `kind` and the next sequence number to `data`, and queues it.
fn emit(sequence: &mut u64, out: &mut Frames, kind: &'static str, mut data: Value) {
    data["type"] = json!(kind);
    data["sequence_number"] = json!(*sequence);
    *sequence += 1;
    out.push((kind, data));
}

/// The state of a streamed response.
pub struct ResponseStream {
    draft: Draft,
    sequence: u64,
    done: Vec<Value>,
    open: Option<Open>,
    finish: Option<String>,
    usage: Usage,
}

impl ResponseStream {
    pub fn new(draft: Draft) -> Self {
        Self {
            draft,
            sequence: 0,
            done: Vec::new(),
            open: None,
            finish: None,
            usage: Usage::default(),
        }
    }

    fn emit(&mut self, out: &mut Frames, kind: &'static str, data: Value) {
        emit(&mut self.sequence, out, kind, data);
    }

    /// Closes the open item with its `.done` events.
    fn close(&mut self, out: &mut Frames) {
        let output_index = self.done.len();
        let item = match self.open.take() {
            None => return,
            Some(Open::Message { id, text }) => {
                let at = json!({"item_id": id, "output_index": output_index, "content_index": 0});
                let mut done = at.clone();
                done["text"] = json!(text);
                done["logprobs"] = json!([]);
                self.emit(out, "response.output_text.done", done);
                let mut part = at;
                part["part"] = text_part(&text);
                self.emit(out, "response.content_part.done", part);
                message_item(&id, &text, "completed")
            }
            Some(Open::Call { id, call_id, name, arguments }) => {
                let done = json!({"item_id": id, "output_index": output_index, "arguments": arguments, "name": name});
                self.emit(out, "response.function_call_arguments.done", done);
                call_item(&id, &call_id, &name, &arguments, "completed")
            }
        };
        self.emit(out, "response.output_item.done", json!({"output_index": output_index, "item": item}));
        self.done.push(item);
    }
}

impl EventShaper for ResponseStream {
    fn start(&mut self) -> Frames {
        let mut out = Vec::new();
        let response = self.draft.response("in_progress", Vec::new(), None, None, None);
        self.emit(&mut out, "response.created", json!({"response": response}));
        self.emit(&mut out, "response.in_progress", json!({"response": response}));
        out
    }

    fn event(&mut self, event: Event) -> Frames {
        let mut out = Vec::new();
        let output_index = self.done.len();
        match event {
            // A response has one choice; a backend sends only index 0.
            Event::Text { text, .. } if !text.is_empty() => {
                if !matches!(self.open, Some(Open::Message { .. })) {
                    self.close(&mut out);
                    let id = item_id("msg");
                    let output_index = self.done.len();
                    self.emit(&mut out, "response.output_item.added", json!({"output_index": output_index, "item": message_item(&id, "", "in_progress")}));
                    let part = json!({"item_id": id, "output_index": output_index, "content_index": 0, "part": text_part("")});
                    self.emit(&mut out, "response.content_part.added", part);
                    self.open = Some(Open::Message { id, text: String::new() });
                }
                let output_index = self.done.len();
                if let Some(Open::Message { id, text: all }) = &mut self.open {
                    all.push_str(&text);
                    let delta = json!({"item_id": id, "output_index": output_index, "content_index": 0, "delta": text, "logprobs": []});
                    emit(&mut self.sequence, &mut out, "response.output_text.delta", delta);
                }
            }
            Event::ToolCallStart { id: call_id, name, .. } => {
                self.close(&mut out);
                let id = item_id("fc");
                let item = call_item(&id, &call_id, &name, "", "in_progress");
                self.emit(&mut out, "response.output_item.added", json!({"output_index": self.done.len(), "item": item}));
                self.open = Some(Open::Call { id, call_id, name, arguments: String::new() });
            }
            Event::ToolCallArguments { fragment, .. } => {
                if let Some(Open::Call { id, arguments, .. }) = &mut self.open {
                    arguments.push_str(&fragment);
                    let delta = json!({"item_id": id, "output_index": output_index, "delta": fragment});
                    emit(&mut self.sequence, &mut out, "response.function_call_arguments.delta", delta);
                }
            }
            Event::Finish { reason, .. } => self.finish = Some(reason),
            Event::Usage(usage) => self.usage = usage,
            Event::Text { .. } | Event::Error(_) | Event::Embedding { .. } => {}
        }
        out
    }

    fn end(&mut self) -> Frames {
        let mut out = Vec::new();
        self.close(&mut out);
        if self.done.is_empty() {
            // An empty answer is still a message, as in the whole response.
            let id = item_id("msg");
            self.done.push(message_item(&id, "", "completed"));
        }
        let response = self.draft.finish(std::mem::take(&mut self.done), self.finish.as_deref(), &self.usage);
        let kind = if response["status"] == "incomplete" { "response.incomplete" } else { "response.completed" };
        self.emit(&mut out, kind, json!({"response": response}));
        out
    }

    fn failed(&mut self, error: ApiError) -> Frames {
        let mut out = Vec::new();
        let body = error.body()["error"].clone();
        self.emit(&mut out, "error", json!({"code": body["code"], "message": body["message"], "param": body["param"]}));
        let failure = json!({"code": error.code.unwrap_or("server_error"), "message": error.message});
        let done = std::mem::take(&mut self.done);
        let response = self.draft.response("failed", done, None, None, Some(failure));
        self.emit(&mut out, "response.failed", json!({"response": response}));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draft(store: Option<Arc<ResponseStore>>) -> Draft {
        Draft {
            id: "resp_1".into(),
            created_at: 0,
            echo: json!({"model": "m"}).as_object().cloned().unwrap_or_default(),
            conversation: vec![json!({"role": "user", "content": "hi"})],
            store,
        }
    }

    #[test]
    fn a_stream_numbers_its_events_and_stores_the_finished_response() {
        let store = Arc::new(ResponseStore::new(4, std::time::Duration::from_secs(60)));
        let mut s = ResponseStream::new(draft(Some(store.clone())));
        let mut frames = s.start();
        let events = [
            Event::Text { index: 0, text: "Checking".into(), logprobs: Vec::new() },
            Event::Text { index: 0, text: ".".into(), logprobs: Vec::new() },
            Event::ToolCallStart { index: 0, call: 0, id: "call_1".into(), name: "weather".into() },
            Event::ToolCallArguments { index: 0, call: 0, fragment: "{}".into() },
            Event::Finish { index: 0, reason: "tool_calls".into() },
            Event::Usage(Usage { prompt_tokens: 5, completion_tokens: 3, cached_tokens: 0 }),
        ];
        for event in events {
            frames.extend(s.event(event));
        }
        frames.extend(s.end());
        let names: Vec<&str> = frames.iter().map(|(name, _)| *name).collect();
        assert_eq!(
            names,
            [
                "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
                "response.output_text.delta", "response.output_text.delta", "response.output_text.done",
                "response.content_part.done", "response.output_item.done", "response.output_item.added",
                "response.function_call_arguments.delta", "response.function_call_arguments.done",
                "response.output_item.done", "response.completed"
            ]
        );
        for (i, (_, data)) in frames.iter().enumerate() {
            assert_eq!(data["sequence_number"], i);
        }
        assert_eq!(frames[9].1["output_index"], 1);
        let completed = &frames[13].1["response"];
        assert_eq!(completed["output"][0]["content"][0]["text"], "Checking.");
        assert_eq!(completed["output"][1]["call_id"], "call_1");
        assert_eq!(completed["usage"]["total_tokens"], 8);
        let stored = store.get("resp_1").map(|s| s.conversation).unwrap_or_default();
        assert_eq!(stored[1]["tool_calls"][0]["function"]["name"], "weather");
        assert_eq!(stored[1]["content"], "Checking.");
    }

    #[test]
    fn a_length_cut_is_incomplete_with_its_reason() {
        let choice = CollectedChoice { text: "abc".into(), finish_reason: Some("length".into()), ..Default::default() };
        let response = draft(None).finish(items(&choice), choice.finish_reason.as_deref(), &Usage::default());
        assert_eq!(response["status"], "incomplete");
        assert_eq!(response["incomplete_details"]["reason"], "max_output_tokens");
    }
}
