//! The scores of `--suite jsonl`: exact match and token F1 with SQuAD's
//! answer normalization (the official SQuAD v1.1 `evaluate.py`, as LongBench
//! and L-Eval score QA), and Rouge-L as Google's `rouge-score` package
//! computes it (`rouge_scorer.RougeScorer(["rougeL"])`: lower-cased runs of
//! `[a-z0-9]`, the LCS F-measure). Each takes the best over the accepted
//! answers. tests/fixtures/eval/metrics_reference.json holds both
//! packages' values on fixed pairs (scripts/make_eval_metrics_reference.py).

use std::collections::HashMap;

/// SQuAD's `normalize_answer`: lower case, ASCII punctuation removed, the
/// words `a`, `an` and `the` removed, whitespace collapsed.
pub fn normalize_answer(text: &str) -> String {
    let lower = text.to_lowercase();
    let unpunctuated: String = lower.chars().filter(|c| !c.is_ascii_punctuation()).collect();
    // `re.sub(r'\b(a|an|the)\b', ' ', text)`: whole words only.
    let mut kept = String::with_capacity(unpunctuated.len());
    let mut word = String::new();
    let flush = |word: &mut String, kept: &mut String| {
        if matches!(word.as_str(), "a" | "an" | "the") {
            kept.push(' ');
        } else {
            kept.push_str(word);
        }
        word.clear();
    };
    for c in unpunctuated.chars() {
        if c.is_alphanumeric() || c == '_' {
            word.push(c);
        } else {
            flush(&mut word, &mut kept);
            kept.push(c);
        }
    }
    flush(&mut word, &mut kept);
    kept.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// 1 when the normalized texts are equal, else 0; the best over `answers`.
pub fn exact_match(prediction: &str, answers: &[String]) -> f64 {
    let got = normalize_answer(prediction);
    let hit = answers.iter().any(|a| normalize_answer(a) == got);
    if hit { 1.0 } else { 0.0 }
}

/// SQuAD's token F1 (bag of normalized words); the best over `answers`.
pub fn token_f1(prediction: &str, answers: &[String]) -> f64 {
    answers.iter().map(|a| f1_one(prediction, a)).fold(0.0, f64::max)
}

fn f1_one(prediction: &str, answer: &str) -> f64 {
    let predicted = normalize_answer(prediction);
    let expected = normalize_answer(answer);
    let (p, e): (Vec<&str>, Vec<&str>) = (predicted.split_whitespace().collect(), expected.split_whitespace().collect());
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for w in &e {
        *counts.entry(w).or_default() += 1;
    }
    let mut same = 0usize;
    for w in &p {
        if let Some(n) = counts.get_mut(w).filter(|n| **n > 0) {
            *n -= 1;
            same += 1;
        }
    }
    if same == 0 {
        return 0.0;
    }
    let precision = same as f64 / p.len() as f64;
    let recall = same as f64 / e.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

/// `rouge-score`'s default tokenizer: lower case, every run of characters
/// outside `[a-z0-9]` a separator (so non-ASCII letters separate too).
fn rouge_tokens(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit()))
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Rouge-L F-measure of `prediction` against each of `answers`; the best.
pub fn rouge_l(prediction: &str, answers: &[String]) -> f64 {
    let predicted = rouge_tokens(prediction);
    answers.iter().map(|a| rouge_l_one(&rouge_tokens(a), &predicted)).fold(0.0, f64::max)
}

fn rouge_l_one(target: &[String], prediction: &[String]) -> f64 {
    if target.is_empty() || prediction.is_empty() {
        return 0.0;
    }
    let lcs = lcs_len(target, prediction);
    let precision = lcs as f64 / prediction.len() as f64;
    let recall = lcs as f64 / target.len() as f64;
    if precision + recall > 0.0 { 2.0 * precision * recall / (precision + recall) } else { 0.0 }
}

/// The longest common subsequence's length, in one row of the DP table.
fn lcs_len(a: &[String], b: &[String]) -> usize {
    let mut row = vec![0usize; b.len() + 1];
    for x in a {
        let mut diagonal = 0;
        for (j, y) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = if x == y { diagonal + 1 } else { above.max(row[j]) };
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn scores_match_the_reference_packages() -> anyhow::Result<()> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/eval/metrics_reference.json");
        let reference: Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
        let cases = reference["cases"].as_array().cloned().unwrap_or_default();
        assert!(cases.len() >= 10);
        for case in cases {
            let prediction = case["prediction"].as_str().unwrap_or_default();
            let answers: Vec<String> = case["answers"].as_array().into_iter().flatten().filter_map(|a| a.as_str().map(str::to_owned)).collect();
            for (name, got) in [
                ("exact_match", exact_match(prediction, &answers)),
                ("f1", token_f1(prediction, &answers)),
                ("rouge_l", rouge_l(prediction, &answers)),
            ] {
                let want = case[name].as_f64().unwrap_or(f64::NAN);
                assert!((got - want).abs() < 1e-9, "{name} of {prediction:?} against {answers:?}: {got} != {want}");
            }
        }
        Ok(())
    }

    #[test]
    fn squad_normalization() {
        assert_eq!(normalize_answer("The  Eiffel Tower!"), "eiffel tower");
        assert_eq!(normalize_answer("an apple, a day"), "apple day");
        assert_eq!(normalize_answer("theater"), "theater");
    }
}
