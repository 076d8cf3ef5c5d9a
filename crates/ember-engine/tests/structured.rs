//! Constrained decoding on the tiny random fixtures: whatever the weights,
//! sampled output parses as JSON and keeps the schema's shape; unsupported
//! or hostile schemas are refused with a message that names the problem; a
//! constrained request changes nothing for the unconstrained ones beside it.

use std::path::PathBuf;

use ember_engine::{
    Completion, EngineConfig, EngineHandle, FinishReason, GenerationRequest, Grammar, KvCacheMemory, LoadedModel,
    SamplingParams,
};
use ember_model::{DType, Device};
use serde_json::{Value, json};

type TestResult = anyhow::Result<()>;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

/// The fixture with a 4096-token window: a random model picks `"` about once
/// in 400 tokens inside a string, so free-form JSON runs long.
fn start(name: &str) -> anyhow::Result<EngineHandle> {
    let dir = tempfile::tempdir()?;
    for entry in std::fs::read_dir(fixture(name))? {
        let entry = entry?;
        std::fs::copy(entry.path(), dir.path().join(entry.file_name()))?;
    }
    let config_path = dir.path().join("config.json");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&config_path)?)?;
    config["max_position_embeddings"] = json!(4096);
    std::fs::write(&config_path, config.to_string())?;
    let loaded = LoadedModel::open(dir.path(), &Device::flex(), DType::F32)?;
    let config = EngineConfig {
        kv_cache_memory: KvCacheMemory::Tokens(8192),
        ..EngineConfig::default()
    };
    Ok(EngineHandle::start(loaded, config)?)
}

fn constrained(engine: &EngineHandle, grammar: &Grammar, n: usize, seed: u64) -> anyhow::Result<Completion> {
    let compiled = engine.model().grammar_compiler()?.compile(grammar)?;
    let prompt = engine
        .model()
        .tokenizer
        .as_ref()
        .map_or(Ok(vec![1, 2, 3]), |t| t.encode("Answer in JSON:", false))?;
    let request = GenerationRequest {
        max_tokens: Some(4000),
        sampling: SamplingParams {
            temperature: 1.0,
            seed: Some(seed),
            ..SamplingParams::default()
        },
        n,
        stop_token_ids: engine.model().chat_stop_ids(),
        logits_processor: Some(compiled.into_factory()),
        ..GenerationRequest::new(prompt)
    };
    let completion = engine.submit(request)?.collect_blocking();
    // Every choice is then checked by `outputs`; none may be missing.
    assert_eq!(completion.choices.len(), n, "{completion:?}");
    Ok(completion)
}

fn outputs(completion: &Completion) -> anyhow::Result<Vec<Value>> {
    completion
        .choices
        .iter()
        .map(|c| {
            assert_eq!(c.finish_reason, Some(FinishReason::Stop), "unfinished: {:?}", c.text);
            serde_json::from_str(&c.text).map_err(|e| anyhow::anyhow!("{e}: {:?}", c.text))
        })
        .collect()
}

#[test]
fn sampled_output_follows_the_schema() -> TestResult {
    let engine = start("qwen3-tiny")?;
    let schema = json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 12},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "minItems": 1, "maxItems": 3},
            "kind": {"const": "person"},
        },
        "required": ["name", "age", "tags", "kind"],
        "additionalProperties": false,
    });
    let completion = constrained(&engine, &Grammar::JsonSchema(schema), 4, 7)?;
    for value in outputs(&completion)? {
        let object = value
            .as_object()
            .ok_or_else(|| anyhow::anyhow!("not an object: {value}"))?;
        assert_eq!(object.len(), 4, "{value}");
        assert!(
            value["name"].as_str().is_some_and(|s| s.chars().count() <= 12),
            "{value}"
        );
        assert!(value["age"].as_i64().is_some_and(|a| (0..=120).contains(&a)), "{value}");
        let tags = value["tags"]
            .as_array()
            .ok_or_else(|| anyhow::anyhow!("tags: {value}"))?;
        assert!((1..=3).contains(&tags.len()), "{value}");
        assert!(
            tags.iter()
                .all(|t| ["a", "b", "c"].contains(&t.as_str().unwrap_or_default())),
            "{value}"
        );
        assert_eq!(value["kind"], "person");
    }
    Ok(())
}

