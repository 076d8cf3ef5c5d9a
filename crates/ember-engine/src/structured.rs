//! Constrained decoding with llguidance: a grammar (a JSON schema, or a Lark
//! grammar for tool calls) becomes a per-sequence matcher that masks every
//! token the grammar cannot take next. The token trie and parser factory are
//! built once per model ([`GrammarCompiler`]); each request compiles its
//! grammar once ([`CompiledGrammar`]) and each sequence gets its own matcher.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::SimpleVob;
use llguidance::{Matcher, ParserFactory};
use serde_json::{Value, json};
use toktrie_hf_tokenizers::ByteTokenizer;

use crate::error::{EngineError, Result};
use crate::sampling::{LogitsProcessor, LogitsProcessorFactory};
use crate::tokenizer::TextTokenizer;

/// Deepest nesting of a JSON schema accepted for compilation. llguidance's
/// schema compiler recurses per level; this keeps a hostile schema from
/// exhausting a worker thread's stack.
pub const MAX_SCHEMA_DEPTH: usize = 48;

/// What the output must match.
#[derive(Debug, Clone, PartialEq)]
pub enum Grammar {
    /// A JSON Schema document (`true` or `{}` accepts any JSON value).
    JsonSchema(Value),
    /// llguidance's Lark dialect; `%json { ... }` embeds a schema.
    Lark(String),
}

/// How generated JSON is laid out: no free whitespace, and the separators of
/// Python's `json.dumps`, which is what models saw in training. Free
/// whitespace would let a weak model pad forever instead of finishing.
fn json_layout() -> Value {
    json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "})
}

/// A client's schema as Ember generates against it: checked for depth, with
/// two narrowings that keep every output valid under the original schema,
/// and Ember's JSON layout attached (as llguidance's `x-guidance`):
/// - an object schema that lists `properties` (all its `required` keys
///   among them) and says nothing of `additionalProperties` gets no extra
///   keys, as xgrammar's strict mode does: models asked for an object want
///   the declared fields, and a weak one would otherwise invent keys
///   without end; say `"additionalProperties": true` to allow them. The
///   branches of an `allOf` are left open, since they merge;
/// - `date`, `time` and `date-time` formats become patterns without leap
///   seconds, 29 February or years before 1000, which llguidance's looser
///   formats allow and validators reject outside real leap seconds and leap
///   years (year 0000 always).
pub fn generation_schema(schema: &Value) -> Result<Value> {
    check_depth(schema)?;
    let mut schema = match schema {
        // `true` accepts anything; written as an empty schema so it can carry options.
        Value::Bool(true) => json!({}),
        other => other.clone(),
    };
    narrow(&mut schema, true);
    if let Value::Object(map) = &mut schema {
        map.insert("x-guidance".into(), json_layout());
    }
    Ok(schema)
}

/// Keys whose values are data, not subschemas.
const DATA_KEYS: [&str; 4] = ["const", "enum", "default", "examples"];
/// Keys whose values map names to subschemas.
const SCHEMA_MAPS: [&str; 5] = ["properties", "patternProperties", "$defs", "definitions", "dependentSchemas"];

const DATE: &str = "[1-9][0-9]{3}-(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)|02-(?:0[1-9]|1[0-9]|2[0-8]))";
const TIME: &str = "(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\\.[0-9]{1,6})?(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])";

