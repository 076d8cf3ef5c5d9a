//! `[IMPORTANT]` ... `[/IMPORTANT]`: text that every later query sees under
//! sparse attention (the layout's global spans), whatever the window.
//!
//! Markers are paired within one text (a message's content or a completions
//! prompt), so a span never runs across a chat template's turn boundaries.
//! Paired markers become two Unicode noncharacters (U+FDD0, U+FDD1: reserved
//! for internal use, never meant to appear in interchanged text) that pass
//! unchanged through template rendering; after rendering they are taken out
//! again, leaving the spans' byte ranges, which the tokenizer's offsets turn
//! into token positions. Markers without a partner stay as plain text.

use std::borrow::Cow;
use std::ops::Range;

pub const OPEN_MARKER: &str = "[IMPORTANT]";
pub const CLOSE_MARKER: &str = "[/IMPORTANT]";
const OPEN: char = '\u{FDD0}';
const CLOSE: char = '\u{FDD1}';

/// How `[IMPORTANT]` markers are treated when attention is sparse.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MarkerPolicy {
    /// Keep the marker text in the prompt (inside its span) instead of
    /// removing it before tokenization.
    pub keep_markers: bool,
}

/// `text` with each paired marker replaced by its sentinel. Sentinels
/// already in the text become U+FFFD, so a client cannot forge a span.
pub fn mark(text: &str) -> Cow<'_, str> {
    if !text.contains(OPEN_MARKER) && !text.contains([OPEN, CLOSE]) {
        return Cow::Borrowed(text);
    }
    let clean = text.replace([OPEN, CLOSE], "\u{FFFD}");
    let mut out = String::with_capacity(clean.len());
    let mut rest = clean.as_str();
    while let Some(open) = rest.find(OPEN_MARKER) {
        let inner = &rest[open + OPEN_MARKER.len()..];
        let Some(close) = inner.find(CLOSE_MARKER) else { break };
        out.push_str(&rest[..open]);
        out.push(OPEN);
        out.push_str(&inner[..close]);
        out.push(CLOSE);
        rest = &inner[close + CLOSE_MARKER.len()..];
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// Takes the sentinels out of a (rendered) prompt: the text to tokenize and
/// the byte ranges of its spans in that text. With `keep_markers` the
/// sentinels turn back into the marker text, which the span then includes.
pub fn take_spans(text: &str, keep_markers: bool) -> (String, Vec<Range<usize>>) {
    let mut out = String::with_capacity(text.len());
    let mut spans = Vec::new();
    let mut start = None;
    for c in text.chars() {
        match c {
            OPEN => {
                start = Some(out.len());
                if keep_markers {
                    out.push_str(OPEN_MARKER);
                }
            }
            CLOSE => {
                if keep_markers {
                    out.push_str(CLOSE_MARKER);
                }
                if let Some(s) = start.take()
                    && out.len() > s
                {
                    spans.push(s..out.len());
                }
            }
            c => out.push(c),
        }
    }
    (out, spans)
}

/// The token positions whose text overlaps a byte span, as sorted,
/// disjoint ranges; `offsets` are each token's byte range in the text.
pub fn token_spans(offsets: &[(usize, usize)], byte_spans: &[Range<usize>]) -> Vec<Range<usize>> {
    let mut out: Vec<Range<usize>> = Vec::new();
    for (i, &(start, end)) in offsets.iter().enumerate() {
        let inside = end > start && byte_spans.iter().any(|s| start < s.end && end > s.start);
        if !inside {
            continue;
        }
        match out.last_mut() {
            Some(last) if last.end == i => last.end = i + 1,
            _ => out.push(i..i + 1),
        }
    }
    out
}

/// Sorted, merged, non-empty spans clipped to `len` positions: the form the
/// scheduler and the prefix cache rely on.
pub fn normalize(spans: &[Range<usize>], len: usize) -> Vec<Range<usize>> {
    let mut sorted: Vec<Range<usize>> = spans
        .iter()
        .map(|s| s.start.min(len)..s.end.min(len))
        .filter(|s| s.start < s.end)
        .collect();
    sorted.sort_by_key(|s| s.start);
    let mut out: Vec<Range<usize>> = Vec::with_capacity(sorted.len());
    for s in sorted {
        match out.last_mut() {
            Some(last) if s.start <= last.end => last.end = last.end.max(s.end),
            _ => out.push(s),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spans_of(text: &str, keep: bool) -> (String, Vec<String>) {
        let (out, spans) = take_spans(&mark(text), keep);
        let texts = spans.iter().map(|s| out[s.clone()].to_owned()).collect();
        (out, texts)
    }

    #[test]
    fn paired_markers_become_spans_and_leave_the_text() {
        let (text, spans) = spans_of("a [IMPORTANT]key 42[/IMPORTANT] b [IMPORTANT]x[/IMPORTANT]", false);
        assert_eq!(text, "a key 42 b x");
        assert_eq!(spans, ["key 42", "x"]);
        let (text, spans) = spans_of("a [IMPORTANT]key[/IMPORTANT] b", true);
        assert_eq!(text, "a [IMPORTANT]key[/IMPORTANT] b");
        assert_eq!(spans, ["[IMPORTANT]key[/IMPORTANT]"]);
    }

    #[test]
    fn unpaired_markers_and_forged_sentinels_stay_text() {
        let (text, spans) = spans_of("[/IMPORTANT] a [IMPORTANT] b", false);
        assert_eq!(text, "[/IMPORTANT] a [IMPORTANT] b");
        assert!(spans.is_empty());
        let (text, spans) = spans_of("x \u{FDD0}forged\u{FDD1} y", false);
        assert_eq!(text, "x \u{FFFD}forged\u{FFFD} y");
        assert!(spans.is_empty());
        let (_, spans) = spans_of("[IMPORTANT][/IMPORTANT] empty", false);
        assert!(spans.is_empty());
    }

    #[test]
    fn marks_survive_a_template_and_pair_per_text() {
        // Each message is marked on its own; an open marker in one message
        // never pairs with a close in the next.
        let rendered = format!("<user>{}</user><user>{}</user>", mark("[IMPORTANT]open"), mark("close[/IMPORTANT]"));
        let (_, spans) = take_spans(&rendered, false);
        assert!(spans.is_empty());
        let rendered = format!("<sys>{}</sys><user>{}</user>", mark("[IMPORTANT]rule[/IMPORTANT]"), mark("hi"));
        let (text, spans) = take_spans(&rendered, false);
        assert_eq!(&text[spans[0].clone()], "rule");
    }

    #[test]
    fn tokens_overlapping_a_span_are_in_it() {
        // "a key 42 b": tokens "a", " key", " 42", " b"; the span is "key 42".
        let offsets = [(0, 1), (1, 5), (5, 8), (8, 10), (0, 0)];
        assert_eq!(token_spans(&offsets, &[2..8]), vec![1..3]);
        assert_eq!(token_spans(&offsets, &[0..1, 8..10]), vec![0..1, 3..4]);
        assert!(token_spans(&offsets, &[]).is_empty());
    }

    #[test]
    fn normalize_sorts_merges_and_clips() {
        assert_eq!(normalize(&[8..12, 1..3, 2..5, 20..30, 7..7], 25), vec![1..5, 8..12, 20..25]);
        assert_eq!(normalize(&[30..40], 25), Vec::<Range<usize>>::new());
    }
}
