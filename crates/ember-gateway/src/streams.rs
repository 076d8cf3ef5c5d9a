//! Backend events as the handlers answer with them: collected into whole
//! choices for a JSON response, or framed as server-sent events ending in
//! `data: [DONE]`, with a failure as an OpenAI error event.

use actix_web::web::Bytes;
use futures_util::stream::{self, Stream, StreamExt};

use crate::backend::{Event, EventStream, Usage};
use crate::error::ApiError;
use crate::openai::TokenLogprobJson;

/// A tool call as it ended up.
#[derive(Debug, Clone, Default)]
pub struct CollectedCall {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

/// One choice, whole.
#[derive(Debug, Clone, Default)]
pub struct CollectedChoice {
    pub text: String,
    pub calls: Vec<CollectedCall>,
    pub logprobs: Vec<TokenLogprobJson>,
    pub finish_reason: Option<String>,
}

/// Waits for everything: the choices in index order and the usage.
pub async fn collect(mut events: EventStream) -> Result<(Vec<CollectedChoice>, Usage), ApiError> {
    let mut choices: Vec<CollectedChoice> = Vec::new();
    let mut usage = Usage::default();
    fn at(choices: &mut Vec<CollectedChoice>, index: usize) -> &mut CollectedChoice {
        if choices.len() <= index {
            choices.resize_with(index + 1, CollectedChoice::default);
        }
        &mut choices[index]
    }
    while let Some(event) = events.next().await {
        match event {
            Event::Text { index, text, logprobs } => {
                let choice = at(&mut choices, index);
                choice.text.push_str(&text);
                choice.logprobs.extend(logprobs);
            }
            Event::ToolCallStart { index, call, id, name } => {
                let calls = &mut at(&mut choices, index).calls;
                if calls.len() <= call {
                    calls.resize_with(call + 1, CollectedCall::default);
                }
                calls[call].id = id;
                calls[call].name = name;
            }
            Event::ToolCallArguments { index, call, fragment } => {
                let calls = &mut at(&mut choices, index).calls;
                if calls.len() <= call {
                    calls.resize_with(call + 1, CollectedCall::default);
                }
                calls[call].arguments.push_str(&fragment);
            }
            Event::Finish { index, reason } => at(&mut choices, index).finish_reason = Some(reason),
            Event::Usage(u) => usage = u,
            Event::Error(e) => return Err(e),
        }
    }
    Ok((choices, usage))
}

/// The SSE body of a request: `format` turns events other than errors
/// into chunks; an error becomes an OpenAI error event and ends the
/// stream; `data: [DONE]` closes it.
pub fn sse_body<I: IntoIterator<Item = serde_json::Value>>(
    events: EventStream,
    mut format: impl FnMut(Event) -> I + Send + 'static,
) -> impl Stream<Item = Result<Bytes, actix_web::Error>> + Send + 'static {
    // Nothing follows an error, whatever the backend sends after it.
    let body = events
        .scan(false, |failed, event| {
            let next = (!*failed).then(|| {
                *failed = matches!(event, Event::Error(_));
                event
            });
            std::future::ready(next)
        })
        .flat_map(move |event| {
            let out: Vec<Bytes> = match event {
                Event::Error(e) => vec![sse_event(&e.body())],
                other => format(other).into_iter().map(|json| sse_event(&json)).collect(),
            };
            stream::iter(out)
        });
    body.chain(stream::once(async { sse_done() })).map(Ok)
}

/// The HTTP response that streams `body` as server-sent events.
pub fn sse_response(body: impl Stream<Item = Result<Bytes, actix_web::Error>> + 'static) -> actix_web::HttpResponse {
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
