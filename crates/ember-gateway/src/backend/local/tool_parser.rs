//! Turns the model's text into content and tool calls as it streams. A call
//! is `<tool_call>\n{"name": "f", "arguments": {...}}\n</tool_call>`; the
//! parser emits the call's id and name as soon as the name is complete, then
//! the arguments' JSON text as it arrives, character for character, so the
//! fragments of a call always concatenate to its final `arguments`. Tags
//! never reach the content. A non-streaming response feeds the whole text
//! through the same parser, so both paths give the same answer.

use serde_json::Value;

use crate::backend::local::tools::{CLOSE_TAG, OPEN_TAG};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolEvent {
    Content(String),
    /// A call opens: its index among this choice's calls, id and name.
    CallStart {
        index: usize,
        id: String,
        name: String,
    },
    /// More of the call's `arguments` JSON text.
    Arguments {
        index: usize,
        fragment: String,
    },
}

#[derive(Debug, Default)]
enum State {
    /// Free text; a partial `<tool_call>` at the end is held back.
    #[default]
    Text,
    /// After `<tool_call>`: reading `{"name": "...", "arguments": `.
    Header,
    /// Inside the arguments value.
    Arguments(JsonScan),
    /// After the arguments: the closing `}` and `</tool_call>`.
    Closing,
    /// A call that is not in the expected layout (an unconstrained model):
    /// kept whole and parsed as JSON at `</tool_call>`.
    Raw,
}

/// Where a JSON value's text ends: bracket depth outside strings.
#[derive(Debug, Default, Clone, Copy)]
struct JsonScan {
    depth: usize,
    in_string: bool,
    escaped: bool,
    started: bool,
}

impl JsonScan {
    /// Takes one character; true once the value is complete.
    fn push(&mut self, c: char) -> bool {
        if self.in_string {
            match (self.escaped, c) {
                (true, _) => self.escaped = false,
                (false, '\\') => self.escaped = true,
                (false, '"') => {
                    self.in_string = false;
                    return self.depth == 0;
                }
                _ => {}
            }
            return false;
        }
        match c {
            '"' => {
                self.in_string = true;
                self.started = true;
            }
            '{' | '[' => {
                self.depth += 1;
                self.started = true;
            }
            '}' | ']' => {
                self.depth = self.depth.saturating_sub(1);
                return self.depth == 0;
            }
            c if c.is_whitespace() && !self.started => {}
            // A bare number or literal ends at a delimiter, which the
            // caller sees as the start of the closing part.
            _ => self.started = true,
        }
        false
    }
}

/// A finished (or, at the end of output, unfinished) call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedCall {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

#[derive(Debug, Default)]
pub struct ToolCallParser {
    state: State,
    /// Text received and not yet classified.
    pending: String,
    calls: Vec<ParsedCall>,
}

