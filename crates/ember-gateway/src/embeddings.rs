//! `POST /v1/embeddings`: texts or token ids in, one L2-normalized vector
//! each out, as floats or base64 (little-endian f32, as OpenAI sends them),
//! cut to `dimensions` and normalized again (the Matryoshka truncation
//! Qwen3-Embedding is trained for). The backend answers in floats; this
//! handler does the cutting and encoding, so every backend gets the same.

use actix_web::{HttpResponse, web};
use base64::Engine as _;
use serde_json::{Value, json};

use crate::backend::{BackendRequest, Endpoint};
use crate::error::ApiError;
use crate::openai::EmbeddingsRequest;
use crate::params::parse_body;
use crate::state::AppState;
use crate::streams::collect;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Encoding {
    Float,
    Base64,
}

pub async fn embeddings(state: web::Data<AppState>, body: web::Json<Value>) -> Result<HttpResponse, ApiError> {
    let (req, sampling, mut body): (EmbeddingsRequest, _, _) = parse_body(body)?;
    let encoding = match req.encoding_format.as_deref() {
        None | Some("float") => Encoding::Float,
        Some("base64") => Encoding::Base64,
        Some(other) => {
            return Err(ApiError::invalid("encoding_format", format!("`{other}` is not `float` or `base64`")));
        }
    };
    let dimensions = match req.dimensions {
        None => None,
        Some(d) if d >= 1 => Some(d as usize),
        Some(d) => return Err(ApiError::invalid("dimensions", format!("`dimensions` must be at least 1, got {d}"))),
    };
    if let Some(user) = &req.user {
        tracing::info!(user = %user, "end user");
    }
    body.insert("encoding_format".into(), json!("float"));
    let model = req.model.clone();
    let request = BackendRequest {
        endpoint: Endpoint::Embeddings(Box::new(req)),
        sampling,
        body,
    };
    let (results, usage) = collect(state.start(&model, request).await?).await?;
    let mut data = Vec::with_capacity(results.len());
    for (index, result) in results.into_iter().enumerate() {
        let vector = match dimensions {
            Some(d) => truncated(result.embedding, d)?,
            None => result.embedding,
        };
        let embedding = match encoding {
            Encoding::Float => json!(vector),
            Encoding::Base64 => {
                let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            }
        };
        data.push(json!({"object": "embedding", "index": index, "embedding": embedding}));
    }
    Ok(HttpResponse::Ok().json(json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": usage.prompt_tokens, "total_tokens": usage.prompt_tokens},
    })))
}

/// The first `dimensions` values, L2-normalized again.
fn truncated(mut vector: Vec<f32>, dimensions: usize) -> Result<Vec<f32>, ApiError> {
    if dimensions > vector.len() {
        return Err(ApiError::invalid(
            "dimensions",
            format!("`dimensions` must be at most the model's {}, got {dimensions}", vector.len()),
        ));
    }
    vector.truncate(dimensions);
    let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        vector.iter_mut().for_each(|x| *x /= norm);
    }
    Ok(vector)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_renormalizes_and_refuses_more_than_there_is() {
        let cut = truncated(vec![0.6, 0.0, 0.8], 2).unwrap_or_default();
        assert!((cut[0] - 1.0).abs() < 1e-6 && cut[1] == 0.0);
        assert_eq!(truncated(vec![1.0], 2).err().and_then(|e| e.param).as_deref(), Some("dimensions"));
    }
}
