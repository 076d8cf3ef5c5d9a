//! Function calling in the hermes format Qwen3 was trained on: the request's
//! `tools`, `tool_choice` and `parallel_tool_calls`, checked and turned into
//! the llguidance grammar that constrains the answer, plus the rendering of
//! tools and tool turns for chat templates that ignore `tools`.
//!
//! The model writes a call as
//! `<tool_call>\n{"name": "f", "arguments": {...}}\n</tool_call>`, several
//! separated by `\n`, after optional free text (`auto` only).

use ember_engine::chat_template::python_json;
use ember_engine::structured::generation_schema;
use ember_engine::{Grammar, TextTokenizer};
use serde_json::{Map, Value, json};

use crate::error::ApiError;

pub const OPEN_TAG: &str = "<tool_call>";
pub const CLOSE_TAG: &str = "</tool_call>";

/// What `tool_choice` allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    /// No call can be written.
    None,
    /// Free text, or calls; a call once opened is constrained.
    Auto,
    /// One or more calls and nothing else.
    Required,
    /// Exactly one call of this function.
    Named(String),
}

/// One declared function.
#[derive(Debug, Clone, PartialEq)]
pub struct Function {
    pub name: String,
    /// The `parameters` schema; `{}` is the only argument when absent.
    pub parameters: Value,
}

/// A request's tools, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Tools {
    /// As the client sent them: this is what the chat template renders.
    pub definitions: Vec<Value>,
    pub functions: Vec<Function>,
    pub choice: ToolChoice,
    pub parallel: bool,
}

const TOOL_KEYS: [&str; 2] = ["type", "function"];
const FUNCTION_KEYS: [&str; 4] = ["name", "description", "parameters", "strict"];

impl Tools {
    /// Checks `tools`, `tool_choice` and `parallel_tool_calls`; `None` when
    /// the request declares no tools.
    pub fn from_request(
        tools: Option<&Value>,
        tool_choice: Option<&Value>,
        parallel: Option<&Value>,
    ) -> Result<Option<Self>, ApiError> {
        let parallel = match parallel {
            None | Some(Value::Null) => true,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(ApiError::invalid(
                    "parallel_tool_calls",
                    "`parallel_tool_calls` must be a boolean",
                ));
            }
        };
        let definitions = match tools {
            None | Some(Value::Null) => {
                return match tool_choice {
                    None | Some(Value::Null) => Ok(None),
                    Some(Value::String(s)) if s == "none" => Ok(None),
                    Some(_) => Err(ApiError::invalid("tool_choice", "`tool_choice` needs `tools`")),
                };
            }
            Some(Value::Array(list)) if list.is_empty() => {
                return Err(ApiError::invalid(
                    "tools",
                    "`tools` must not be empty; leave it out instead",
                ));
            }
            Some(Value::Array(list)) => list.clone(),
            Some(_) => return Err(ApiError::invalid("tools", "`tools` must be an array")),
        };
        let mut functions: Vec<Function> = Vec::with_capacity(definitions.len());
        for (i, tool) in definitions.iter().enumerate() {
            let function = check_tool(i, tool)?;
            if functions.iter().any(|f| f.name == function.name) {
                return Err(ApiError::invalid(
                    format!("tools[{i}].function.name"),
                    format!("two tools are named `{}`", function.name),
                ));
            }
            functions.push(function);
        }
        let choice = parse_choice(tool_choice, &functions)?;
        Ok(Some(Self {
            definitions,
            functions,
            choice,
            parallel,
        }))
    }

    /// The grammar of a whole answer. `content` is the grammar of free text
    /// (a JSON schema when `response_format` asks for one).
    pub fn grammar(&self, tags: &Tags, content: Option<&Value>) -> Result<Grammar, ApiError> {
        let mut lark = String::from("%llguidance {}\n");
        let text = match content {
            Some(schema) => format!(
                "%json {}",
                generation_schema(schema)
                    .map_err(|e| ApiError::invalid("response_format.json_schema.schema", e.to_string()))?
            ),
            None => "TEXT".to_owned(),
        };
        let call = "open \"\\n\" body \"\\n\" close";
        let calls = if self.parallel {
            format!("{call} (\"\\n\" {call})*")
        } else {
            call.to_owned()
        };
        let start = match &self.choice {
            ToolChoice::None => format!("start: content?\ncontent: {text}\n"),
            ToolChoice::Required => format!("start: {calls}\n"),
            ToolChoice::Named(name) => {
                let k = self.functions.iter().position(|f| &f.name == name).unwrap_or(0);
                format!("start: open \"\\n\" fn_{k} \"\\n\" close\n")
            }
            // A special-token tag cannot be written by the text lexeme, so
            // text can simply run until the model emits it. A textual tag
            // needs the lazy `opened` rule: it ends at the first `<tool_call>`,
            // which a greedy text lexeme would swallow.
            ToolChoice::Auto if tags.special || content.is_some() => {
                format!("start: content? | content? {calls}\ncontent: {text}\n")
            }
            ToolChoice::Auto => {
                let rest = if self.parallel {
                    format!(" (\"\\n\" {call})*")
                } else {
                    String::new()
                };
                format!(
                    "start: content? | opened \"\\n\" body \"\\n\" close{rest}\ncontent: TEXT\n\
                     opened[lazy]: /(.|\\n)*{}/\n",
                    regex_escape(OPEN_TAG)
                )
            }
        };
        lark.push_str(&start);
        let names: Vec<String> = (0..self.functions.len()).map(|k| format!("fn_{k}")).collect();
        lark.push_str(&format!("body: {}\n", names.join(" | ")));
        for (k, function) in self.functions.iter().enumerate() {
            let schema = call_schema(function)
                .map_err(|e| ApiError::invalid(format!("tools[{k}].function.parameters"), e.to_string()))?;
            lark.push_str(&format!("fn_{k}: %json {schema}\n"));
        }
        lark.push_str(&format!("open: {}\nclose: {}\n", tags.open, tags.close));
        // Free text never contains the opening tag: a call is written only
        // where the grammar allows one.
        lark.push_str(&format!(
            "TEXT: /(.|\\n)+/ & ~/(.|\\n)*{}(.|\\n)*/\n",
            regex_escape(OPEN_TAG)
        ));
        Ok(Grammar::Lark(lark))
    }

    /// The schema of one call's JSON, for error messages that name the tool
    /// whose `parameters` llguidance refused.
    pub fn function_grammar(function: &Function) -> Grammar {
        Grammar::JsonSchema(call_object(function))
    }
}

