//! Engine streams as the HTTP layer consumes them: one request's prompts
//! (completions can send several) merged into one event stream with unique
//! choice indices and one total usage; collected for JSON responses, or
//! framed as server-sent events.

use std::pin::Pin;
use std::time::Duration;

use actix_web::web::Bytes;
use ember_engine::{Choice, Completion, FinishReason, GenerationEvent, GenerationStream, TokenLogprob, Usage};
use futures_util::stream::{self, Stream, StreamExt};
use tokio::time::Instant;

use crate::error::ApiError;

/// What the handlers format.
#[derive(Debug)]
pub enum Item {
    Event(GenerationEvent),
    /// Every prompt is done: the summed usage.
    Usage(Usage),
    /// The request ran past the server's timeout; its streams are dropped
    /// (cancelling them in the engine).
    TimedOut,
    /// The engine went away before every prompt was done.
    EngineGone,
}

pub type ItemStream = Pin<Box<dyn Stream<Item = Item> + Send>>;

/// Merges streams, shifting choice indices by `n` per prompt, and ends
/// with the summed usage, or `TimedOut` at `deadline`.
pub fn merge(streams: Vec<GenerationStream>, n: usize, timeout: Option<Duration>) -> ItemStream {
    let total = streams.len();
    let tagged = streams.into_iter().enumerate().map(|(i, s)| s.map(move |e| (i * n, e)).boxed());
    let merged = stream::select_all(tagged);
    let deadline = timeout.map(|t| Instant::now() + t);
    struct State<S> {
        merged: S,
        done: usize,
        usage: Usage,
        finished: bool,
    }
    let state = State {
        merged,
        done: 0,
        usage: Usage::default(),
        finished: false,
    };
    Box::pin(stream::unfold(state, move |mut st| async move {
        loop {
            if st.finished {
                return None;
            }
            let next = match deadline {
                Some(d) => match tokio::time::timeout_at(d, st.merged.next()).await {
                    Ok(next) => next,
                    Err(_) => {
                        st.finished = true;
                        return Some((Item::TimedOut, st));
                    }
                },
                None => st.merged.next().await,
            };
            let Some((offset, event)) = next else {
                st.finished = true;
                return Some((Item::EngineGone, st));
            };
            let event = match event {
                GenerationEvent::Done { usage } => {
                    st.usage.prompt_tokens += usage.prompt_tokens;
                    st.usage.completion_tokens += usage.completion_tokens;
                    st.usage.cached_tokens += usage.cached_tokens;
                    st.done += 1;
                    if st.done == total {
                        st.finished = true;
                        return Some((Item::Usage(st.usage), st));
                    }
                    continue;
                }
                GenerationEvent::Delta {
                    index,
                    text,
                    token_ids,
                    logprobs,
                } => GenerationEvent::Delta {
                    index: index + offset,
                    text,
                    token_ids,
                    logprobs,
                },
                GenerationEvent::Finished { index, reason } => GenerationEvent::Finished {
                    index: index + offset,
                    reason,
                },
            };
            return Some((Item::Event(event), st));
        }
    }))
}

/// Waits for everything: the choices in index order and the usage. A
/// choice that failed fails the response.
pub async fn collect(mut items: ItemStream) -> Result<(Vec<Choice>, Usage), ApiError> {
    let mut completion = Completion::default();
    while let Some(item) = items.next().await {
        match item {
            Item::Event(e) => {
                completion.absorb(e);
            }
            Item::Usage(usage) => {
                if let Some(FinishReason::Error(message)) = completion.choices.iter().find_map(|c| match &c.finish_reason {
                    Some(FinishReason::Error(m)) => Some(FinishReason::Error(m.clone())),
                    _ => None,
                }) {
                    return Err(ApiError::internal(message));
                }
                return Ok((completion.choices, usage));
            }
            Item::TimedOut => return Err(ApiError::timeout()),
            Item::EngineGone => break,
        }
    }
    Err(engine_gone())
}

fn engine_gone() -> ApiError {
    ApiError::internal("the engine stopped before the request was done")
}

/// What a route formats into an SSE event; `None` sends nothing.
pub enum Frame {
    Delta {
        index: usize,
        text: String,
        logprobs: Vec<TokenLogprob>,
    },
    Finish {
        index: usize,
        reason: &'static str,
    },
    Usage(Usage),
}

/// The SSE body of a request: the route formats deltas, finishes and the
/// usage; failures and the request timeout become OpenAI error events;
/// `data: [DONE]` ends it.
pub fn sse_body<I: IntoIterator<Item = serde_json::Value>>(
    items: ItemStream,
    mut format: impl FnMut(Frame) -> I + Send + 'static,
) -> impl Stream<Item = Result<Bytes, actix_web::Error>> + Send + 'static {
    items.flat_map(move |item| {
        let mut out = Vec::new();
        let mut frame = |f: Frame| out.extend(format(f).into_iter().map(|json| sse_event(&json)));
        match item {
            Item::Event(GenerationEvent::Delta {
                index, text, logprobs, ..
            }) => frame(Frame::Delta { index, text, logprobs }),
            Item::Event(GenerationEvent::Finished {
                reason: FinishReason::Error(message),
                ..
            }) => out.push(sse_event(&ApiError::internal(message).body())),
            Item::Event(GenerationEvent::Finished { index, reason }) => frame(Frame::Finish {
                index,
                reason: reason.as_str(),
            }),
            Item::Event(GenerationEvent::Done { .. }) => {}
            Item::Usage(usage) => {
                frame(Frame::Usage(usage));
                out.push(sse_done());
            }
            Item::TimedOut => {
                out.push(sse_event(&ApiError::timeout().body()));
                out.push(sse_done());
            }
            Item::EngineGone => {
                out.push(sse_event(&engine_gone().body()));
                out.push(sse_done());
            }
        }
        stream::iter(out.into_iter().map(Ok))
    })
}

/// The HTTP response that streams `body` as server-sent events.
pub fn sse_response(
    body: impl Stream<Item = Result<Bytes, actix_web::Error>> + 'static,
) -> actix_web::HttpResponse {
    actix_web::HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .streaming(body)
}

/// One server-sent event carrying `json`.
pub fn sse_event(json: &serde_json::Value) -> Bytes {
    Bytes::from(format!("data: {json}\n\n"))
}

fn sse_done() -> Bytes {
    Bytes::from_static(b"data: [DONE]\n\n")
}
