//! `LocalBackend`: the engine in this process. Everything model-specific
//! happens here: the chat template, hermes tool rendering, grammars for
//! tools and JSON schemas, tokenization, and parsing tool calls out of the
//! model's text.

mod events;
pub mod grammar;
pub mod prompt;
pub mod response_format;
pub mod tool_parser;
pub mod tools;

use std::sync::OnceLock;

use ember_engine::{EmbeddingRequest, EncodedPrompt, EngineHandle, Grammar, GenerationRequest};
use serde_json::{Map, Value};

use crate::backend::{Backend, BackendRequest, BoxFuture, Endpoint, EventStream, ModelCard};
use crate::error::ApiError;
use crate::openai::{ChatCompletionRequest, CompletionRequest, EmbeddingsRequest, PromptField, SamplingFields, VLLM_EXTENSIONS};
use crate::params::{LengthFields, encode_prompts, generation_request, off_workers, reject_present, submit};
use crate::backend::local::response_format::content_schema;
use crate::backend::local::tools::{Tags, Tools};
use events::Reporting;

/// Most prompts in one completions request.
const MAX_PROMPTS: usize = 64;
/// Most inputs in one embeddings request (OpenAI's limit).
const MAX_INPUTS: usize = 2048;

pub struct LocalBackend {
    name: String,
    /// The name clients send as `model`.
    served: String,
    engine: OnceLock<EngineHandle>,
    max_messages: usize,
}

impl LocalBackend {
    pub fn new(name: impl Into<String>, served: impl Into<String>, max_messages: usize) -> Self {
        Self {
            name: name.into(),
            served: served.into(),
            engine: OnceLock::new(),
            max_messages,
        }
    }

    pub fn served_name(&self) -> &str {
        &self.served
    }

    /// Makes the loaded engine available.
    pub fn set_engine(&self, engine: EngineHandle) {
        let _ = self.engine.set(engine);
    }

    /// The engine, or 503 while it loads.
    pub fn engine(&self) -> Result<&EngineHandle, ApiError> {
        self.engine.get().ok_or_else(ApiError::loading)
    }

    pub fn is_loaded(&self) -> bool {
        self.engine.get().is_some()
    }

    pub fn max_messages(&self) -> usize {
        self.max_messages
    }

    /// The engine, unless its model only embeds.
    fn generator(&self) -> Result<EngineHandle, ApiError> {
        let engine = self.engine()?;
        if engine.model().pooling.is_some() {
            return Err(ApiError::invalid(
                "model",
                format!("`{}` is an embedding model: it answers /v1/embeddings only", self.served),
            ));
        }
        Ok(engine.clone())
    }

    async fn chat(&self, req: ChatCompletionRequest, sampling: SamplingFields, body: &Map<String, Value>) -> Result<EventStream, ApiError> {
        let engine = self.generator()?;
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
        reject_extensions(body)?;
        let tools = Tools::from_request(req.tools.as_ref(), req.tool_choice.as_ref(), req.parallel_tool_calls.as_ref())?;
        let schema = content_schema(req.response_format.as_ref())?;

        let model = engine.model();
        let Some(tokenizer) = model.tokenizer.clone().filter(|_| model.chat_template.is_some()) else {
            return Err(ApiError::bad_request(
                "this model has no tokenizer or chat template; use /v1/completions with token ids",
            ));
        };
        let prompt = {
            let (engine, messages, tools, limit) = (engine.clone(), req.messages, tools.clone(), self.max_messages);
            off_workers(move || prompt::chat_prompt(engine.model(), &messages, limit, tools.as_ref(), true, false)).await?
        };
        let grammar = match (&tools, &schema) {
            (Some(tools), schema) => Some(tools.grammar(&Tags::for_tokenizer(&tokenizer), schema.as_ref())?),
            (None, Some(schema)) => Some(Grammar::JsonSchema(schema.clone())),
            (None, None) => None,
        };
        let constraint = match grammar {
            Some(grammar) => Some(grammar::compile(&engine, grammar, tools.clone(), schema.is_some()).await?),
            None => None,
        };
        let max_tokens = match (req.max_completion_tokens, req.max_tokens) {
            (Some(m), _) => Some(("max_completion_tokens", m)),
            (None, Some(m)) => Some(("max_tokens", m)),
            (None, None) => None,
        };
        let logprobs = req.logprobs.unwrap_or(false);
        // `ignore_eos` goes past the end of the turn too, as in vLLM: the
        // chat's end-of-turn ids are its end of sequence.
        let stop_ids = if sampling.ignore_eos == Some(true) { Vec::new() } else { model.chat_stop_ids() };
        let request = generation_request(
            prompt,
            &sampling,
            &model.generation_defaults,
            max_tokens,
            logprobs,
            req.top_logprobs.map(|k| ("top_logprobs", k)),
            stop_ids,
        )?;
        let request = GenerationRequest {
            logits_processor: constraint,
            ..request
        };
        let fields = LengthFields {
            prompt: "messages",
            max_tokens: max_tokens.map_or("max_tokens", |(name, _)| name),
        };
        let n = request.n;
        let stream = submit(&engine, request, fields).await?;
        let reporting = Reporting {
            tokenizer: Some(tokenizer),
            parse_calls: tools.is_some(),
            logprobs,
        };
        Ok(events::events(vec![stream], n, reporting))
    }

