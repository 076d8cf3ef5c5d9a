//! The instructions of each step of `ember summarize`. A chunk's and a
//! merge's prompts repeat the document's `[IMPORTANT]` spans, so facts the
//! author marked reach every step whichever chunk they sit in.

/// What the run produces: a summary, or the answer to a question.
#[derive(Debug, Clone, Copy)]
pub enum Goal<'a> {
    Summary,
    Answer(&'a str),
}

/// The reply to a chunk's question-mode prompt when the chunk says nothing
/// about the question; such notes are dropped before merging.
pub const NOTHING_RELEVANT: &str = "NONE";

/// The block of marked facts every prompt carries (empty without any).
pub fn important_block(spans: &[String]) -> String {
    if spans.is_empty() {
        return String::new();
    }
    let list: Vec<String> = spans.iter().map(|s| format!("- {s}")).collect();
    format!("Facts the author marked [IMPORTANT] (from anywhere in the document; never drop them):\n{}\n\n", list.join("\n"))
}

/// The prompt for chunk `index` (from 0) of `total`. A document of one
/// chunk gets the final instruction at once.
pub fn chunk(goal: Goal, important: &str, text: &str, index: usize, total: usize) -> String {
    let head = if total == 1 {
        match goal {
            Goal::Summary => "Summarize the following document in Markdown: a short overview paragraph, then the key points \
                              as bullets. Keep names, numbers, dates and conclusions exact."
                .to_owned(),
            Goal::Answer(question) => {
                format!("Answer the question using only the following document.\n\nQuestion: {question}")
            }
        }
    } else {
        match goal {
            Goal::Summary => format!(
                "Below is part {} of {total} of a longer document. Summarize this part in Markdown bullet points. \
                 Keep names, numbers, dates and conclusions exact.",
                index + 1
            ),
            Goal::Answer(question) => format!(
                "Below is part {} of {total} of a longer document. Write down everything in this part that helps \
                 answer the question, quoting names and figures exactly. If nothing in this part is relevant, reply \
                 with the single word {NOTHING_RELEVANT}.\n\nQuestion: {question}",
                index + 1
            ),
        }
    };
    format!("{head}\n\n{important}--- TEXT ---\n{text}\n--- END OF TEXT ---")
}

/// The prompt that merges consecutive partial summaries (or notes); `last`
/// when they are all that is left, so the reply is the final one.
pub fn merge(goal: Goal, important: &str, parts: &[String], last: bool) -> String {
    let head = match (goal, last) {
        (Goal::Summary, false) => "Below are summaries of consecutive parts of one document. Merge them into one summary \
                                   in Markdown bullet points, in the document's order, without repeating anything."
            .to_owned(),
        (Goal::Summary, true) => "Below are summaries of consecutive parts of one document. Write the summary of the whole \
                                  document in Markdown: a short overview paragraph, then the key points as bullets, in \
                                  the document's order."
            .to_owned(),
        (Goal::Answer(question), false) => format!(
            "Below are notes taken from consecutive parts of one document for a question. Merge them into one set of \
             notes, keeping every relevant detail.\n\nQuestion: {question}"
        ),
        (Goal::Answer(question), true) => format!(
            "Below are notes taken from consecutive parts of one document. Answer the question using only these notes.\n\n\
             Question: {question}"
        ),
    };
    let body: Vec<String> = parts.iter().enumerate().map(|(i, p)| format!("--- PART {} ---\n{p}", i + 1)).collect();
    format!("{head}\n\n{important}{}\n--- END ---", body.join("\n\n"))
}
