//! Output processing on the consumer's side of a request's stream, off the
//! engine thread: the engine sends sampled token ids, and the stream turns
//! them into text (incremental detokenization) and matches stop strings, as
//! vLLM v1's output processor does in the API server process. A stop string
//! found here is signalled back, and the engine drops the choice at its next
//! step; any token it sampled meanwhile is discarded and not counted.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::request::{FinishReason, GenerationEvent, Usage};
use crate::sampling::TokenLogprob;
use crate::scheduler::StopSignals;
use crate::stop::{StopCheck, StopMatcher};
use crate::tokenizer::{IncrementalDecoder, TextTokenizer};

/// What the engine thread sends a request's stream.
#[derive(Debug)]
pub(crate) enum EngineEvent {
    Token {
        index: usize,
        token: u32,
        logprob: Option<TokenLogprob>,
        /// An end-of-sequence or stop id: it ends the choice and adds no text.
        stop_id: bool,
    },
    Finished {
        index: usize,
        reason: FinishReason,
    },
    Embedding {
        index: usize,
        vector: Vec<f32>,
    },
    Done {
        usage: Usage,
    },
}

/// One choice's text state.
struct ChoiceOutput {
    decoder: Option<IncrementalDecoder<Arc<TextTokenizer>>>,
    stop: StopMatcher,
    /// Tokens delivered to the caller.
    tokens: usize,
    finished: bool,
}

/// Turns a request's engine events into its `GenerationEvent`s.
pub(crate) struct OutputProcessor {
    choices: Vec<ChoiceOutput>,
    signals: Arc<StopSignals>,
    pending: VecDeque<GenerationEvent>,
}

impl OutputProcessor {
    pub fn new(n: usize, tokenizer: Option<&Arc<TextTokenizer>>, stops: &[String], signals: Arc<StopSignals>) -> Self {
        let choices = (0..n)
            .map(|_| ChoiceOutput {
                decoder: tokenizer.cloned().map(IncrementalDecoder::new),
                stop: StopMatcher::new(stops),
                tokens: 0,
                finished: false,
            })
            .collect();
        Self {
            choices,
            signals,
            pending: VecDeque::new(),
        }
    }

    /// The next event ready for the caller, if any.
    pub fn pop(&mut self) -> Option<GenerationEvent> {
        self.pending.pop_front()
    }

    pub fn push(&mut self, event: EngineEvent) {
        match event {
            EngineEvent::Token {
                index,
                token,
                logprob,
                stop_id,
            } => self.token(index, token, logprob, stop_id),
            EngineEvent::Finished { index, reason } => {
                if let Some(choice) = self.choices.get_mut(index).filter(|c| !c.finished) {
                    choice.finished = true;
                    let reason = match reason {
                        FinishReason::Error(_) => reason,
                        // Undecodable held-back bytes fail the choice, as any decode error does.
                        _ => self.flush(index).map_or_else(FinishReason::Error, |()| reason),
                    };
                    self.pending.push_back(GenerationEvent::Finished { index, reason });
                }
            }
            EngineEvent::Embedding { index, vector } => self.pending.push_back(GenerationEvent::Embedding { index, vector }),
            EngineEvent::Done { mut usage } => {
                // Tokens sampled after a stop string matched never reached the caller.
                usage.completion_tokens = self.choices.iter().map(|c| c.tokens).sum();
                self.pending.push_back(GenerationEvent::Done { usage });
            }
        }
    }

    fn token(&mut self, index: usize, token: u32, logprob: Option<TokenLogprob>, stop_id: bool) {
        let Some(choice) = self.choices.get_mut(index).filter(|c| !c.finished) else { return };
        choice.tokens += 1;
        let delta = |text: String| GenerationEvent::Delta {
            index,
            text,
            token_ids: vec![token],
            logprobs: logprob.clone().into_iter().collect(),
        };
        if stop_id {
            self.pending.push_back(delta(String::new()));
            return;
        }
        let piece = match choice.decoder.as_mut().map(|d| d.push(token)) {
            None => String::new(),
            Some(Ok(piece)) => piece,
            Some(Err(e)) => {
                choice.finished = true;
                self.signals.stop(index);
                self.pending.push_back(delta(String::new()));
                self.pending.push_back(GenerationEvent::Finished {
                    index,
                    reason: FinishReason::Error(e.to_string()),
                });
                return;
            }
        };
        match choice.stop.push(&piece) {
            StopCheck::Continue(text) => self.pending.push_back(delta(text)),
            StopCheck::Stopped(text) => {
                // Whatever followed the stop string is dropped with it.
                choice.finished = true;
                self.signals.stop(index);
                self.pending.push_back(delta(text));
                self.pending.push_back(GenerationEvent::Finished {
                    index,
                    reason: FinishReason::Stop,
                });
            }
        }
    }

    /// Sends what was held back for an unfinished character or a possible
    /// stop string when the choice ends for another reason.
    fn flush(&mut self, index: usize) -> Result<(), String> {
        let Some(choice) = self.choices.get_mut(index) else { return Ok(()) };
        let tail = match choice.decoder.as_ref().map(|d| d.finish()).transpose() {
            Ok(tail) => tail.unwrap_or_default(),
            Err(e) => return Err(e.to_string()),
        };
        let text = match choice.stop.push(&tail) {
            StopCheck::Continue(mut text) => {
                text.push_str(&choice.stop.finish());
                text
            }
            StopCheck::Stopped(text) => text,
        };
        if !text.is_empty() {
            self.pending.push_back(GenerationEvent::Delta {
                index,
                text,
                token_ids: Vec::new(),
                logprobs: Vec::new(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(p: &mut OutputProcessor) -> Vec<GenerationEvent> {
        std::iter::from_fn(|| p.pop()).collect()
    }

    fn token(index: usize, token: u32) -> EngineEvent {
        EngineEvent::Token {
            index,
            token,
            logprob: None,
            stop_id: false,
        }
    }

    #[test]
    fn without_a_tokenizer_tokens_pass_through_and_usage_counts_delivered_tokens() {
        let signals = Arc::new(StopSignals::new(2));
        let mut p = OutputProcessor::new(2, None, &[], signals.clone());
        p.push(token(0, 5));
        p.push(token(1, 6));
        p.push(EngineEvent::Token {
            index: 0,
            token: 2,
            logprob: None,
            stop_id: true,
        });
        p.push(EngineEvent::Finished {
            index: 0,
            reason: FinishReason::Stop,
        });
        p.push(EngineEvent::Finished {
            index: 1,
            reason: FinishReason::Length,
        });
        p.push(EngineEvent::Done {
            usage: Usage {
                prompt_tokens: 3,
                completion_tokens: 99,
                cached_tokens: 0,
            },
        });
        let events = texts(&mut p);
        assert_eq!(events.len(), 6);
        assert_eq!(
            events.last(),
            Some(&GenerationEvent::Done {
                usage: Usage {
                    prompt_tokens: 3,
                    completion_tokens: 3,
                    cached_tokens: 0
                }
            })
        );
        assert!(!signals.is_stopped(0) && !signals.is_stopped(1));
    }

    #[test]
    fn a_second_finish_for_a_choice_is_ignored() {
        let mut p = OutputProcessor::new(1, None, &[], Arc::new(StopSignals::new(1)));
        for reason in [FinishReason::Stop, FinishReason::Length] {
            p.push(EngineEvent::Finished { index: 0, reason });
        }
        p.push(token(0, 1));
        assert_eq!(
            texts(&mut p),
            vec![GenerationEvent::Finished {
                index: 0,
                reason: FinishReason::Stop
            }]
        );
    }
}
