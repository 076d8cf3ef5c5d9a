"""JSON-schema conformance of `response_format`: every schema of
tests/schemas/conformance.json is sent to a tiny random Qwen3 with the real
Qwen3 tokenizer (tests/clients/qwen3_tool_fixture.py; temperature 1, a
fixed seed) and the answer is checked with the
`jsonschema` validator (Draft 2020-12, formats checked). A random model
makes no effort to finish, so this measures what the constraint alone
guarantees.

Outcomes: `valid`; `invalid` (Ember produced JSON the validator rejects: a
schema feature silently not enforced); `truncated` (max_tokens reached
first); `rejected` (400 naming the unsupported keyword). The ratchet in
tests/schemas/baseline.json lists the schemas that pass and those that are
refused: a passing schema that stops passing fails the test, and so does any
`invalid` outcome or a refusal not in the baseline; newly passing schemas
are reported, to be added to the baseline. Set EMBER_CONFORMANCE_REPORT to
a path to get every outcome as JSON."""

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import jsonschema
import pytest

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = json.loads((ROOT / "tests/schemas/conformance.json").read_text())["schemas"]
BASELINE_PATH = ROOT / "tests/schemas/baseline.json"
URL = os.environ.get("EMBER_QWEN3_URL")
MODEL = os.environ.get("EMBER_QWEN3_MODEL")
API_KEY = os.environ["EMBER_API_KEY"]


def outcome(case):
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Answer in JSON."}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "case", "schema": case["schema"]}},
        "temperature": 1.0,
        "seed": 1,
        "max_tokens": 3000,
    }
    r = httpx.post(f"{URL}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {API_KEY}"},
                   timeout=600)
    if r.status_code == 400:
        error = r.json()["error"]
        # Only a refusal of the schema itself counts; any other 400 (a
        # context-length error, a malformed request) is a failure.
        assert error["param"] == "response_format.json_schema.schema", (case["id"], error)
        return {"outcome": "rejected", "detail": error["message"]}
    r.raise_for_status()
    choice = r.json()["choices"][0]
    text = choice["message"]["content"]
    if choice["finish_reason"] != "stop":
        return {"outcome": "truncated", "detail": text[:200]}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        return {"outcome": "invalid", "detail": f"not JSON: {e}: {text[:200]}"}
    validator = jsonschema.Draft202012Validator(case["schema"], format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    errors = [e.message for e in validator.iter_errors(value)]
    if errors:
        return {"outcome": "invalid", "detail": f"{errors[0]}: {text[:200]}"}
    return {"outcome": "valid", "detail": text[:200]}


@pytest.mark.skipif(not URL, reason="no qwen3-tiny server")
def test_conformance_ratchet():
    assert len(SCHEMAS) >= 100
    with ThreadPoolExecutor(16) as pool:
        results = dict(zip((c["id"] for c in SCHEMAS), pool.map(outcome, SCHEMAS)))
    counts = {}
    for r in results.values():
        counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
    accepted = len(SCHEMAS) - counts.get("rejected", 0)
    print(f"\n{len(SCHEMAS)} schemas: {counts}; valid {counts.get('valid', 0)}/{accepted} accepted")
    for name, r in results.items():
        if r["outcome"] != "valid":
            print(f"  {r['outcome']:9} {name}: {r['detail'][:160]}")
    if os.environ.get("EMBER_CONFORMANCE_REPORT"):
        Path(os.environ["EMBER_CONFORMANCE_REPORT"]).write_text(json.dumps(results, indent=1, ensure_ascii=False))

    baseline = json.loads(BASELINE_PATH.read_text())
    regressions = [n for n in baseline["passing"] if results[n]["outcome"] != "valid"]
    invalid = [n for n, r in results.items() if r["outcome"] == "invalid"]
    new_refusals = [n for n, r in results.items() if r["outcome"] == "rejected" and n not in baseline["rejected"]]
    improved = [n for n, r in results.items() if r["outcome"] == "valid" and n not in baseline["passing"]]
    if improved:
        print(f"newly passing (add to {BASELINE_PATH.name}): {improved}")
    assert not invalid, f"output that breaks its schema: {invalid}"
    assert not regressions, f"schemas that passed before: {regressions}"
    assert not new_refusals, f"newly refused: {new_refusals}"
