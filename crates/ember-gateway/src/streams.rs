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
    /// An embedding request's vector.
    pub embedding: Vec<f32>,
}

/// Waits for everything: the choices in index order and the usage.
pub async fn collect(mut events: EventStream) -> Result<(Vec<CollectedChoice>, Usage), ApiError> {
    let mut choices: Vec<CollectedChoice> = Vec::new();
    let mut usage = Usage::default();
    while let Some(event) = events.next().await {
        match event {
            Event::Text { index, text, logprobs } => {
                let choice = slot(&mut choices, index)?;
                choice.text.push_str(&text);
                choice.logprobs.extend(logprobs);
            }
            Event::ToolCallStart { index, call, id, name } => {
                let call = slot(&mut slot(&mut choices, index)?.calls, call)?;
                call.id = id;
                call.name = name;
            }
            Event::ToolCallArguments { index, call, fragment } => {
                slot(&mut slot(&mut choices, index)?.calls, call)?.arguments.push_str(&fragment);
            }
            Event::Finish { index, reason } => slot(&mut choices, index)?.finish_reason = Some(reason),
            Event::Embedding { index, vector } => slot(&mut choices, index)?.embedding = vector,
            Event::Usage(u) => usage = u,
            Event::Error(e) => return Err(e),
        }
    }
    Ok((choices, usage))
}

/// Most choices (64 prompts x `n` of 128) or tool calls one answer holds.
const MAX_INDEX: usize = 64 * 128;

/// The entry at `index`, made when new. An index past any real answer's
/// (an upstream can send any number) is an error, not an allocation.
fn slot<T: Default>(list: &mut Vec<T>, index: usize) -> Result<&mut T, ApiError> {
    if index >= MAX_INDEX {
        return Err(ApiError {
            status: actix_web::http::StatusCode::BAD_GATEWAY,
            ..ApiError::internal(format!("the backend answered with index {index}, past any request's {MAX_INDEX}"))
        });
    }
    if list.len() <= index {
        list.resize_with(index + 1, T::default);
    }
    Ok(&mut list[index])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_web::test]
    async fn an_index_past_any_request_is_an_error_not_an_allocation() {
        let text = |index| Event::Text {
            index,
            text: "x".into(),
            logprobs: Vec::new(),
        };
        let events: EventStream = Box::pin(stream::iter(vec![text(1), text(usize::MAX / 2)]));
        let error = collect(events).await.err();
        assert_eq!(error.map(|e| e.status.as_u16()), Some(502));
        let events: EventStream = Box::pin(stream::iter(vec![text(1), Event::Usage(Usage::default())]));
        let (choices, _) = collect(events).await.unwrap_or_default();
        assert_eq!(choices.len(), 2);
        assert_eq!(choices[1].text, "x");
    }
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

/// Turns a backend's events into another API's named server-sent events
/// (the Responses API's and Anthropic's streams, which carry state from
/// event to event and end without `[DONE]`).
pub trait EventShaper: Send + 'static {
    /// The events sent at once, before the backend's first.
    fn start(&mut self) -> Vec<(&'static str, serde_json::Value)>;
    /// The events one backend event becomes.
    fn event(&mut self, event: Event) -> Vec<(&'static str, serde_json::Value)>;
    /// The events that close the stream: after the backend's last event,
    /// or after `failed`'s.
    fn end(&mut self) -> Vec<(&'static str, serde_json::Value)>;
    /// The events a failure becomes; `end` is not called after it.
    fn failed(&mut self, error: ApiError) -> Vec<(&'static str, serde_json::Value)>;
}

/// The SSE body of `events` shaped by `shaper`, each frame as
/// `event: NAME` and `data: JSON`.
pub fn named_sse_body(
    events: EventStream,
    mut shaper: impl EventShaper,
) -> impl Stream<Item = Result<Bytes, actix_web::Error>> + Send + 'static {
    let frames = |list: Vec<(&'static str, serde_json::Value)>| {
        list.into_iter().map(|(name, json)| Bytes::from(format!("event: {name}\ndata: {json}\n\n"))).collect::<Vec<_>>()
    };
    let first = frames(shaper.start());
    // `None` once the stream has ended (a failure, or the last event).
    let state = Some((events, shaper));
    let rest = stream::unfold(state, move |state| async move {
        let (mut events, mut shaper) = state?;
        match events.next().await {
            Some(Event::Error(e)) => Some((frames(shaper.failed(e)), None)),
            Some(event) => Some((frames(shaper.event(event)), Some((events, shaper)))),
            None => Some((frames(shaper.end()), None)),
        }
    });
    stream::iter(first).chain(rest.flat_map(stream::iter)).map(Ok)
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
