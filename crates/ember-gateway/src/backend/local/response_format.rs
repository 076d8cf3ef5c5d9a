//! `response_format`: `text`, `json_object` (any JSON object) or
//! `json_schema` (`{"name", "schema", "strict", "description"}`), turned into
//! the JSON Schema the answer is constrained to.

use serde_json::{Value, json};

use crate::error::ApiError;

const JSON_SCHEMA_KEYS: [&str; 4] = ["name", "schema", "strict", "description"];

/// The schema the content must follow; `None` for free text.
pub fn content_schema(format: Option<&Value>) -> Result<Option<Value>, ApiError> {
    let Some(format) = format.filter(|f| !f.is_null()) else {
        return Ok(None);
    };
    let object = format
        .as_object()
        .ok_or_else(|| ApiError::invalid("response_format", "`response_format` must be an object"))?;
    let kind = object.get("type").and_then(Value::as_str).unwrap_or_default();
    let allowed: &[&str] = match kind {
        "text" | "json_object" => &["type"],
        "json_schema" => &["type", "json_schema"],
        other => {
            return Err(ApiError::invalid(
                "response_format.type",
                format!("`{other}`: expected `text`, `json_object` or `json_schema`"),
            ));
        }
    };
    if let Some(key) = object.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(ApiError::invalid(
            format!("response_format.{key}"),
            format!("unknown field `{key}`"),
        ));
    }
    match kind {
        "text" => Ok(None),
        "json_object" => Ok(Some(json!({"type": "object"}))),
        _ => {
            let spec = object.get("json_schema").and_then(Value::as_object).ok_or_else(|| {
                ApiError::invalid(
                    "response_format.json_schema",
                    "`json_schema` must be an object with `name` and `schema`",
                )
            })?;
            if let Some(key) = spec.keys().find(|k| !JSON_SCHEMA_KEYS.contains(&k.as_str())) {
                return Err(ApiError::invalid(
                    format!("response_format.json_schema.{key}"),
                    format!("unknown field `{key}`"),
                ));
            }
            let name = spec.get("name").and_then(Value::as_str).unwrap_or_default();
            let valid_name = !name.is_empty()
                && name.len() <= 64
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !valid_name {
                return Err(ApiError::invalid(
                    "response_format.json_schema.name",
                    "`name` is required: 1 to 64 of a-z, A-Z, 0-9, `_` and `-`",
                ));
            }
            if spec.get("strict").is_some_and(|s| !s.is_boolean() && !s.is_null()) {
                return Err(ApiError::invalid(
                    "response_format.json_schema.strict",
                    "`strict` must be a boolean",
                ));
            }
            match spec.get("schema") {
                // No schema: any JSON value.
                None | Some(Value::Null) => Ok(Some(json!({}))),
                Some(schema @ (Value::Object(_) | Value::Bool(true))) => Ok(Some(schema.clone())),
                Some(_) => Err(ApiError::invalid(
                    "response_format.json_schema.schema",
                    "`schema` must be a JSON Schema object",
                )),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() -> Result<(), ApiError> {
        assert_eq!(content_schema(None)?, None);
        assert_eq!(content_schema(Some(&json!({"type": "text"})))?, None);
        assert_eq!(
            content_schema(Some(&json!({"type": "json_object"})))?,
            Some(json!({"type": "object"}))
        );
        let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
        let format = json!({"type": "json_schema", "json_schema": {"name": "thing", "schema": schema, "strict": true}});
        assert_eq!(content_schema(Some(&format))?, Some(schema));
        Ok(())
    }

    #[test]
    fn mistakes_name_the_field() {
        let param = |f: Value| content_schema(Some(&f)).err().and_then(|e| e.param);
        assert_eq!(param(json!({"type": "yaml"})), Some("response_format.type".into()));
        assert_eq!(
            param(json!({"type": "json_schema"})),
            Some("response_format.json_schema".into())
        );
        assert_eq!(
            param(json!({"type": "json_schema", "json_schema": {"schema": {}}})),
            Some("response_format.json_schema.name".into())
        );
        assert_eq!(
            param(json!({"type": "json_schema", "json_schema": {"name": "x", "schema": 5}})),
            Some("response_format.json_schema.schema".into())
        );
        assert_eq!(
            param(json!({"type": "json_schema", "json_schema": {"name": "x", "shema": {}}})),
            Some("response_format.json_schema.shema".into())
        );
    }
}