    async fn completions(&self, req: CompletionRequest, sampling: SamplingFields, body: &Map<String, Value>) -> Result<EventStream, ApiError> {
        let engine = self.generator()?;
        reject_present(&[
            ("echo", req.echo == Some(true), "the prompt is not echoed back"),
            ("suffix", req.suffix.as_ref().is_some_and(|s| !s.is_null()), "fill-in-the-middle is not implemented"),
            ("best_of", req.best_of.is_some_and(|b| b > 1), "use `n` instead"),
            ("logit_bias", req.logit_bias.is_some(), "logit biases are not implemented"),
        ])?;
        reject_extensions(body)?;
        let prompts = encoded_prompts(req.prompt, &engine, "prompt", MAX_PROMPTS).await?;
        let logprobs = req.logprobs.is_some();
        // OpenAI's default for completions.
        let max_tokens = req.max_tokens.unwrap_or(16);
        let mut streams = Vec::with_capacity(prompts.len());
        let mut n = 1;
        for prompt in prompts {
            let request = generation_request(
                prompt,
                &sampling,
                &engine.model().generation_defaults,
                Some(("max_tokens", max_tokens)),
                logprobs,
                req.logprobs.map(|k| ("logprobs", k)),
                Vec::new(),
            )?;
            n = request.n;
            let fields = LengthFields {
                prompt: "prompt",
                max_tokens: "max_tokens",
            };
            // Dropping earlier streams on error cancels them.
            streams.push(submit(&engine, request, fields).await?);
        }
        let reporting = Reporting {
            tokenizer: engine.model().tokenizer.clone(),
            parse_calls: false,
            logprobs,
        };
        Ok(events::events(streams, n, reporting))
    }

    /// Each input runs as a prefill-only sequence beside other requests;
    /// its pooled, normalized vector comes back as an `Embedding` event.
    async fn embeddings(&self, req: EmbeddingsRequest) -> Result<EventStream, ApiError> {
        let engine = self.engine()?.clone();
        let Some(pooling) = engine.model().pooling else {
            return Err(ApiError::invalid(
                "model",
                format!(
                    "`{}` is a generative model; /v1/embeddings needs an embedding model \
                     (sentence-transformers files, or `ember serve --task embed`)",
                    self.served
                ),
            ));
        };
        let prompts = encoded_prompts(req.input, &engine, "input", MAX_INPUTS).await?;
        let mut streams = Vec::with_capacity(prompts.len());
        for prompt in prompts {
            let request = EmbeddingRequest { prompt: prompt.ids, pooling };
            let stream = engine.embed(request).map_err(|e| ApiError {
                param: Some("input".into()),
                ..ApiError::from(e)
            })?;
            streams.push(stream);
        }
        let reporting = Reporting {
            tokenizer: None,
            parse_calls: false,
            logprobs: false,
        };
        Ok(events::events(streams, 1, reporting))
    }
}

impl Backend for LocalBackend {
    fn name(&self) -> &str {
        &self.name
    }

    fn start<'a>(&'a self, _model: &'a str, request: BackendRequest) -> BoxFuture<'a, Result<EventStream, ApiError>> {
        Box::pin(async move {
            let BackendRequest { endpoint, sampling, body } = request;
            match endpoint {
                Endpoint::Chat(req) => self.chat(*req, sampling, &body).await,
                Endpoint::Completions(req) => self.completions(*req, sampling, &body).await,
                Endpoint::Embeddings(req) => self.embeddings(*req).await,
            }
        })
    }

    fn models(&self) -> BoxFuture<'_, Result<Vec<ModelCard>, ApiError>> {
        let card = ModelCard {
            id: self.served.clone(),
            max_model_len: self.engine.get().map(|e| e.info().max_model_len),
        };
        Box::pin(async move { Ok(vec![card]) })
    }

    fn as_local(&self) -> Option<&LocalBackend> {
        Some(self)
    }
}

/// vLLM's extension fields are accepted for upstreams; the engine here
/// implements the ones among the sampling fields, and refuses the rest by name.
fn reject_extensions(body: &Map<String, Value>) -> Result<(), ApiError> {
    match body.keys().find(|k| VLLM_EXTENSIONS.contains(&k.as_str())) {
        Some(field) => Err(ApiError::unsupported(
            field,
            "a vLLM extension the engine in this server does not implement (it is passed on to upstream servers)",
        )),
        None => Ok(()),
    }
}

/// Every prompt as token ids, texts with their `[IMPORTANT]` spans; at
/// most `max` of them, `field` naming them in errors.
async fn encoded_prompts(prompt: PromptField, engine: &EngineHandle, field: &str, max: usize) -> Result<Vec<EncodedPrompt>, ApiError> {
    let ids = |ids: Vec<u32>| EncodedPrompt {
        ids,
        global_spans: Vec::new(),
    };
    let prompts = match prompt {
        PromptField::Tokens(tokens) => vec![ids(tokens)],
        PromptField::TokenLists(lists) if lists.len() <= max => lists.into_iter().map(ids).collect(),
        PromptField::Text(text) => encode_texts(vec![text], engine, field).await?,
        PromptField::Texts(texts) if texts.len() <= max => encode_texts(texts, engine, field).await?,
        PromptField::TokenLists(_) | PromptField::Texts(_) => Vec::new(),
    };
    if prompts.is_empty() || prompts.len() > max {
        return Err(ApiError::invalid(field, format!("give between 1 and {max} {field}s")));
    }
    Ok(prompts)
}

async fn encode_texts(texts: Vec<String>, engine: &EngineHandle, field: &str) -> Result<Vec<EncodedPrompt>, ApiError> {
    if engine.model().tokenizer.is_none() {
        return Err(ApiError::invalid(field, "this model has no tokenizer: send token ids"));
    }
    encode_prompts(engine.clone(), texts, true).await
}
