//! Upstream answers and errors read into events.

use serde_json::json;

use super::answers::{chunk_events, response_events, upstream_error};
use crate::backend::{Event, Usage};

#[test]
fn chat_chunks_become_events() {
    let chunk = json!({"choices": [{"index": 1, "delta": {"content": "Hi", "tool_calls": [
        {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\""}}
    ]}, "finish_reason": null}], "usage": null});
    assert_eq!(
        chunk_events(&chunk, true),
        vec![
            Event::Text { index: 1, text: "Hi".into(), logprobs: Vec::new() },
            Event::ToolCallStart { index: 1, call: 0, id: "call_1".into(), name: "f".into() },
            Event::ToolCallArguments { index: 1, call: 0, fragment: "{\"a\"".into() },
        ]
    );
    let last = json!({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7,
        "prompt_tokens_details": {"cached_tokens": 3}}});
    assert_eq!(
        chunk_events(&last, true),
        vec![Event::Usage(Usage { prompt_tokens: 5, completion_tokens: 2, cached_tokens: 3 })]
    );
}

#[test]
fn legacy_logprobs_are_read() {
    let answer = json!({"choices": [{"index": 0, "text": "ab", "finish_reason": "length",
        "logprobs": {"tokens": ["a", "b"], "token_logprobs": [-0.5, -1.0], "top_logprobs": [{"a": -0.5}, {"b": -1.0, "c": -2.0}],
        "text_offset": [0, 1]}}]});
    let events = response_events(&answer, false);
    let Some(Event::Text { logprobs, .. }) = events.first() else {
        panic!("{events:?}");
    };
    assert_eq!(logprobs.len(), 2);
    assert_eq!(logprobs[1].top_logprobs.len(), 2);
    assert_eq!(events.last(), Some(&Event::Finish { index: 0, reason: "length".into() }));
}

#[test]
fn error_shapes_keep_their_status_and_message() {
    let openai = upstream_error("u", 400, br#"{"error": {"message": "too long", "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}}"#);
    assert_eq!((openai.status.as_u16(), openai.message.as_str(), openai.param.as_deref()), (400, "too long", Some("messages")));
    assert_eq!(openai.code, Some("context_length_exceeded"));
    let tgi = upstream_error("u", 422, br#"{"error": "Input validation error", "error_type": "validation"}"#);
    assert_eq!((tgi.status.as_u16(), tgi.message.as_str()), (422, "Input validation error"));
    let key = upstream_error("u", 401, br#"{"detail": "bad key"}"#);
    assert_eq!(key.status.as_u16(), 502);
    assert!(key.message.contains("upstream `u`") && key.message.contains("bad key"), "{}", key.message);
    let text = upstream_error("u", 503, b"busy");
    assert!(text.message.contains("busy"), "{}", text.message);
}
