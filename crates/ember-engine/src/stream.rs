//! What a caller reads a request through: its `GenerationStream` (async or
//! blocking), and a whole request collected into a `Completion`.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::mpsc::UnboundedReceiver;

use crate::output::{EngineEvent, OutputProcessor};
use crate::request::{FinishReason, GenerationEvent, Usage};
use crate::sampling::TokenLogprob;

/// The events of one request. Dropping it cancels the request: the engine
/// notices at its next step and frees the request's blocks. Text is decoded
/// and stop strings matched here, by whoever reads the stream.
pub struct GenerationStream {
    events: UnboundedReceiver<EngineEvent>,
    output: OutputProcessor,
    prompt_tokens: usize,
}

impl GenerationStream {
    pub(crate) fn new(events: UnboundedReceiver<EngineEvent>, output: OutputProcessor, prompt_tokens: usize) -> Self {
        Self {
            events,
            output,
            prompt_tokens,
        }
    }

    pub async fn next_event(&mut self) -> Option<GenerationEvent> {
        std::future::poll_fn(|cx| self.poll_event(cx)).await
    }

    /// For threads outside any async runtime (the CLI, benchmarks).
    pub fn blocking_next(&mut self) -> Option<GenerationEvent> {
        loop {
            if let Some(event) = self.output.pop() {
                return Some(event);
            }
            let event = self.events.blocking_recv()?;
            self.output.push(event);
        }
    }

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<GenerationEvent>> {
        loop {
            if let Some(event) = self.output.pop() {
                return Poll::Ready(Some(event));
            }
            match self.events.poll_recv(cx) {
                Poll::Ready(Some(event)) => self.output.push(event),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    pub fn prompt_tokens(&self) -> usize {
        self.prompt_tokens
    }

    /// Waits for the whole request (outside any async runtime).
    pub fn collect_blocking(mut self) -> Completion {
        let mut completion = Completion::default();
        while let Some(event) = self.blocking_next() {
            if completion.absorb(event) {
                break;
            }
        }
        completion
    }
}

impl futures_core::Stream for GenerationStream {
    type Item = GenerationEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.poll_event(cx)
    }
}

/// One choice, accumulated.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Choice {
    pub text: String,
    pub token_ids: Vec<u32>,
    pub logprobs: Vec<TokenLogprob>,
    pub finish_reason: Option<FinishReason>,
}

/// A whole request's result.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Completion {
    pub choices: Vec<Choice>,
    /// `None` if the engine stopped before the request was done.
    pub usage: Option<Usage>,
    /// An embedding request's vector.
    pub embedding: Option<Vec<f32>>,
}

impl Completion {
    /// Adds one event; true after the final `Done`.
    pub fn absorb(&mut self, event: GenerationEvent) -> bool {
        let choice = |choices: &mut Vec<Choice>, index: usize| -> usize {
            if choices.len() <= index {
                choices.resize_with(index + 1, Choice::default);
            }
            index
        };
        match event {
            GenerationEvent::Delta {
                index,
                text,
                token_ids,
                logprobs,
            } => {
                let i = choice(&mut self.choices, index);
                let c = &mut self.choices[i];
                c.text.push_str(&text);
                c.token_ids.extend(token_ids);
                c.logprobs.extend(logprobs);
                false
            }
            GenerationEvent::Finished { index, reason } => {
                let i = choice(&mut self.choices, index);
                self.choices[i].finish_reason = Some(reason);
                false
            }
            GenerationEvent::Embedding { vector, .. } => {
                self.embedding = Some(vector);
                false
            }
            GenerationEvent::Done { usage } => {
                self.usage = Some(usage);
                true
            }
        }
    }
}
