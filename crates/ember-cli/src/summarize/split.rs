//! Splitting a document into chunks under a token budget: at headings
//! first (`#` before `##`), then blank lines, lines, sentences and words,
//! each level only inside a piece still too long, and a last resort of
//! halving a piece with no spaces. The pieces are then packed greedily, in
//! order, into chunks whose exact token count stays within the budget, so
//! that small sections share a chunk and no section is cut that need not be.
//!
//! Every piece keeps the separator that ended it, so the chunks joined
//! together are the document exactly.

use anyhow::{Result, bail};

/// Where a piece may be cut, coarsest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    /// Before a Markdown ATX heading of this many `#`s (outside code fences).
    Heading(usize),
    /// After a blank line.
    Paragraph,
    /// After a line break.
    Line,
    /// After `.`, `!`, `?` (or their CJK forms) and the spaces that follow.
    Sentence,
    /// After a run of whitespace.
    Word,
}

const LEVELS: [Level; 10] = [
    Level::Heading(1),
    Level::Heading(2),
    Level::Heading(3),
    Level::Heading(4),
    Level::Heading(5),
    Level::Heading(6),
    Level::Paragraph,
    Level::Line,
    Level::Sentence,
    Level::Word,
];

/// `text` in chunks of at most `budget` tokens by `count`, in order.
/// Chunks are trimmed of surrounding whitespace; empty ones are dropped.
pub fn chunks(text: &str, budget: usize, count: &impl Fn(&str) -> Result<usize>) -> Result<Vec<String>> {
    let mut pieces = Vec::new();
    fit(text, 0, budget, count, &mut pieces)?;
    let mut out: Vec<String> = Vec::new();
    let mut current = String::new();
    for piece in pieces {
        if current.is_empty() {
            current = piece.to_owned();
            continue;
        }
        let joined = format!("{current}{piece}");
        if count(joined.trim())? <= budget {
            current = joined;
        } else {
            out.push(std::mem::replace(&mut current, piece.to_owned()));
        }
    }
    out.push(current);
    Ok(out.into_iter().map(|c| c.trim().to_owned()).filter(|c| !c.is_empty()).collect())
}

/// Appends to `out` the pieces of `text` that fit, cutting at `LEVELS[level..]`.
fn fit<'a>(
    text: &'a str,
    level: usize,
    budget: usize,
    count: &impl Fn(&str) -> Result<usize>,
    out: &mut Vec<&'a str>,
) -> Result<()> {
    if text.trim().is_empty() || count(text.trim())? <= budget {
        out.push(text);
        return Ok(());
    }
    // The coarsest level at which the piece has more than one part.
    for (deeper, &cut) in LEVELS.iter().enumerate().skip(level) {
        let parts = split_at(text, cut);
        if parts.len() > 1 {
            for part in parts {
                fit(part, deeper + 1, budget, count, out)?;
            }
            return Ok(());
        }
    }
    halve(text, budget, count, out)
}

/// A piece with no cut left (a long run without spaces): halves at a
/// character boundary until each half fits.
fn halve<'a>(text: &'a str, budget: usize, count: &impl Fn(&str) -> Result<usize>, out: &mut Vec<&'a str>) -> Result<()> {
    if count(text.trim())? <= budget {
        out.push(text);
        return Ok(());
    }
    let mut middle = text.len() / 2;
    while !text.is_char_boundary(middle) {
        middle += 1;
    }
    if middle == 0 || middle >= text.len() {
        bail!("one character takes more than {budget} tokens; raise --chunk-tokens");
    }
    halve(&text[..middle], budget, count, out)?;
    halve(&text[middle..], budget, count, out)
}

/// `text` cut at every boundary of `level`, each part keeping its end.
fn split_at(text: &str, level: Level) -> Vec<&str> {
    let mut cuts = Vec::new();
    match level {
        Level::Heading(depth) => {
            let mut in_fence = false;
            let mut offset = 0;
            for line in text.split_inclusive('\n') {
                let trimmed = line.trim_start();
                if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
                    in_fence = !in_fence;
                } else if !in_fence && heading_depth(line) == Some(depth) && offset > 0 {
                    cuts.push(offset);
                }
                offset += line.len();
            }
        }
        Level::Paragraph => cuts_after(text, &mut cuts, |rest| {
            rest.starts_with("\n\n").then(|| 2 + rest[2..].len() - rest[2..].trim_start_matches('\n').len())
        }),
        Level::Line => cuts_after(text, &mut cuts, |rest| rest.starts_with('\n').then_some(1)),
        Level::Sentence => cuts_after(text, &mut cuts, |rest| {
            let mut chars = rest.chars();
            let end = chars.next()?;
            if matches!(end, '。' | '！' | '？') {
                return Some(end.len_utf8());
            }
            if !matches!(end, '.' | '!' | '?') {
                return None;
            }
            let after = &rest[1..];
            let spaces = after.len() - after.trim_start().len();
            (spaces > 0).then_some(1 + spaces)
        }),
        Level::Word => cuts_after(text, &mut cuts, |rest| {
            let spaces = rest.len() - rest.trim_start().len();
            (spaces > 0).then_some(spaces)
        }),
    }
    let mut parts = Vec::with_capacity(cuts.len() + 1);
    let mut start = 0;
    for cut in cuts {
        if cut > start && cut < text.len() {
            parts.push(&text[start..cut]);
            start = cut;
        }
    }
    parts.push(&text[start..]);
    parts
}