impl ToolCallParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether at least one call was opened.
    pub fn has_calls(&self) -> bool {
        !self.calls.is_empty()
    }

    pub fn calls(&self) -> &[ParsedCall] {
        &self.calls
    }

    /// Takes the next piece of output text.
    pub fn push(&mut self, text: &str) -> Vec<ToolEvent> {
        self.pending.push_str(text);
        let mut events = Vec::new();
        while self.step(&mut events) {}
        events
    }

    /// The output ended: whatever was held back is content (a half tag
    /// was just text). An unfinished call stays as far as it got.
    pub fn finish(&mut self) -> Vec<ToolEvent> {
        let mut events = Vec::new();
        if matches!(self.state, State::Text) && !self.pending.is_empty() {
            let rest = std::mem::take(&mut self.pending);
            // Whitespace between or after calls is layout, not content.
            if !(self.has_calls() && rest.trim().is_empty()) {
                events.push(ToolEvent::Content(rest));
            }
        }
        events
    }

    /// One move of the state machine; false when it needs more text.
    fn step(&mut self, events: &mut Vec<ToolEvent>) -> bool {
        match self.state {
            State::Text => self.step_text(events),
            State::Header => self.step_header(events),
            State::Arguments(scan) => self.step_arguments(scan, events),
            State::Closing => self.step_closing(),
            State::Raw => self.step_raw(events),
        }
    }

    fn step_text(&mut self, events: &mut Vec<ToolEvent>) -> bool {
        if let Some(at) = self.pending.find(OPEN_TAG) {
            // Whitespace right before a call is layout, not content.
            let text = self.pending[..at].trim_end();
            if !text.is_empty() {
                events.push(ToolEvent::Content(text.to_owned()));
            }
            self.pending.drain(..at + OPEN_TAG.len());
            self.state = State::Header;
            return true;
        }
        // Hold back a possible start of the tag, and trailing whitespace
        // that may turn out to be the layout before a call.
        let keep_from = held_back_from(&self.pending);
        if keep_from > 0 {
            let text: String = self.pending.drain(..keep_from).collect();
            events.push(ToolEvent::Content(text));
        }
        false
    }

    fn step_header(&mut self, events: &mut Vec<ToolEvent>) -> bool {
        match parse_header(&self.pending) {
            Header::Incomplete => false,
            Header::Invalid => {
                self.state = State::Raw;
                true
            }
            Header::Done { name, consumed } => {
                self.open_call(name, events);
                self.pending.drain(..consumed);
                self.state = State::Arguments(JsonScan::default());
                true
            }
        }
    }

    fn step_arguments(&mut self, mut scan: JsonScan, events: &mut Vec<ToolEvent>) -> bool {
        let mut taken = 0;
        let mut complete = false;
        for (i, c) in self.pending.char_indices() {
            // A bare value (number, literal) ends where the object closes.
            if scan.started && scan.depth == 0 && !scan.in_string && (c == '}' || c == ',' || c.is_whitespace()) {
                complete = true;
                taken = i;
                break;
            }
            taken = i + c.len_utf8();
            if scan.push(c) {
                complete = true;
                break;
            }
        }
        let fragment: String = self.pending.drain(..taken).collect();
        // Whitespace before the value is not part of the arguments.
        let fragment = match self.calls.last() {
            Some(call) if call.arguments.is_empty() => fragment.trim_start().to_owned(),
            _ => fragment,
        };
        if !fragment.is_empty() {
            let index = self.calls.len() - 1;
            if let Some(call) = self.calls.last_mut() {
                call.arguments.push_str(&fragment);
            }
            events.push(ToolEvent::Arguments { index, fragment });
        }
        self.state = if complete {
            State::Closing
        } else {
            State::Arguments(scan)
        };
        complete
    }

    fn step_closing(&mut self) -> bool {
        match self.pending.find(CLOSE_TAG) {
            Some(at) => {
                self.pending.drain(..at + CLOSE_TAG.len());
                self.state = State::Text;
                true
            }
            None => false,
        }
    }

    fn step_raw(&mut self, events: &mut Vec<ToolEvent>) -> bool {
        let Some(at) = self.pending.find(CLOSE_TAG) else {
            return false;
        };
        let body: String = self.pending.drain(..at + CLOSE_TAG.len()).collect();
        let body = &body[..at];
        match serde_json::from_str::<Value>(body.trim()) {
            Ok(Value::Object(call)) if call.get("name").is_some_and(Value::is_string) => {
                let name = call["name"].as_str().unwrap_or_default().to_owned();
                let arguments = match call.get("arguments").or_else(|| call.get("parameters")) {
                    Some(Value::String(s)) => s.clone(),
                    Some(v) => ember_engine::chat_template::python_json(v),
                    None => "{}".to_owned(),
                };
                let index = self.open_call(name, events);
                events.push(ToolEvent::Arguments {
                    index,
                    fragment: arguments.clone(),
                });
                self.calls[index].arguments = arguments;
            }
            // Not a call after all: the text goes to the content as written.
            _ => events.push(ToolEvent::Content(format!("{OPEN_TAG}{body}{CLOSE_TAG}"))),
        }
        self.state = State::Text;
        true
    }
}

