#!/usr/bin/env python3
"""Reference scores for `ember eval --suite jsonl` (crates/ember-cli/src/eval/metrics.rs):
exact match and token F1 from the official SQuAD v1.1 evaluation script
(functions copied below as published), Rouge-L F-measure from Google's
`rouge-score` package, each the best over a case's answers.

Regenerate with (a venv with `rouge-score==0.1.2`):
    python3 scripts/make_eval_metrics_reference.py > tests/fixtures/eval/metrics_reference.json
"""
import json
import re
import string
from collections import Counter

from rouge_score import rouge_scorer


# --- SQuAD v1.1 evaluate.py ------------------------------------------------
def normalize_answer(s):
    def remove_articles(text):
        return re.sub(r'\b(a|an|the)\b', ' ', text)

    def white_space_fix(text):
        return ' '.join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return ''.join(ch for ch in text if ch not in exclude)

    def lower(text):
        return text.lower()

    return white_space_fix(remove_articles(remove_punc(lower(s))))


def f1_score(prediction, ground_truth):
    prediction_tokens = normalize_answer(prediction).split()
    ground_truth_tokens = normalize_answer(ground_truth).split()
    common = Counter(prediction_tokens) & Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    f1 = (2 * precision * recall) / (precision + recall)
    return f1


def exact_match_score(prediction, ground_truth):
    return normalize_answer(prediction) == normalize_answer(ground_truth)
# ---------------------------------------------------------------------------

CASES = [
    ("Paris", ["Paris"]),
    ("The answer is Paris.", ["Paris"]),
    ("the Eiffel Tower", ["Eiffel Tower", "La tour Eiffel"]),
    ("An apple a day keeps the doctor away", ["an apple a day keeps doctors away"]),
    ("", ["something"]),
    ("42", ["forty-two", "42"]),
    ("New York City, USA", ["New York", "NYC"]),
    ("the the the cat", ["the cat sat on the mat"]),
    ("Café au lait in Zürich", ["cafe au lait in Zurich"]),
    ("The quick brown fox jumps over the lazy dog", ["A quick brown dog jumps over the lazy fox"]),
    ("It was 3.14159, roughly pi.", ["3.14159"]),
    ("theater and anthem", ["the theater", "an anthem"]),
    ("Summary: the report finds revenue grew 12% while costs fell.",
     ["Revenue grew by 12 percent and costs fell, the report finds.", "Costs fell."]),
    ("yes yes yes", ["yes"]),
    ("Don't stop—believing", ["dont stop believing"]),
]


def main():
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    cases = []
    for prediction, answers in CASES:
        cases.append({
            "prediction": prediction,
            "answers": answers,
            "exact_match": max(float(exact_match_score(prediction, a)) for a in answers),
            "f1": max(float(f1_score(prediction, a)) for a in answers),
            "rouge_l": max(scorer.score(a, prediction)["rougeL"].fmeasure for a in answers),
        })
    print(json.dumps({"generator": "scripts/make_eval_metrics_reference.py (SQuAD v1.1 evaluate.py, rouge-score 0.1.2)",
                      "cases": cases}, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