/// Cuts after each boundary `boundary` finds at a character position (it
/// returns the boundary's length in bytes there).
fn cuts_after(text: &str, cuts: &mut Vec<usize>, boundary: impl Fn(&str) -> Option<usize>) {
    let mut at = 0;
    while at < text.len() {
        match boundary(&text[at..]) {
            Some(len) => {
                at += len;
                cuts.push(at);
            }
            None => at += text[at..].chars().next().map_or(1, char::len_utf8),
        }
    }
}

/// `Some(n)` for a Markdown ATX heading line of `n` `#`s (up to three
/// spaces of indent, then `#`s, then a space or the end of the line).
fn heading_depth(line: &str) -> Option<usize> {
    let indent = line.len() - line.trim_start_matches(' ').len();
    if indent > 3 {
        return None;
    }
    let rest = &line[indent..];
    let depth = rest.len() - rest.trim_start_matches('#').len();
    let after = &rest[depth..];
    ((1..=6).contains(&depth) && (after.is_empty() || after.starts_with([' ', '\t', '\n', '\r']))).then_some(depth)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Result<usize> {
        Ok(text.split_whitespace().count())
    }

    fn check(text: &str, budget: usize) -> Vec<String> {
        let chunks = chunks(text, budget, &words).unwrap_or_default();
        for chunk in &chunks {
            assert!(words(chunk).unwrap_or(usize::MAX) <= budget, "{chunk:?} is over {budget}");
        }
        let squeeze = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
        assert_eq!(squeeze(&chunks.join(" ")), squeeze(text), "nothing is lost or reordered");
        chunks
    }

    #[test]
    fn sections_stay_whole_when_they_fit() {
        let text = "# One\nalpha beta gamma\n\n## One a\ndelta epsilon\n# Two\nzeta eta theta iota\n";
        assert_eq!(check(text, 10), ["# One\nalpha beta gamma\n\n## One a\ndelta epsilon", "# Two\nzeta eta theta iota"]);
        // A smaller budget cuts the first section at its subheading first.
        assert_eq!(check(text, 5)[..2], ["# One\nalpha beta gamma", "## One a\ndelta epsilon"]);
    }

    #[test]
    fn headings_in_code_fences_are_not_cuts() {
        let text = "# A\nx\n```\n# not a heading\n```\ny\n# B\nz\n";
        assert_eq!(split_at(text, Level::Heading(1)), ["# A\nx\n```\n# not a heading\n```\ny\n", "# B\nz\n"]);
    }

    #[test]
    fn paragraphs_then_sentences_then_words() {
        let text = "One two three. Four five six.\n\nSeven eight. Nine ten eleven twelve thirteen.";
        assert_eq!(check(text, 6), ["One two three. Four five six.", "Seven eight.", "Nine ten eleven twelve thirteen."]);
        // Packing is greedy across the cuts: a sentence's last words join the
        // next piece when they fit.
        assert_eq!(check(text, 3), ["One two three.", "Four five six.", "Seven eight. Nine", "ten eleven twelve", "thirteen."]);
    }

    #[test]
    fn no_chunk_exceeds_the_budget_whatever_the_text() {
        let long_word = "x".repeat(1000);
        let by_chars = |t: &str| -> Result<usize> { Ok(t.chars().count().div_ceil(16)) };
        for chunk in chunks(&format!("a {long_word} b"), 10, &by_chars).unwrap_or_default() {
            assert!(by_chars(&chunk).unwrap_or(usize::MAX) <= 10);
        }
        let text: String = (0..500).map(|i| format!("w{i}{}", if i % 7 == 6 { ". " } else if i % 50 == 49 { "\n\n" } else { " " })).collect();
        for budget in [1, 2, 5, 13, 40, 100, 1000] {
            check(&text, budget);
        }
    }

    #[test]
    fn cjk_sentences_split_without_spaces() {
        let per_char = |t: &str| -> Result<usize> { Ok(t.trim().chars().count()) };
        let parts = chunks("今天下雨。明天晴天。后天多云。", 5, &per_char).unwrap_or_default();
        assert_eq!(parts, ["今天下雨。", "明天晴天。", "后天多云。"]);
    }
}