impl ToolCallParser {
    /// Starts call number `calls.len()` with a fresh id; returns its index.
    fn open_call(&mut self, name: String, events: &mut Vec<ToolEvent>) -> usize {
        let index = self.calls.len();
        let id = format!("call_{:024x}", rand::random::<u128>() >> 32);
        events.push(ToolEvent::CallStart {
            index,
            id: id.clone(),
            name: name.clone(),
        });
        self.calls.push(ParsedCall {
            id,
            name,
            arguments: String::new(),
        });
        index
    }
}

/// Where the text that must wait begins: a suffix that could start the
/// opening tag, or trailing whitespace (layout before a call).
fn held_back_from(text: &str) -> usize {
    let tag_start = (1..OPEN_TAG.len())
        .rev()
        .find(|&n| {
            text.len() >= n && text.is_char_boundary(text.len() - n) && OPEN_TAG.starts_with(&text[text.len() - n..])
        })
        .map_or(text.len(), |n| text.len() - n);
    text[..tag_start].trim_end().len()
}

enum Header {
    Incomplete,
    Invalid,
    Done { name: String, consumed: usize },
}

/// Matches `\s*{\s*"name"\s*:\s*"<name>"\s*,\s*"arguments"\s*:\s*`.
fn parse_header(text: &str) -> Header {
    let mut rest = text;
    let literal = |expected: &str, rest: &mut &str| -> Option<bool> {
        *rest = rest.trim_start();
        if rest.len() < expected.len() {
            return if expected.starts_with(*rest) { None } else { Some(false) };
        }
        if rest.starts_with(expected) {
            *rest = &rest[expected.len()..];
            Some(true)
        } else {
            Some(false)
        }
    };
    for expected in ["{", "\"name\"", ":"] {
        match literal(expected, &mut rest) {
            None => return Header::Incomplete,
            Some(false) => return Header::Invalid,
            Some(true) => {}
        }
    }
    rest = rest.trim_start();
    if rest.is_empty() {
        return Header::Incomplete;
    }
    if !rest.starts_with('"') {
        return Header::Invalid;
    }
    let mut scan = JsonScan::default();
    let Some(end) = rest.char_indices().find_map(|(i, c)| scan.push(c).then_some(i + 1)) else {
        return Header::Incomplete;
    };
    let Ok(name) = serde_json::from_str::<String>(&rest[..end]) else {
        return Header::Invalid;
    };
    rest = &rest[end..];
    for expected in [",", "\"arguments\"", ":"] {
        match literal(expected, &mut rest) {
            None => return Header::Incomplete,
            Some(false) => return Header::Invalid,
            Some(true) => {}
        }
    }
    Header::Done {
        name,
        consumed: text.len() - rest.len(),
    }
}

