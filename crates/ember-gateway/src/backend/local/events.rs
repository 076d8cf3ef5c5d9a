//! The engine's streams as backend `Event`s: one request's prompts
//! (completions can send several) merged with unique choice indices and one
//! total usage, tool calls parsed out of the text as it streams, token ids
//! turned into the logprob entries OpenAI's API shows.

use std::sync::Arc;

use ember_engine::{FinishReason, GenerationEvent, GenerationStream, TextTokenizer, TokenLogprob};
use futures_util::stream::{self, StreamExt};

use crate::backend::{Event, EventStream, Usage};
use crate::error::ApiError;
use crate::openai::{TokenLogprobJson, TopLogprob};
use crate::backend::local::tool_parser::{ToolCallParser, ToolEvent};

/// How a request's output is reported.
pub struct Reporting {
    pub tokenizer: Option<Arc<TextTokenizer>>,
    /// Parse hermes tool calls out of the text (chat requests with tools).
    pub parse_calls: bool,
    pub logprobs: bool,
}

/// Merges a request's streams (choice indices shifted by `n` per prompt)
/// into backend events that end with the summed usage.
pub fn events(streams: Vec<GenerationStream>, n: usize, reporting: Reporting) -> EventStream {
    let total = streams.len();
    let tagged = streams.into_iter().enumerate().map(|(i, s)| s.map(move |e| (i * n, e)).boxed());
    struct State<S> {
        merged: S,
        done: usize,
        usage: Usage,
        parsers: Vec<ToolCallParser>,
        reporting: Reporting,
        finished: bool,
    }
    let state = State {
        merged: stream::select_all(tagged),
        done: 0,
        usage: Usage::default(),
        parsers: (0..total * n).map(|_| ToolCallParser::new()).collect(),
        reporting,
        finished: false,
    };
    let batches = stream::unfold(state, move |mut st| async move {
        if st.finished {
            return None;
        }
        let Some((offset, event)) = st.merged.next().await else {
            st.finished = true;
            return Some((vec![Event::Error(ApiError::internal("the engine stopped before the request was done"))], st));
        };
        let out = match event {
            GenerationEvent::Done { usage } => {
                st.usage.prompt_tokens += usage.prompt_tokens;
                st.usage.completion_tokens += usage.completion_tokens;
                st.usage.cached_tokens += usage.cached_tokens;
                st.done += 1;
                if st.done == total {
                    st.finished = true;
                    vec![Event::Usage(st.usage)]
                } else {
                    Vec::new()
                }
            }
            GenerationEvent::Delta {
                index, text, logprobs, ..
            } => {
                let index = index + offset;
                let logprobs = if st.reporting.logprobs {
                    entries(st.reporting.tokenizer.as_deref(), &logprobs)
                } else {
                    Vec::new()
                };
                let parser = st.parsers.get_mut(index).filter(|_| st.reporting.parse_calls);
                text_events(index, text, logprobs, parser)
            }
            GenerationEvent::Embedding { index, vector } => vec![Event::Embedding { index: index + offset, vector }],
            GenerationEvent::Finished {
                reason: FinishReason::Error(message),
                ..
            } => {
                st.finished = true;
                vec![Event::Error(ApiError::internal(message))]
            }
            GenerationEvent::Finished { index, reason } => {
                let index = index + offset;
                let mut out = Vec::new();
                let mut made_calls = false;
                if let Some(parser) = st.parsers.get_mut(index).filter(|_| st.reporting.parse_calls) {
                    out.extend(parser.finish().into_iter().map(|e| tool_event(index, e)));
                    made_calls = parser.has_calls();
                }
                // A choice that stopped on its own after making calls finished with them.
                let reason = match reason.as_str() {
                    "stop" if made_calls => "tool_calls",
                    other => other,
                };
                out.push(Event::Finish {
                    index,
                    reason: reason.to_owned(),
                });
                out
            }
        };
        Some((out, st))
    });
    Box::pin(batches.flat_map(stream::iter))
}

/// A delta's text as events: through the tool-call parser when calls are
/// parsed. Logprobs ride on the first event with text, or on an empty text
/// when the parser held all of it back.
fn text_events(index: usize, text: String, logprobs: Vec<TokenLogprobJson>, parser: Option<&mut ToolCallParser>) -> Vec<Event> {
    let mut out: Vec<Event> = match parser {
        Some(parser) => parser.push(&text).into_iter().map(|e| tool_event(index, e)).collect(),
        None if text.is_empty() => Vec::new(),
        None => vec![Event::Text {
            index,
            text,
            logprobs: Vec::new(),
        }],
    };
    if !logprobs.is_empty() {
        match out.iter_mut().find_map(|e| match e {
            Event::Text { logprobs, .. } => Some(logprobs),
            _ => None,
        }) {
            Some(slot) => *slot = logprobs,
            None => out.push(Event::Text {
                index,
                text: String::new(),
                logprobs,
            }),
        }
    }
    out
}

fn tool_event(index: usize, event: ToolEvent) -> Event {
    match event {
        ToolEvent::Content(text) => Event::Text {
            index,
            text,
            logprobs: Vec::new(),
        },
        ToolEvent::CallStart { index: call, id, name } => Event::ToolCallStart { index, call, id, name },
        ToolEvent::Arguments { index: call, fragment } => Event::ToolCallArguments { index, call, fragment },
    }
}

/// OpenAI's logprob entries: each token's text and bytes, and its
/// alternatives. Without a tokenizer a token shows as its id.
fn entries(tokenizer: Option<&TextTokenizer>, logprobs: &[TokenLogprob]) -> Vec<TokenLogprobJson> {
    let text = |id: u32| tokenizer.and_then(|t| t.decode(&[id]).ok()).unwrap_or_else(|| id.to_string());
    logprobs
        .iter()
        .map(|lp| {
            let token = text(lp.token);
            TokenLogprobJson {
                bytes: Some(token.as_bytes().to_vec()),
                token,
                logprob: lp.logprob,
                top_logprobs: lp
                    .top
                    .iter()
                    .map(|&(id, logprob)| {
                        let token = text(id);
                        TopLogprob {
                            bytes: Some(token.as_bytes().to_vec()),
                            token,
                            logprob,
                        }
                    })
                    .collect(),
            }
        })
        .collect()
}