fn narrow(schema: &mut Value, may_close: bool) {
    match schema {
        Value::Object(map) => {
            let listed = |name: &Value| name.as_str().is_some_and(|n| map["properties"].get(n).is_some());
            let closes = may_close
                && map.get("properties").is_some_and(Value::is_object)
                && map.get("required").and_then(Value::as_array).is_none_or(|r| r.iter().all(listed))
                && !map.contains_key("additionalProperties")
                && !map.contains_key("patternProperties")
                && !map.contains_key("unevaluatedProperties");
            if closes {
                map.insert("additionalProperties".into(), Value::Bool(false));
            }
            let pattern = match map.get("format").and_then(Value::as_str) {
                _ if map.contains_key("pattern") => None,
                Some("date") => Some(format!("^{DATE}$")),
                Some("time") => Some(format!("^{TIME}$")),
                Some("date-time") => Some(format!("^{DATE}T{TIME}$")),
                _ => None,
            };
            if let Some(pattern) = pattern {
                map.remove("format");
                map.insert("pattern".into(), Value::String(pattern));
            }
            for (key, value) in map.iter_mut() {
                match value {
                    Value::Object(named) if SCHEMA_MAPS.contains(&key.as_str()) => {
                        named.values_mut().for_each(|v| narrow(v, true));
                    }
                    _ if DATA_KEYS.contains(&key.as_str()) => {}
                    _ => narrow(value, key != "allOf"),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| narrow(v, may_close)),
        _ => {}
    }
}

/// Per model: the token trie over the vocabulary and the parser factory.
pub struct GrammarCompiler {
    factory: ParserFactory,
}

impl std::fmt::Debug for GrammarCompiler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrammarCompiler").finish_non_exhaustive()
    }
}

impl GrammarCompiler {
    /// `vocab_size` is the model's output width (often padded past the
    /// tokenizer's vocabulary); `end_ids` are the tokens that may end a
    /// completed grammar (the chat stop ids).
    pub fn new(tokenizer: &TextTokenizer, vocab_size: usize, end_ids: &[u32]) -> Result<Self> {
        let json = tokenizer.to_json()?;
        let mut bytes = ByteTokenizer::from_json_bytes(json.as_bytes()).map_err(trie_error)?;
        let known = bytes.tokrx_info().vocab_size;
        let end_ids: Vec<u32> = end_ids.iter().copied().filter(|&id| id < known).collect();
        if !end_ids.is_empty() {
            bytes.set_eos_tokens(&end_ids);
        }
        let width = (vocab_size >= known as usize).then_some(vocab_size);
        let env = bytes.into_tok_env(width).map_err(trie_error)?;
        let mut factory = ParserFactory::new_simple(&env).map_err(trie_error)?;
        factory.quiet();
        Ok(Self { factory })
    }

    /// Compiles a grammar. Errors (unsupported schema keywords, grammars over
    /// llguidance's size and fuel limits) name the problem for a 400.
    pub fn compile(&self, grammar: &Grammar) -> Result<CompiledGrammar> {
        let top = match grammar {
            Grammar::JsonSchema(schema) => TopLevelGrammar::from_json_schema(generation_schema(schema)?),
            Grammar::Lark(source) => TopLevelGrammar::from_lark(source.clone()),
        };
        let parser = self
            .factory
            .create_parser(top)
            .map_err(|e| EngineError::Grammar(brief(&e.to_string())))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher_error(&matcher) {
            return Err(EngineError::Grammar(e));
        }
        Ok(CompiledGrammar {
            matcher: Mutex::new(matcher),
        })
    }
}

fn trie_error(e: impl std::fmt::Display) -> EngineError {
    EngineError::Grammar(format!("cannot build the token trie: {e}"))
}

fn matcher_error(matcher: &Matcher) -> Option<String> {
    matcher.get_error().map(|e| brief(&e))
}

/// An llguidance message made fit for an API error: on one line, and cut
/// short, since some messages go on to dump parser state (a regex error's
/// first line is only "regex parse error:", so more than one line is kept).
fn brief(message: &str) -> String {
    const LIMIT: usize = 300;
    let text = message.split_whitespace().collect::<Vec<_>>().join(" ");
    match text.char_indices().nth(LIMIT) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text,
    }
}

fn check_depth(schema: &Value) -> Result<()> {
    fn depth(v: &Value) -> usize {
        match v {
            Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
            Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
            _ => 0,
        }
    }
    let d = depth(schema);
    if d > MAX_SCHEMA_DEPTH {
        return Err(EngineError::Grammar(format!(
            "the schema nests {d} levels deep; at most {MAX_SCHEMA_DEPTH} are allowed"
        )));
    }
    Ok(())
}

/// One request's compiled grammar; makes a matcher per sequence.
pub struct CompiledGrammar {
    // `Matcher` is `Send` but not `Sync`; the factory is shared across threads.
    matcher: Mutex<Matcher>,
}

impl std::fmt::Debug for CompiledGrammar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledGrammar").finish_non_exhaustive()
    }
}

