//! The few calls `ember eval` makes to an OpenAI-compatible server: chat
//! completions, and `/tokenize` (Ember's and vLLM's) to size prompts with
//! the served model's own tokenizer. Blocking HTTP through `ureq`: eval
//! runs one request at a time per worker and needs nothing asynchronous.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use ureq::Agent;

pub struct Client {
    agent: Agent,
    /// Up to and including `/v1`.
    base_url: String,
    model: String,
    api_key: Option<String>,
}

/// One answer and what it cost.
#[derive(Debug, Clone)]
pub struct Answer {
    pub text: String,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
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
        }
    }

    fn post(&self, url: &str, body: &Value) -> Result<Value> {
        let mut request = self.agent.post(url);
        if let Some(key) = &self.api_key {
            request = request.header("authorization", format!("Bearer {key}"));
        }
        let mut response = request.send_json(body).with_context(|| format!("POST {url}"))?;
        let status = response.status();
        let value: Value = response
            .body_mut()
            .read_json()
            .with_context(|| format!("POST {url}: the answer is not JSON ({status})"))?;
        if !status.is_success() {
            let message = value["error"]["message"].as_str().unwrap_or("no message");
            bail!("POST {url}: {status}: {message}");
        }
        Ok(value)
    }

    /// One user message, greedy, at most `max_tokens` out.
    pub fn chat(&self, prompt: &str, max_tokens: usize) -> Result<Answer> {
        let body = json!({
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
            "temperature": 0,
        });
        let started = Instant::now();
        let value = self.post(&format!("{}/chat/completions", self.base_url), &body)?;
        let count = |field: &str| value["usage"][field].as_u64().unwrap_or(0) as usize;
        Ok(Answer {
            text: value["choices"][0]["message"]["content"].as_str().unwrap_or_default().to_owned(),
            prompt_tokens: count("prompt_tokens"),
            completion_tokens: count("completion_tokens"),
            elapsed: started.elapsed(),
        })
    }

    /// Prompt tokens of one user message, through the chat template, as the
    /// server counts them (`/tokenize` sits beside `/v1`).
    pub fn count_tokens(&self, prompt: &str) -> Result<usize> {
        let root = self.base_url.strip_suffix("/v1").unwrap_or(&self.base_url);
        let body = json!({"model": self.model, "messages": [{"role": "user", "content": prompt}]});
        let value = self.post(&format!("{root}/tokenize"), &body)?;
        value["count"]
            .as_u64()
            .map(|n| n as usize)
            .context("/tokenize answered without `count`")
    }
}