/// `{"name": <const>, "arguments": <parameters>}`, keys in the order the
/// model writes them.
fn call_object(function: &Function) -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"const": function.name},
            "arguments": function.parameters,
        },
        "required": ["name", "arguments"],
        "additionalProperties": false,
    })
}

/// One call's schema as generated against.
fn call_schema(function: &Function) -> Result<Value, ember_engine::EngineError> {
    generation_schema(&call_object(function))
}

/// Escapes regex metacharacters (`\\<` would be a word boundary, so only
/// these are escaped).
fn regex_escape(text: &str) -> String {
    text.chars()
        .map(|c| {
            if "\\.+*?()|[]{}^$#&-~/".contains(c) {
                format!("\\{c}")
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// The call tags as grammar terminals: token ids where the vocabulary has the
/// tag as one token (Qwen3's `<tool_call>` is id 151657), text otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tags {
    pub open: String,
    pub close: String,
    pub special: bool,
}

impl Tags {
    pub fn for_tokenizer(tokenizer: &TextTokenizer) -> Self {
        let single = |tag: &str| {
            let id = tokenizer.token_id(tag)?;
            (tokenizer.encode(tag, false).ok()? == [id]).then_some(id)
        };
        match (single(OPEN_TAG), single(CLOSE_TAG)) {
            (Some(open), Some(close)) => Self {
                open: format!("<[{open}]>"),
                close: format!("<[{close}]>"),
                special: true,
            },
            _ => Self {
                open: format!("{OPEN_TAG:?}"),
                close: format!("{CLOSE_TAG:?}"),
                special: false,
            },
        }
    }
}

fn check_tool(i: usize, tool: &Value) -> Result<Function, ApiError> {
    let at = |path: &str| format!("tools[{i}]{path}");
    let object = tool
        .as_object()
        .ok_or_else(|| ApiError::invalid(at(""), "a tool must be an object"))?;
    if let Some(key) = object.keys().find(|k| !TOOL_KEYS.contains(&k.as_str())) {
        return Err(ApiError::invalid(
            at(&format!(".{key}")),
            format!("unknown field `{key}`"),
        ));
    }
    if object.get("type").and_then(Value::as_str) != Some("function") {
        return Err(ApiError::invalid(at(".type"), "the only tool type is `function`"));
    }
    let function = object
        .get("function")
        .and_then(Value::as_object)
        .ok_or_else(|| ApiError::invalid(at(".function"), "`function` must be an object"))?;
    if let Some(key) = function.keys().find(|k| !FUNCTION_KEYS.contains(&k.as_str())) {
        return Err(ApiError::invalid(
            at(&format!(".function.{key}")),
            format!("unknown field `{key}`"),
        ));
    }
    let name = function
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::invalid(at(".function.name"), "`name` must be a string"))?;
    let valid_name = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.');
    if !valid_name {
        return Err(ApiError::invalid(
            at(".function.name"),
            format!("`{name}`: a function name is 1 to 64 of a-z, A-Z, 0-9, `_`, `-` and `.`"),
        ));
    }
    if let Some(d) = function.get("description")
        && !d.is_string()
    {
        return Err(ApiError::invalid(
            at(".function.description"),
            "`description` must be a string",
        ));
    }
    if let Some(s) = function.get("strict")
        && !s.is_boolean()
        && !s.is_null()
    {
        return Err(ApiError::invalid(at(".function.strict"), "`strict` must be a boolean"));
    }
    let parameters = match function.get("parameters") {
        // No parameters: the only arguments are `{}`.
        None | Some(Value::Null) => json!({"type": "object", "properties": {}, "additionalProperties": false}),
        Some(p @ Value::Object(_)) => p.clone(),
        Some(_) => {
            return Err(ApiError::invalid(
                at(".function.parameters"),
                "`parameters` must be a JSON Schema object",
            ));
        }
    };
    Ok(Function {
        name: name.to_owned(),
        parameters,
    })
}

fn parse_choice(choice: Option<&Value>, functions: &[Function]) -> Result<ToolChoice, ApiError> {
    let named = |choice: &Map<String, Value>| -> Option<String> {
        if choice.get("type")?.as_str()? != "function" {
            return None;
        }
        Some(choice.get("function")?.get("name")?.as_str()?.to_owned())
    };
    match choice {
        None | Some(Value::Null) => Ok(ToolChoice::Auto),
        Some(Value::String(s)) => match s.as_str() {
            "none" => Ok(ToolChoice::None),
            "auto" => Ok(ToolChoice::Auto),
            "required" => Ok(ToolChoice::Required),
            other => Err(ApiError::invalid(
                "tool_choice",
                format!("`{other}`: expected `none`, `auto`, `required` or {{\"type\": \"function\", ...}}"),
            )),
        },
        Some(Value::Object(o)) => {
            let name = named(o).ok_or_else(|| {
                ApiError::invalid(
                    "tool_choice",
                    "a named tool choice is {\"type\": \"function\", \"function\": {\"name\": ...}}",
                )
            })?;
            if !functions.iter().any(|f| f.name == name) {
                return Err(ApiError::invalid(
                    "tool_choice.function.name",
                    format!("`{name}` is not one of the declared tools"),
                ));
            }
            Ok(ToolChoice::Named(name))
        }
        Some(_) => Err(ApiError::invalid(
            "tool_choice",
            "`tool_choice` must be a string or an object",
        )),
    }
}

/// For a template that never reads `tools` (SmolLM2's, for one): the
/// messages rewritten the way Qwen3's template writes them, so any ChatML
/// model sees the hermes layout. The tool signatures join the system turn;
/// assistant calls become `<tool_call>` blocks; tool results become
/// `<tool_response>` blocks in a user turn.
pub fn hermes_messages(messages: &[Value], tools: Option<&Tools>) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::with_capacity(messages.len() + 1);
    let mut rest = messages;
    if let Some(tools) = tools {
        let mut system = String::new();
        if let Some(first) = messages.first().filter(|m| m["role"] == "system") {
            system.push_str(first["content"].as_str().unwrap_or_default());
            system.push_str("\n\n");
            rest = &messages[1..];
        }
        system.push_str(&tools_prompt(&tools.definitions));
        out.push(json!({"role": "system", "content": system}));
    }
    // Consecutive tool results share one user turn, as in Qwen3's template.
    let mut after_tool = false;
    for message in rest {
        let role = message["role"].as_str().unwrap_or_default();
        let was_after_tool = std::mem::replace(&mut after_tool, role == "tool");
        match role {
            "assistant" if message.get("tool_calls").is_some_and(|c| !c.is_null()) => {
                let mut content = message["content"].as_str().unwrap_or_default().to_owned();
                for call in message["tool_calls"].as_array().into_iter().flatten() {
                    if !content.is_empty() {
                        content.push('\n');
                    }
                    content.push_str(&call_text(call));
                }
                out.push(json!({"role": "assistant", "content": content}));
            }
            "tool" => {
                let block = format!(
                    "<tool_response>\n{}\n</tool_response>",
                    message["content"].as_str().unwrap_or_default()
                );
                match out.last_mut() {
                    Some(last) if was_after_tool => {
                        let merged = format!("{}\n{block}", last["content"].as_str().unwrap_or_default());
                        last["content"] = json!(merged);
                    }
                    _ => out.push(json!({"role": "user", "content": block})),
                }
            }
            _ => out.push(message.clone()),
        }
    }
    out
}

/// Qwen3's system-turn text for tools, word for word.
fn tools_prompt(definitions: &[Value]) -> String {
    let mut text = String::from(
        "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n\
         You are provided with function signatures within <tools></tools> XML tags:\n<tools>",
    );
    for tool in definitions {
        text.push('\n');
        text.push_str(&python_json(tool));
    }
    text.push_str(
        "\n</tools>\n\nFor each function call, return a json object with function name and arguments within \
         <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>",
    );
    text
}

/// One call as the model writes it; `arguments` as the client sent them (a
/// JSON string is written verbatim, as Qwen3's template does).
fn call_text(call: &Value) -> String {
    let function = call.get("function").unwrap_or(call);
    let name = function["name"].as_str().unwrap_or_default();
    let arguments = match &function["arguments"] {
        Value::String(s) => s.clone(),
        other => python_json(other),
    };
    format!("{OPEN_TAG}\n{{\"name\": \"{name}\", \"arguments\": {arguments}}}\n{CLOSE_TAG}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use ember_engine::{GrammarCompiler, LogitsProcessorFactory};

    /// The tiny fixture's tokenizer, with `<tool_call>`/`</tool_call>` as
    /// single tokens (Qwen3's layout) or as plain text (SmolLM2's).
    fn tokenizer(tool_tokens: bool) -> TextTokenizer {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/qwen3-tiny/tokenizer.json");
        let mut json: Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap_or_default()).unwrap_or_default();
        if tool_tokens && let Some(added) = json["added_tokens"].as_array_mut() {
            for (id, content) in [(392, OPEN_TAG), (393, CLOSE_TAG)] {
                added.push(
                    json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                        "rstrip": false, "normalized": false, "special": false}),
                );
            }
        }
        let inner = tokenizers::Tokenizer::from_bytes(json.to_string().as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        TextTokenizer::from_tokenizer(inner)
    }

    /// Feeds `pieces` to a fresh matcher of the grammar; the first piece the
    /// grammar refuses, or `None`. Each piece is tokenized separately, so a
    /// tag token stays whole.
    fn refused(tools: &Tools, tool_tokens: bool, pieces: &[&str]) -> Option<String> {
        let tokenizer = tokenizer(tool_tokens);
        // Without an end token `<end>` would be fed as nothing, and every
        // answer would look accepted.
        let end = vec![tokenizer.token_id("<|im_end|>").unwrap_or_else(|| panic!("no <|im_end|> in the fixture"))];
        let compiler = GrammarCompiler::new(&tokenizer, 512, &end).unwrap_or_else(|e| panic!("{e}"));
        let grammar = tools.grammar(&Tags::for_tokenizer(&tokenizer), None).unwrap_or_else(|e| panic!("{e:?}"));
        let compiled = compiler
            .compile(&grammar)
            .unwrap_or_else(|e| panic!("{e}: {grammar:?}"));
        let mut matcher = compiled.create();
        // When the grammar has nothing left to write, the engine stops the
        // sequence: that is the end.
        let mut complete = false;
        for piece in pieces {
            let ids = if *piece == "<end>" {
                end.clone()
            } else {
                tokenizer.encode(piece, false).unwrap_or_else(|e| panic!("{piece}: {e}"))
            };
            assert!(!ids.is_empty(), "{piece:?} encodes to no token, so nothing would be checked");
            for id in ids {
                if complete && *piece == "<end>" {
                    return None;
                }
                let mut logits = vec![0.0; 512];
                if matcher.process(&mut logits).is_err() || !logits[id as usize].is_finite() {
                    return Some((*piece).to_owned());
                }
                match matcher.accept(id) {
                    Ok(done) => complete = done,
                    Err(_) => return Some((*piece).to_owned()),
                }
            }
        }
        None
    }

    fn tools_with(choice: Value, parallel: bool) -> Tools {
        let tools = json!([
            {"type": "function", "function": {"name": "get_weather", "parameters": {
                "type": "object", "properties": {"city": {"enum": ["Paris", "Rome"]}}, "required": ["city"],
                "additionalProperties": false}}},
            {"type": "function", "function": {"name": "get_time"}},
        ]);
        Tools::from_request(Some(&tools), Some(&choice), Some(&json!(parallel)))
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("tools"))
    }

    const CALL: &str = "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Rome\"}}";

    #[test]
    fn auto_allows_text_or_calls_and_constrains_an_opened_call() {
        for special in [false, true] {
            let auto = tools_with(json!("auto"), true);
            assert_eq!(
                refused(&auto, special, &["Just text, no call.", "<end>"]),
                None,
                "special {special}"
            );
            assert_eq!(
                refused(
                    &auto,
                    special,
                    &["Checking.\n", OPEN_TAG, "\n", CALL, "\n", CLOSE_TAG, "<end>"]
                ),
                None
            );
            assert_eq!(
                refused(
                    &auto,
                    special,
                    &[
                        OPEN_TAG,
                        "\n",
                        CALL,
                        "\n",
                        CLOSE_TAG,
                        "\n",
                        OPEN_TAG,
                        "\n{\"name\": \"get_time\", \"arguments\": {}}",
                        "\n",
                        CLOSE_TAG,
                        "<end>"
                    ]
                ),
                None
            );
            // Once opened, only a declared tool with valid arguments.
            let bad_city = "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}";
            assert!(refused(&auto, special, &["Hm. ", OPEN_TAG, "\n", bad_city]).is_some());
            assert!(refused(&auto, special, &[OPEN_TAG, "\n{\"name\": \"launch\""]).is_some());
            // A call must close before the answer ends.
            assert_eq!(
                refused(&auto, special, &[OPEN_TAG, "\n", CALL, "<end>"]),
                Some("<end>".into())
            );
        }
    }

    #[test]
    fn none_required_named_and_parallel() {
        for special in [false, true] {
            let none = tools_with(json!("none"), true);
            assert_eq!(refused(&none, special, &["Plain answer.", "<end>"]), None);
            assert_eq!(refused(&none, special, &["Plain ", OPEN_TAG]), Some(OPEN_TAG.into()));
            let required = tools_with(json!("required"), true);
            assert_eq!(refused(&required, special, &["Text first"]), Some("Text first".into()));
            assert_eq!(refused(&required, special, &["<end>"]), Some("<end>".into()));
            assert_eq!(
                refused(&required, special, &[OPEN_TAG, "\n", CALL, "\n", CLOSE_TAG, "<end>"]),
                None
            );
            let named = tools_with(json!({"type": "function", "function": {"name": "get_time"}}), true);
            assert!(refused(&named, special, &[OPEN_TAG, "\n", CALL]).is_some());
            assert_eq!(
                refused(
                    &named,
                    special,
                    &[
                        OPEN_TAG,
                        "\n{\"name\": \"get_time\", \"arguments\": {}}\n",
                        CLOSE_TAG,
                        "<end>"
                    ]
                ),
                None,
                "special {special}"
            );
            let single = tools_with(json!("required"), false);
            let two = [OPEN_TAG, "\n", CALL, "\n", CLOSE_TAG, "\n", OPEN_TAG];
            assert!(refused(&single, special, &two).is_some());
            assert_eq!(refused(&tools_with(json!("required"), true), special, &two), None);
        }
    }

    fn weather() -> Value {
        json!([{"type": "function", "function": {"name": "get_weather", "parameters": {
            "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}])
    }

    #[test]
    fn tool_choice_forms() -> Result<(), ApiError> {
        let tools = weather();
        let choice = |c: Value| Tools::from_request(Some(&tools), Some(&c), None).map(|t| t.map(|t| t.choice));
        assert_eq!(choice(json!("auto"))?, Some(ToolChoice::Auto));
        assert_eq!(choice(json!("none"))?, Some(ToolChoice::None));
        assert_eq!(choice(json!("required"))?, Some(ToolChoice::Required));
        assert_eq!(
            choice(json!({"type": "function", "function": {"name": "get_weather"}}))?,
            Some(ToolChoice::Named("get_weather".into()))
        );
        let unknown = choice(json!({"type": "function", "function": {"name": "nope"}}));
        assert_eq!(
            unknown.err().and_then(|e| e.param),
            Some("tool_choice.function.name".into())
        );
        assert!(choice(json!("sometimes")).is_err());
        Ok(())
    }

    #[test]
    fn bad_tools_name_the_field() {
        let param = |tools: Value| {
            Tools::from_request(Some(&tools), None, None)
                .err()
                .and_then(|e| e.param)
        };
        assert_eq!(param(json!([])), Some("tools".into()));
        assert_eq!(param(json!([{"type": "retrieval"}])), Some("tools[0].type".into()));
        assert_eq!(
            param(json!([{"type": "function", "function": {"name": "a b"}}])),
            Some("tools[0].function.name".into())
        );
        assert_eq!(
            param(json!([{"type": "function", "function": {"name": "f", "parameters": 3}}])),
            Some("tools[0].function.parameters".into())
        );
        assert_eq!(
            param(json!([{"type": "function", "function": {"name": "f", "colour": "red"}}])),
            Some("tools[0].function.colour".into())
        );
        let twice =
            json!([{"type": "function", "function": {"name": "f"}}, {"type": "function", "function": {"name": "f"}}]);
        assert_eq!(param(twice), Some("tools[1].function.name".into()));
        let orphan = Tools::from_request(None, Some(&json!("required")), None);
        assert_eq!(orphan.err().and_then(|e| e.param), Some("tool_choice".into()));
    }

    #[test]
    fn hermes_rewrite_matches_qwen3_layout() {
        let tools = Tools::from_request(Some(&weather()), None, None)
            .unwrap_or_else(|e| panic!("{e:?}"))
            .unwrap_or_else(|| panic!("tools were declared"));
        let messages = vec![
            json!({"role": "user", "content": "Weather in Paris and Rome?"}),
            json!({"role": "assistant", "content": "", "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}},
                {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Rome"}}}]}),
            json!({"role": "tool", "tool_call_id": "call_1", "content": "18C"}),
            json!({"role": "tool", "tool_call_id": "call_2", "content": "24C"}),
        ];
        let out = hermes_messages(&messages, Some(&tools));
        assert_eq!(out.len(), 4);
        assert_eq!(out[0]["role"], "system");
        let system = out[0]["content"].as_str().unwrap_or_default();
        assert!(
            system.contains("<tools>\n{\"type\": \"function\", \"function\": {\"name\": \"get_weather\""),
            "{system}"
        );
        assert_eq!(
            out[2]["content"],
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n\
             <tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Rome\"}}\n</tool_call>"
        );
        assert_eq!(
            out[3],
            json!({"role": "user", "content": "<tool_response>\n18C\n</tool_response>\n<tool_response>\n24C\n</tool_response>"})
        );
    }
}