impl CompiledGrammar {
    /// A fresh matcher at the start of the grammar.
    pub fn matcher(&self) -> GrammarMatcher {
        let matcher = self.matcher.lock().unwrap_or_else(PoisonError::into_inner).deep_clone();
        GrammarMatcher { matcher, mask: None }
    }

    pub fn into_factory(self) -> Arc<dyn LogitsProcessorFactory> {
        Arc::new(self)
    }
}

impl LogitsProcessorFactory for CompiledGrammar {
    fn create(&self) -> Box<dyn LogitsProcessor> {
        Box::new(self.matcher())
    }
}

/// A sequence's position in its grammar.
pub struct GrammarMatcher {
    matcher: Matcher,
    /// The next position's mask, computed ahead by `prepare`.
    mask: Option<std::result::Result<SimpleVob, String>>,
}

impl LogitsProcessor for GrammarMatcher {
    fn prepare(&mut self) -> Option<std::time::Duration> {
        if self.mask.is_some() {
            return None;
        }
        let started = Instant::now();
        self.mask = Some(
            self.matcher
                .compute_mask_or_eos()
                .map_err(|e| brief(&e.to_string())),
        );
        Some(started.elapsed())
    }

    fn process(&mut self, logits: &mut [f32]) -> std::result::Result<(), String> {
        self.prepare();
        let mask = self.mask.take().unwrap_or_else(|| Err("no mask".into()))?;
        let width = logits.len();
        // Inside JSON structure a mask allows a handful of the vocabulary:
        // keeping those few and filling the rest is cheaper than writing
        // every banned entry one by one.
        if mask.num_set() * 8 < width {
            let mut kept = Vec::new();
            mask.iter_set_entries(|i| {
                if i < width {
                    kept.push((i, logits[i]));
                }
            });
            logits.fill(f32::NEG_INFINITY);
            for (i, l) in kept {
                logits[i] = l;
            }
        } else {
            mask.iter_unset_entries(|i| {
                if i < width {
                    logits[i] = f32::NEG_INFINITY;
                }
            });
        }
        Ok(())
    }

    fn accept(&mut self, token: u32) -> std::result::Result<bool, String> {
        self.mask = None;
        self.matcher.consume_token(token).map_err(|e| brief(&e.to_string()))?;
        Ok(self.matcher.is_stopped())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn narrowing_keeps_outputs_valid_and_leaves_data_alone() -> Result<()> {
        let schema = json!({
            "type": "object",
            "properties": {
                "when": {"type": "string", "format": "date-time"},
                "format": {"type": "string", "format": "email"},
                "open": {"type": "object", "properties": {"a": {"type": "integer"}}, "additionalProperties": true},
                "fixed": {"const": {"format": "date", "properties": {}}},
            },
            "$defs": {"day": {"type": "string", "format": "date"}},
        });
        let out = generation_schema(&schema)?;
        assert_eq!(out["additionalProperties"], false);
        assert!(out["properties"]["when"].get("format").is_none());
        assert!(out["properties"]["when"]["pattern"].as_str().is_some_and(|p| p.contains("T(?:[01]")));
        assert_eq!(out["properties"]["format"]["format"], "email");
        assert_eq!(out["properties"]["open"]["additionalProperties"], true);
        assert_eq!(out["properties"]["fixed"]["const"], json!({"format": "date", "properties": {}}));
        assert!(out["$defs"]["day"]["pattern"].is_string());
        assert!(out["$defs"].get("additionalProperties").is_none());
        assert_eq!(out["x-guidance"], json_layout());
        assert_eq!(generation_schema(&json!(true))?, json!({"x-guidance": json_layout()}));
        // Left open: a required key not listed, and the branches of allOf.
        let unlisted = generation_schema(&json!({"properties": {"a": {}}, "required": ["b"]}))?;
        assert!(unlisted.get("additionalProperties").is_none());
        let merged = generation_schema(&json!({"allOf": [{"properties": {"a": {}}}, {"properties": {"b": {}}}]}))?;
        assert!(merged["allOf"][0].get("additionalProperties").is_none());
        Ok(())
    }
}
