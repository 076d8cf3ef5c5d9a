//! The few calls `ember eval` and `ember summarize` make to an
//! OpenAI-compatible server: chat completions, and `/tokenize` (Ember's and
//! vLLM's) to count with the served model's own tokenizer. Blocking HTTP
//! through `ureq`: each worker thread has one request in flight and needs
//! nothing asynchronous.

mod tokens;

pub use tokens::TokenCounter;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use ureq::Agent;

/// Tries per request: the first and three retries.
const ATTEMPTS: u32 = 4;

pub struct Client {
    agent: Agent,
    /// Up to and including `/v1`.
    base_url: String,
    model: String,
    api_key: Option<String>,
    /// Sampling fields every chat request carries: greedy unless set.
    temperature: f64,
    frequency_penalty: f64,
}

/// One answer and what it cost.
#[derive(Debug, Clone)]
pub struct Answer {
    pub text: String,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// `length` when `max_tokens` cut the answer.
    pub finish_reason: String,
    pub elapsed: Duration,
}

impl Client {
    pub fn new(base_url: &str, model: &str, api_key: Option<String>, timeout: Duration) -> Self {
        let agent: Agent = Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .build()
            .into();
        Self {
            agent,
            base_url: base_url.trim_end_matches('/').to_owned(),
            model: model.to_owned(),
            api_key: api_key.filter(|k| !k.is_empty()),
            temperature: 0.0,
            frequency_penalty: 0.0,
        }
    }

    /// Chat requests with this `temperature` and `frequency_penalty`
    /// (OpenAI's fields, which vLLM and llama.cpp's server take too).
    pub fn with_sampling(mut self, temperature: f64, frequency_penalty: f64) -> Self {
        self.temperature = temperature;
        self.frequency_penalty = frequency_penalty;
        self
    }

    /// POSTs `body`, retrying what a busy or restarting server answers
    /// (connection errors, 408, 429, 5xx) with backoff: 1, 2, 4 s, or the
    /// server's `Retry-After`. A 4xx is the request's fault and is not retried.
    fn post(&self, url: &str, body: &Value) -> Result<Value> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let backoff = Duration::from_secs(1 << (attempt - 1).min(5));
            let mut request = self.agent.post(url);
            if let Some(key) = &self.api_key {
                request = request.header("authorization", format!("Bearer {key}"));
            }
            let mut response = match request.send_json(body) {
                Ok(response) => response,
                Err(e) if attempt < ATTEMPTS => {
                    eprintln!("POST {url}: {e}; retrying in {} s", backoff.as_secs());
                    std::thread::sleep(backoff);
                    continue;
                }
                Err(e) => return Err(e).with_context(|| format!("POST {url} (after {ATTEMPTS} attempts)")),
            };
            let status = response.status();
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let value: Value = response
                .body_mut()
                .read_json()
                .with_context(|| format!("POST {url}: the answer is not JSON ({status})"))?;
            if status.is_success() {
                return Ok(value);
            }
            let message = value["error"]["message"].as_str().unwrap_or("no message");
            let transient = matches!(status.as_u16(), 408 | 429) || status.is_server_error();
            if transient && attempt < ATTEMPTS {
                let wait = retry_after.unwrap_or(backoff).min(Duration::from_secs(60));
                eprintln!("POST {url}: {status}: {message}; retrying in {} s", wait.as_secs());
                std::thread::sleep(wait);
                continue;
            }
            bail!("POST {url}: {status}: {message}");
        }
    }

    /// One user message, at most `max_tokens` out.
    pub fn chat(&self, prompt: &str, max_tokens: usize) -> Result<Answer> {
        let mut body = json!({
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
            "temperature": self.temperature,
        });
        if self.frequency_penalty != 0.0 {
            body["frequency_penalty"] = json!(self.frequency_penalty);
        }
        let started = Instant::now();
        let value = self.post(&format!("{}/chat/completions", self.base_url), &body)?;
        let count = |field: &str| value["usage"][field].as_u64().unwrap_or(0) as usize;
        Ok(Answer {
            text: value["choices"][0]["message"]["content"].as_str().unwrap_or_default().to_owned(),
            prompt_tokens: count("prompt_tokens"),
            completion_tokens: count("completion_tokens"),
            finish_reason: value["choices"][0]["finish_reason"].as_str().unwrap_or_default().to_owned(),
            elapsed: started.elapsed(),
        })
    }

    /// Prompt tokens of one user message, through the chat template, as the
    /// server counts them.
    pub fn count_user_message(&self, prompt: &str) -> Result<usize> {
        self.tokenize(&json!({"model": self.model, "messages": [{"role": "user", "content": prompt}]}))
    }

    /// Tokens of `text` alone, without special tokens.
    pub fn count_text(&self, text: &str) -> Result<usize> {
        self.tokenize(&json!({"model": self.model, "prompt": text, "add_special_tokens": false}))
    }

    /// `/tokenize` sits beside `/v1`, on Ember and vLLM.
    fn tokenize(&self, body: &Value) -> Result<usize> {
        let root = self.base_url.strip_suffix("/v1").unwrap_or(&self.base_url);
        let value = self
            .post(&format!("{root}/tokenize"), body)
            .context("counting tokens with the server's /tokenize (Ember and vLLM have it; for other servers give --tokenizer FILE)")?;
        value["count"]
            .as_u64()
            .map(|n| n as usize)
            .context("/tokenize answered without `count`")
    }
}