/// A whole output, parsed: the content (`None` when there is none beside
/// calls) and the calls.
pub fn parse_all(text: &str) -> (Option<String>, Vec<ParsedCall>) {
    let mut parser = ToolCallParser::new();
    let mut events = parser.push(text);
    events.extend(parser.finish());
    let content: String = events
        .into_iter()
        .filter_map(|e| match e {
            ToolEvent::Content(t) => Some(t),
            _ => None,
        })
        .collect();
    let calls = parser.calls().to_vec();
    let content = if content.is_empty() && !calls.is_empty() {
        None
    } else {
        Some(content)
    };
    (content, calls)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO_CALLS: &str = "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"note\": \"a } and \\\" and </tool_call>\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>";

    /// Feeds `text` in pieces of `size` characters; returns content, calls
    /// rebuilt from the events, and the parser's own calls.
    fn stream(text: &str, size: usize) -> (String, Vec<(String, String, String)>, Vec<ParsedCall>) {
        let mut parser = ToolCallParser::new();
        let chars: Vec<char> = text.chars().collect();
        let mut events = Vec::new();
        for piece in chars.chunks(size) {
            events.extend(parser.push(&piece.iter().collect::<String>()));
        }
        events.extend(parser.finish());
        let mut content = String::new();
        let mut calls: Vec<(String, String, String)> = Vec::new();
        for e in events {
            match e {
                ToolEvent::Content(t) => content.push_str(&t),
                ToolEvent::CallStart { index, id, name } => {
                    assert_eq!(index, calls.len());
                    calls.push((id, name, String::new()));
                }
                ToolEvent::Arguments { index, fragment } => calls[index].2.push_str(&fragment),
            }
        }
        (content, calls, parser.calls().to_vec())
    }

    #[test]
    fn every_chunking_gives_the_same_calls() {
        for size in 1..=TWO_CALLS.len() {
            let (content, calls, parsed) = stream(TWO_CALLS, size);
            assert_eq!(content, "Let me check.", "size {size}");
            assert_eq!(calls.len(), 2, "size {size}");
            assert_eq!(calls[0].1, "get_weather");
            assert_eq!(
                calls[0].2, "{\"city\": \"Paris\", \"note\": \"a } and \\\" and </tool_call>\"}",
                "size {size}"
            );
            assert_eq!(calls[1].1, "get_time");
            assert_eq!(calls[1].2, "{}");
            assert_eq!(parsed.len(), calls.len(), "size {size}");
            for ((id, name, arguments), p) in calls.iter().zip(&parsed) {
                assert_eq!((id, name, arguments), (&p.id, &p.name, &p.arguments));
                assert!(id.starts_with("call_") && id.len() == 29, "{id}");
                assert!(serde_json::from_str::<Value>(arguments).is_ok(), "{arguments}");
            }
        }
    }

    #[test]
    fn plain_text_passes_through_whole() {
        for text in [
            "Hello <b>world</b> < tool",
            "ends with <tool_ca",
            "a\n\n",
            "x <tool_cal y",
        ] {
            for size in 1..=text.len() {
                let (content, calls, _) = stream(text, size);
                assert_eq!(content, text, "size {size}");
                assert!(calls.is_empty());
            }
        }
    }

    #[test]
    fn whole_output_parse_matches() {
        let (content, calls) = parse_all(TWO_CALLS);
        assert_eq!(content.as_deref(), Some("Let me check."));
        // The same calls the streaming path rebuilds from its events.
        let (_, streamed, _) = stream(TWO_CALLS, 5);
        let names_and_arguments = |c: &ParsedCall| (c.name.clone(), c.arguments.clone());
        assert_eq!(
            calls.iter().map(names_and_arguments).collect::<Vec<_>>(),
            streamed.into_iter().map(|(_, name, arguments)| (name, arguments)).collect::<Vec<_>>()
        );
        assert_eq!(calls.len(), 2);
        let (content, calls) =
            parse_all("<tool_call>\n{\"name\": \"f\", \"arguments\": {\"x\": [1, 2]}}\n</tool_call>");
        assert_eq!(content, None);
        assert_eq!(calls[0].arguments, "{\"x\": [1, 2]}");
    }

    #[test]
    fn other_key_orders_and_bad_bodies() {
        let (content, calls) = parse_all("<tool_call>\n{\"arguments\": {\"x\": 1}, \"name\": \"f\"}\n</tool_call>");
        assert_eq!(content, None);
        assert_eq!(
            (calls[0].name.as_str(), calls[0].arguments.as_str()),
            ("f", "{\"x\": 1}")
        );
        let text = "<tool_call>\nnot json\n</tool_call>";
        let (content, calls) = parse_all(text);
        assert_eq!(content.as_deref(), Some(text));
        assert!(calls.is_empty());
    }

    #[test]
    fn cut_off_call_keeps_what_was_written() {
        let (content, calls, parsed) = stream("<tool_call>\n{\"name\": \"f\", \"arguments\": {\"city\": \"Pa", 3);
        assert_eq!(content, "");
        assert_eq!(calls.len(), 1);
        assert_eq!((calls[0].1.as_str(), calls[0].2.as_str()), ("f", "{\"city\": \"Pa"));
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].arguments, calls[0].2);
    }
}
