//! Fuzzes the streaming tool-call parser with arbitrary model output, cut
//! into deltas at arbitrary points. Besides never panicking:
//! - the events rebuild exactly the calls the parser keeps (each call's
//!   argument fragments concatenate to its final `arguments`);
//! - streaming and the one-shot `parse_all` give the same content and the
//!   same calls (names and arguments; ids are random).
//!
//! Input: byte 0 is the number of cuts (mod 16), then two bytes per cut
//! (an offset into the text, moved back to a character boundary), then the
//! text (invalid UTF-8 replaced, as a detokenizer would).
#![no_main]

use ember_gateway::fuzz_api::{ToolCallParser, ToolEvent, parse_all};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n % 16);
    if rest.len() < 2 * n {
        return;
    }
    let (cut_bytes, text) = rest.split_at(2 * n);
    let text = String::from_utf8_lossy(text).into_owned();
    let mut cuts: Vec<usize> = cut_bytes
        .chunks(2)
        .map(|c| {
            let mut at = usize::from(u16::from_le_bytes([c[0], c[1]])) % (text.len() + 1);
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            at
        })
        .collect();
    cuts.push(0);
    cuts.push(text.len());
    cuts.sort_unstable();
    cuts.dedup();

    let mut parser = ToolCallParser::new();
    let mut events = Vec::new();
    for piece in cuts.windows(2) {
        events.extend(parser.push(&text[piece[0]..piece[1]]));
    }
    events.extend(parser.finish());

    let mut content = String::new();
    let mut calls: Vec<(String, String, String)> = Vec::new();
    for event in events {
        match event {
            ToolEvent::Content(t) => content.push_str(&t),
            ToolEvent::CallStart { index, id, name } => {
                assert_eq!(index, calls.len(), "calls open in order");
                calls.push((id, name, String::new()));
            }
            ToolEvent::Arguments { index, fragment } => {
                assert!(index < calls.len(), "arguments for call {index} before it opened");
                assert_eq!(index, calls.len() - 1, "arguments for an earlier call");
                calls[index].2.push_str(&fragment);
            }
        }
    }
    let kept = parser.calls();
    assert_eq!(calls.len(), kept.len());
    for ((id, name, arguments), call) in calls.iter().zip(kept) {
        assert_eq!((id, name, arguments), (&call.id, &call.name, &call.arguments), "fragments != final call");
    }

    let (whole_content, whole_calls) = parse_all(&text);
    let streamed: Vec<(&str, &str)> = calls.iter().map(|(_, n, a)| (n.as_str(), a.as_str())).collect();
    let whole: Vec<(&str, &str)> = whole_calls.iter().map(|c| (c.name.as_str(), c.arguments.as_str())).collect();
    assert_eq!(streamed, whole, "streamed calls != parse_all calls; cuts {cuts:?}");
    assert_eq!(content, whole_content.unwrap_or_default(), "streamed content != parse_all content; cuts {cuts:?}");
});
