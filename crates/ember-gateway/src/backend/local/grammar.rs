//! Constrained decoding for a chat request: the grammar of its tools or
//! `response_format` schema, compiled for the model's tokenizer.

use std::sync::Arc;

use actix_web::web;
use ember_engine::{EngineHandle, Grammar, LogitsProcessorFactory};

use crate::error::ApiError;
use crate::backend::local::tools::Tools;

/// Compiles the answer's grammar off the async workers (the first use also
/// builds the model's token trie). A grammar llguidance refuses is a 400
/// naming the schema at fault.
pub async fn compile(
    engine: &EngineHandle,
    grammar: Grammar,
    tools: Option<Tools>,
    has_schema: bool,
) -> Result<Arc<dyn LogitsProcessorFactory>, ApiError> {
    let engine = engine.clone();
    web::block(move || {
        let compiler = engine.model().grammar_compiler()?;
        match compiler.compile(&grammar) {
            Ok(compiled) => Ok(compiled.into_factory()),
            Err(e) => Err(grammar_error(&compiler, tools.as_ref(), has_schema, e)),
        }
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?
}

/// Which part of the request a grammar error is about: a tool's
/// `parameters`, else the `response_format` schema; with neither at fault,
/// Ember's own tool grammar failed.
fn grammar_error(
    compiler: &ember_engine::GrammarCompiler,
    tools: Option<&Tools>,
    has_schema: bool,
    error: ember_engine::EngineError,
) -> ApiError {
    for (i, function) in tools.iter().flat_map(|t| t.functions.iter().enumerate()) {
        if let Err(e) = compiler.compile(&Tools::function_grammar(function)) {
            return ApiError::invalid(format!("tools[{i}].function.parameters"), e.to_string());
        }
    }
    if has_schema {
        ApiError::invalid("response_format.json_schema.schema", error.to_string())
    } else {
        ApiError::internal(error.to_string())
    }
}

