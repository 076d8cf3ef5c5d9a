//! A backend's events as Anthropic's answer: one `message` with `text` and
//! `tool_use` blocks, or the stream `message_start`, `content_block_start`
//! / `_delta` / `_stop` per block, `message_delta` with the stop reason and
//! usage, `message_stop`.

use serde_json::{Value, json};

use super::error::anthropic_error_body;
use crate::backend::{Event, Usage};
use crate::error::ApiError;
use crate::streams::{CollectedChoice, EventShaper};
use crate::translate::arguments_object;

/// Anthropic's stop reason for a chat finish reason.
fn stop_reason(finish: Option<&str>) -> &'static str {
    match finish {
        Some("length") => "max_tokens",
        Some("tool_calls") => "tool_use",
        _ => "end_turn",
    }
}

/// Anthropic counts cached prompt tokens apart from `input_tokens`.
fn usage_json(usage: &Usage) -> Value {
    json!({
        "input_tokens": usage.prompt_tokens.saturating_sub(usage.cached_tokens),
        "output_tokens": usage.completion_tokens,
        "cache_read_input_tokens": usage.cached_tokens,
        "cache_creation_input_tokens": 0,
    })
}

/// The whole `message` object.
pub fn message(id: &str, model: &str, choice: CollectedChoice, usage: &Usage) -> Value {
    let mut content = Vec::new();
    if !choice.text.is_empty() {
        content.push(json!({"type": "text", "text": choice.text}));
    }
    for call in &choice.calls {
        content.push(json!({"type": "tool_use", "id": call.id, "name": call.name, "input": arguments_object(&call.arguments)}));
    }
    json!({
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(choice.finish_reason.as_deref()),
        "stop_sequence": null,
        "usage": usage_json(usage),
    })
}

/// The block now open in a stream.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Block {
    Text,
    ToolUse,
}

/// The state of a streamed message.
pub struct MessageStream {
    id: String,
    model: String,
    /// The open block and its index.
    open: Option<(Block, usize)>,
    next_index: usize,
    finish: Option<String>,
    usage: Usage,
}

type Frames = Vec<(&'static str, Value)>;

impl MessageStream {
    pub fn new(id: String, model: String) -> Self {
        Self {
            id,
            model,
            open: None,
            next_index: 0,
            finish: None,
            usage: Usage::default(),
        }
    }

    /// Closes the open block, if any.
    fn close(&mut self, out: &mut Frames) {
        if let Some((_, index)) = self.open.take() {
            out.push(("content_block_stop", json!({"type": "content_block_stop", "index": index})));
        }
    }

    /// Opens a block of `kind` unless one is open already; its index.
    fn open(&mut self, kind: Block, start: Value, out: &mut Frames) -> usize {
        if let Some((open, index)) = self.open
            && open == kind
            && kind == Block::Text
        {
            return index;
        }
        self.close(out);
        let index = self.next_index;
        self.next_index += 1;
        self.open = Some((kind, index));
        out.push(("content_block_start", json!({"type": "content_block_start", "index": index, "content_block": start})));
        index
    }
}

impl EventShaper for MessageStream {
    fn start(&mut self) -> Frames {
        let message = json!({
            "id": self.id, "type": "message", "role": "assistant", "model": self.model, "content": [],
            "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        });
        vec![("message_start", json!({"type": "message_start", "message": message}))]
    }

    fn event(&mut self, event: Event) -> Frames {
        let mut out = Vec::new();
        match event {
            // Anthropic messages have one choice; a backend sends only index 0.
            Event::Text { text, .. } if !text.is_empty() => {
                let index = self.open(Block::Text, json!({"type": "text", "text": ""}), &mut out);
                let delta = json!({"type": "text_delta", "text": text});
                out.push(("content_block_delta", json!({"type": "content_block_delta", "index": index, "delta": delta})));
            }
            Event::ToolCallStart { id, name, .. } => {
                let start = json!({"type": "tool_use", "id": id, "name": name, "input": {}});
                self.close(&mut out);
                self.open(Block::ToolUse, start, &mut out);
            }
            Event::ToolCallArguments { fragment, .. } => {
                if let Some((Block::ToolUse, index)) = self.open {
                    let delta = json!({"type": "input_json_delta", "partial_json": fragment});
                    out.push(("content_block_delta", json!({"type": "content_block_delta", "index": index, "delta": delta})));
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
        let delta = json!({"stop_reason": stop_reason(self.finish.as_deref()), "stop_sequence": null});
        out.push(("message_delta", json!({"type": "message_delta", "delta": delta, "usage": usage_json(&self.usage)})));
        out.push(("message_stop", json!({"type": "message_stop"})));
        out
    }

    fn failed(&mut self, error: ApiError) -> Frames {
        vec![("error", anthropic_error_body(&error))]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_streamed_tool_call_is_a_tool_use_block_after_the_text() {
        let mut s = MessageStream::new("msg_1".into(), "m".into());
        let mut frames = s.start();
        let events = [
            Event::Text { index: 0, text: "Let me check.".into(), logprobs: Vec::new() },
            Event::ToolCallStart { index: 0, call: 0, id: "call_1".into(), name: "weather".into() },
            Event::ToolCallArguments { index: 0, call: 0, fragment: "{\"city\":".into() },
            Event::ToolCallArguments { index: 0, call: 0, fragment: "\"Paris\"}".into() },
            Event::Finish { index: 0, reason: "tool_calls".into() },
            Event::Usage(Usage { prompt_tokens: 10, completion_tokens: 7, cached_tokens: 4 }),
        ];
        for event in events {
            frames.extend(s.event(event));
        }
        frames.extend(s.end());
        let names: Vec<&str> = frames.iter().map(|(name, _)| *name).collect();
        assert_eq!(
            names,
            [
                "message_start", "content_block_start", "content_block_delta", "content_block_stop", "content_block_start",
                "content_block_delta", "content_block_delta", "content_block_stop", "message_delta", "message_stop"
            ]
        );
        assert_eq!(frames[4].1["index"], 1);
        assert_eq!(frames[4].1["content_block"]["type"], "tool_use");
        assert_eq!(frames[6].1["delta"]["partial_json"], "\"Paris\"}");
        assert_eq!(frames[8].1["delta"]["stop_reason"], "tool_use");
        assert_eq!(frames[8].1["usage"]["input_tokens"], 6);
        assert_eq!(frames[8].1["usage"]["cache_read_input_tokens"], 4);
    }
}