#[test]
fn any_json_object() -> TestResult {
    let engine = start("qwen3-tiny")?;
    let completion = constrained(&engine, &Grammar::JsonSchema(json!({"type": "object"})), 4, 1)?;
    for value in outputs(&completion)? {
        assert!(value.is_object(), "{value}");
    }
    Ok(())
}

#[test]
fn unsupported_and_hostile_schemas_are_refused_by_name() -> TestResult {
    let engine = start("qwen3-tiny")?;
    let compiler = engine.model().grammar_compiler()?;
    let refused = |schema: Value| match compiler.compile(&Grammar::JsonSchema(schema)) {
        Ok(_) => String::new(),
        Err(e) => e.to_string(),
    };
    for keyword in ["uniqueItems", "not", "contains", "propertyNames", "dependentRequired"] {
        let schema = match keyword {
            "uniqueItems" => json!({"type": "array", "uniqueItems": true}),
            "not" => json!({"not": {"type": "string"}}),
            "contains" => json!({"type": "array", "contains": {"type": "integer"}}),
            "propertyNames" => json!({"type": "object", "propertyNames": {"pattern": "^a"}}),
            _ => json!({"type": "object", "dependentRequired": {"a": ["b"]}}),
        };
        let message = refused(schema);
        assert!(message.contains(keyword), "{keyword}: {message}");
    }
    assert!(refused(json!({"$ref": "https://example.com/s.json"})).contains("https://example.com/s.json"));
    assert!(refused(json!({"type": "strin"})).contains("strin"));
    let regex = refused(json!({"type": "string", "pattern": "(a|b)*c\\1"}));
    assert!(regex.contains("regex") && regex.len() > "invalid grammar: regex parse error:".len(), "{regex}");
    // Deep nesting stops before the compiler recurses; a huge enum hits
    // llguidance's lexer budget instead of running on.
    let mut deep = json!({"type": "string"});
    for _ in 0..40 {
        deep = json!({"type": "object", "properties": {"a": deep}});
    }
    assert!(refused(deep).contains("levels deep"));
    let huge: Vec<String> = (0..200_000).map(|i| format!("value-{i}")).collect();
    assert!(refused(json!({"enum": huge})).contains("too big"));
    Ok(())
}

#[test]
fn constrained_and_free_requests_share_a_batch() -> TestResult {
    let engine = start("qwen3-tiny")?;
    let free = |seed: u64| GenerationRequest {
        max_tokens: Some(24),
        sampling: SamplingParams {
            temperature: 1.0,
            seed: Some(seed),
            ..SamplingParams::default()
        },
        ignore_eos: true,
        ..GenerationRequest::new(vec![5, 6, 7, 8])
    };
    let alone: Vec<Completion> = (0..3)
        .map(|s| engine.submit(free(s)).map(|r| r.collect_blocking()))
        .collect::<Result<_, _>>()?;
    let compiled = engine
        .model()
        .grammar_compiler()?
        .compile(&Grammar::JsonSchema(json!({"enum": ["yes", "no"]})))?;
    let factory = compiled.into_factory();
    let mut streams = Vec::new();
    for s in 0..3 {
        streams.push(engine.submit(free(s))?);
        streams.push(engine.submit(GenerationRequest {
            logits_processor: Some(factory.clone()),
            stop_token_ids: engine.model().chat_stop_ids(),
            ..free(s)
        })?);
    }
    let results: Vec<Completion> = streams.into_iter().map(|s| s.collect_blocking()).collect();
    assert_eq!(results.len(), 6);
    for (s, pair) in results.chunks(2).enumerate() {
        assert_eq!(alone[s].choices[0].token_ids.len(), 24, "free request {s} ran to max_tokens");
        assert_eq!(
            pair[0].choices[0].token_ids, alone[s].choices[0].token_ids,
            "free request {s} changed"
        );
        let answer: Value = serde_json::from_str(&pair[1].choices[0].text)?;
        assert!(answer == "yes" || answer == "no", "{answer}");
        assert_eq!(pair[1].choices[0].finish_reason, Some(FinishReason::Stop));
    }
    Ok(())
}
