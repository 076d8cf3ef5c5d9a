//! `ember-gateway`: the OpenAI-compatible HTTP face of Ember on actix-web.
//! `configure` wires routes, JSON limits and middleware onto an actix app;
//! the `ember serve` binary and the HTTP tests use the same function, so
//! tests run the real configuration.

pub mod backend;
mod chat;
mod completions;
mod embeddings;
pub mod config;
pub mod error;
#[doc(hidden)] pub mod fuzz_api;
pub mod metrics;
mod messages;
mod middleware;
pub mod openai;
mod params;
mod responses;
mod routes;
pub mod state;
mod streams;
mod translate;
mod page;

use actix_web::web;

pub use config::ServeConfig;
pub use error::ApiError;
pub use metrics::GatewayMetrics;
pub use state::{AppState, Limits};

/// Routes, body limits and middleware for `state`.
pub fn configure(state: web::Data<AppState>) -> impl Fn(&mut web::ServiceConfig) + Clone {
    move |cfg: &mut web::ServiceConfig| {
        let json = web::JsonConfig::default()
            .limit(state.limits.max_body_bytes)
            .error_handler(error::json_error);
        cfg.app_data(state.clone()).app_data(json).service(
            web::scope("")
                .wrap(actix_web::middleware::from_fn(middleware::authenticate))
                .wrap(actix_web::middleware::from_fn(middleware::observe))
                .route("/v1/chat/completions", web::post().to(chat::chat_completions))
                .route("/v1/completions", web::post().to(completions::completions))
                .route("/v1/embeddings", web::post().to(embeddings::embeddings))
                .route("/v1/responses", web::post().to(responses::create))
                .route("/v1/responses/{id}", web::get().to(responses::get))
                .route("/v1/responses/{id}", web::delete().to(responses::delete))
                .route("/v1/messages", web::post().to(messages::create))
                .route("/v1/messages/count_tokens", web::post().to(messages::count_tokens))
                .route("/v1/models", web::get().to(routes::list_models))
                .route("/v1/models/{id}", web::get().to(routes::get_model))
                .route("/generate", web::post().to(routes::generate))
                .route("/tokenize", web::post().to(routes::tokenize))
                .route("/detokenize", web::post().to(routes::detokenize))
                .route("/health", web::get().to(routes::health))
                .route("/", web::get().to(page::index))
                .route("/static/app.js", web::get().to(page::script))
                .route("/static/app.css", web::get().to(page::style))
                .route("/metrics", web::get().to(routes::metrics))
                .default_service(web::to(routes::not_found)),
        );
    }
}
