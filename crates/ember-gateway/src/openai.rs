//! The OpenAI wire format: request bodies (unknown fields rejected by name)
//! and response bodies, for chat completions and completions.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `"stop"` is a string or a list of strings.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum StopField {
    One(String),
    Many(Vec<String>),
}

impl StopField {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s],
            Self::Many(v) => v,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamOptions {
    pub include_usage: Option<bool>,
    /// vLLM's per-chunk usage: `false` is accepted, `true` refused (usage
    /// is reported once, at the end).
    pub continuous_usage_stats: Option<bool>,
}

/// Sampling fields shared by chat completions and completions.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SamplingFields {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub n: Option<i64>,
    pub stop: Option<StopField>,
    pub seed: Option<i64>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub user: Option<String>,
    pub ignore_eos: Option<bool>,
    pub stop_token_ids: Option<Vec<u32>>,
}

const SAMPLING_FIELDS: &[&str] = &[
    "temperature", "top_p", "top_k", "min_p", "n", "stop", "seed", "presence_penalty",
    "frequency_penalty", "repetition_penalty", "stream", "stream_options", "user", "ignore_eos",
    "stop_token_ids",
];

/// Request bodies whose unknown fields are refused by name. The sampling
/// fields shared by several bodies are parsed on their own (serde's
/// `flatten` would lose field names in error messages and cannot be
/// combined with `deny_unknown_fields`), so the check is done on the JSON
/// object first.
pub trait KnownFields {
    const FIELDS: &'static [&'static str];
    /// Whether the sampling fields are accepted too.
    const SAMPLING: bool = true;

    /// The first field of `body` that is not in `FIELDS`, the sampling
    /// fields or vLLM's extensions.
    fn unknown_field(body: &serde_json::Map<String, Value>) -> Option<String> {
        let known = |k: &str| {
            Self::FIELDS.contains(&k) || (Self::SAMPLING && (SAMPLING_FIELDS.contains(&k) || VLLM_EXTENSIONS.contains(&k)))
        };
        body.keys().find(|k| !known(k)).cloned()
    }
}

/// vLLM's extra request fields beyond the sampling ones Ember implements
/// (vllm/entrypoints/openai/protocol.py): accepted so they reach upstream
/// servers that understand them; the engine in this process refuses them
/// by name.
pub const VLLM_EXTENSIONS: &[&str] = &[
    "use_beam_search", "length_penalty", "min_tokens", "include_stop_str_in_output", "skip_special_tokens",
    "spaces_between_special_tokens", "truncate_prompt_tokens", "prompt_logprobs", "allowed_token_ids", "bad_words",
    "add_generation_prompt", "continue_final_message", "add_special_tokens", "documents", "chat_template",
    "chat_template_kwargs", "mm_processor_kwargs", "guided_json", "guided_regex", "guided_choice", "guided_grammar",
    "guided_decoding_backend", "guided_whitespace_pattern", "structured_outputs", "priority", "request_id",
    "return_tokens_as_token_ids", "return_token_ids", "cache_salt", "kv_transfer_params", "vllm_xargs",
];

impl KnownFields for ChatCompletionRequest {
    const FIELDS: &'static [&'static str] = &[
        "model", "messages", "max_tokens", "max_completion_tokens", "logprobs", "top_logprobs", "tools",
        "tool_choice", "parallel_tool_calls", "response_format", "logit_bias", "functions", "function_call",
        "audio", "modalities", "prediction", "reasoning_effort", "service_tier", "store", "metadata",
        "web_search_options",
    ];
}

impl KnownFields for CompletionRequest {
    const FIELDS: &'static [&'static str] =
        &["model", "prompt", "max_tokens", "logprobs", "echo", "suffix", "best_of", "logit_bias"];
}

#[derive(Debug, Clone, Deserialize)]
pub struct ChatCompletionRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    pub max_tokens: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<i64>,
    // Supported: kept as raw JSON and checked by `Tools::from_request` and
    // `response_format::content_schema`, so an error names the exact path.
    pub tools: Option<Value>,
    pub tool_choice: Option<Value>,
    pub parallel_tool_calls: Option<Value>,
    pub response_format: Option<Value>,
    // Known to OpenAI, not implemented by Ember: present means a 400 naming
    // it (except `store: false`, which asks for nothing).
    pub logit_bias: Option<Value>,
    pub functions: Option<Value>,
    pub function_call: Option<Value>,
    pub audio: Option<Value>,
    pub modalities: Option<Value>,
    pub prediction: Option<Value>,
    pub reasoning_effort: Option<Value>,
    pub service_tier: Option<Value>,
    pub store: Option<Value>,
    pub metadata: Option<Value>,
    pub web_search_options: Option<Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatMessage {
    pub role: String,
    pub content: Option<MessageContent>,
    pub name: Option<String>,
    pub tool_calls: Option<Value>,
    pub tool_call_id: Option<String>,
    /// Sent back by clients that replay a previous response message.
    pub refusal: Option<Value>,
    pub reasoning_content: Option<String>,
}

impl ChatMessage {
    /// A message of plain text.
    pub fn text(role: &str, content: impl Into<String>) -> Self {
        Self {
            role: role.to_owned(),
            content: Some(MessageContent::Text(content.into())),
            name: None,
            tool_calls: None,
            tool_call_id: None,
            refusal: None,
            reasoning_content: None,
        }
    }
}

/// A message's content: a string, or an array of typed parts.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Clone, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

/// `prompt` of a completions request: text, texts, token ids, or lists of them.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PromptField {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    pub model: String,
    pub prompt: PromptField,
    pub max_tokens: Option<i64>,
    /// The number of most likely alternatives per token (0-5 in OpenAI's API).
    pub logprobs: Option<i64>,
    pub echo: Option<bool>,
    pub suffix: Option<Value>,
    pub best_of: Option<i64>,
    pub logit_bias: Option<Value>,
}

/// `POST /v1/embeddings`.
#[derive(Debug, Clone, Deserialize)]
pub struct EmbeddingsRequest {
    pub model: String,
    /// Texts or token ids, one or many, as a completions `prompt`.
    pub input: PromptField,
    pub encoding_format: Option<String>,
    pub dimensions: Option<i64>,
    pub user: Option<String>,
}

impl KnownFields for EmbeddingsRequest {
    const SAMPLING: bool = false;
    const FIELDS: &'static [&'static str] = &["model", "input", "encoding_format", "dimensions", "user"];
}

#[derive(Debug, Clone, Serialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
    pub prompt_tokens_details: PromptTokensDetails,
}

#[derive(Debug, Clone, Serialize)]
pub struct PromptTokensDetails {
    pub cached_tokens: usize,
}

impl From<crate::backend::Usage> for Usage {
    fn from(u: crate::backend::Usage) -> Self {
        Self {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.prompt_tokens + u.completion_tokens,
            prompt_tokens_details: PromptTokensDetails {
                cached_tokens: u.cached_tokens,
            },
        }
    }
}

/// One alternative in chat logprobs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f32,
    #[serde(default)]
    pub bytes: Option<Vec<u8>>,
}

/// A token's logprob entry, as chat completions show it (completions'
/// legacy shape is built from the same entries).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprobJson {
    pub token: String,
    pub logprob: f32,
    #[serde(default)]
    pub bytes: Option<Vec<u8>>,
    #[serde(default)]
    pub top_logprobs: Vec<TopLogprob>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChatLogprobs {
    pub content: Vec<TokenLogprobJson>,
}
