#!/usr/bin/env python3
"""Seeds fuzz/corpus/<target>/ for chat_request, json_schema, model_files and
tool_parser from the repository's fixtures and the shapes its tests use.
Existing corpus files are kept (libFuzzer adds to the folder as it runs).
Run from anywhere: python3 fuzz/seed_corpora.py. See docs/FUZZING.md."""

import hashlib
import json
import os
import struct
from pathlib import Path

FUZZ = Path(__file__).resolve().parent
ROOT = FUZZ.parent
FIXTURES = ROOT / "tests" / "fixtures"
CORPUS = FUZZ / "corpus"

# The gateway tests' ChatML template (crates/ember-gateway/tests/common/mod.rs).
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] "
    "+ '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def put(target, data):
    """Writes one seed, named by its hash as libFuzzer names corpus files."""
    if isinstance(data, str):
        data = data.encode()
    elif not isinstance(data, bytes):
        data = json.dumps(data, ensure_ascii=False).encode()
    folder = CORPUS / target
    folder.mkdir(parents=True, exist_ok=True)
    (folder / hashlib.sha1(data).hexdigest()).write_bytes(data)


def qwen3_templates():
    """Qwen3's templates, when scripts/fetch-qwen3-templates.sh has fetched them."""
    cache = os.environ.get("EMBER_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "ember"
    )
    found = []
    for name in ("Qwen3-Instruct-2507.jinja", "Qwen3-hybrid.jinja"):
        path = Path(cache) / "qwen3" / name
        if path.is_file():
            found.append(path.read_text())
    return found


TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "enum": ["Paris", "Rome", "Oslo"]},
            "unit": {"type": "string", "enum": ["c", "f"]}},
            "required": ["city"], "additionalProperties": False}}},
    {"type": "function", "function": {"name": "get_time", "description": "The time now"}},
]


def chat_request():
    base = {"model": "tiny", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 8, "temperature": 0}
    extras = [
        {},
        {"logprobs": True, "top_logprobs": 2},
        {"n": 2, "seed": 7, "temperature": 1.0},
        {"stream": True, "stream_options": {"include_usage": True}, "n": 2},
        {"stream": True, "stream_options": {"continuous_usage_stats": True}},
        {"stop": ["\n", "END"], "top_k": 5, "top_p": 0.9, "min_p": 0.1, "presence_penalty": 0.5,
         "frequency_penalty": -0.5, "repetition_penalty": 1.1, "user": "u1", "ignore_eos": False, "stop_token_ids": [3]},
        {"max_completion_tokens": 4, "max_tokens": None},
        {"messages": [{"role": "developer", "content": "Be brief."},
                      {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]},
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
        {"messages": [{"role": "wizard", "content": "x"}]},
        {"messages": []},
        {"response_format": {"type": "json_object"}},
        {"response_format": {"type": "text"}},
        {"response_format": {"type": "json_schema", "json_schema": {"name": "thing", "strict": True, "schema": {
            "type": "object", "properties": {"a": {"type": "integer"}, "when": {"type": "string", "format": "date"}}}}}},
        {"tools": TOOLS},
        {"tools": TOOLS, "tool_choice": "required", "parallel_tool_calls": False},
        {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
        {"tools": TOOLS, "tool_choice": "none"},
        {"tools": TOOLS, "tool_choice": "auto", "response_format": {"type": "json_object"}},
        {"tools": [], "tool_choice": "auto"},
        {"tools": TOOLS, "messages": [
            {"role": "system", "content": "Use tools."},
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
            {"role": "tool", "tool_call_id": "call_2", "content": "19C"},
            {"role": "assistant", "content": "It is 18C.", "refusal": None, "reasoning_content": "Looked it up."}]},
        {"functions": [], "logit_bias": {"1": 2}, "store": False},
    ]
    for extra in extras:
        put("chat_request", {**base, **extra})
    reference = json.loads((FIXTURES / "qwen3-templates" / "reference.json").read_text())
    for template in reference["templates"]:
        for case in template["cases"]:
            body = {"model": "tiny", "messages": case["messages"]}
            if case.get("tools"):
                body["tools"] = case["tools"]
            put("chat_request", body)


def json_schema():
    conformance = json.loads((ROOT / "tests" / "schemas" / "conformance.json").read_text())
    for entry in conformance["schemas"]:
        put("json_schema", entry["schema"])
    put("json_schema", (ROOT / "tests" / "schemas" / "bench-order.json").read_bytes())
    for fn in TOOLS:
        put("json_schema", fn["function"].get("parameters", {}))
    deep = {}
    for _ in range(60):
        deep = {"type": "object", "properties": {"a": deep}}
    for schema in [True, False, {}, deep, {"$ref": "#/$defs/a", "$defs": {"a": {"$ref": "#/$defs/a"}}},
                   {"type": "string", "pattern": "(a|b)*c{2,5}[^x]"}, {"type": "array", "minItems": 3, "maxItems": 2},
                   {"anyOf": [{"type": "integer", "minimum": 5}, {"type": "null"}]},
                   {"allOf": [{"properties": {"a": {}}}, {"properties": {"b": {}}}]}]:
        put("json_schema", schema)


def model_files():
    for name in ("qwen3-tiny", "qwen2-tiny", "llama-tiny", "qwen3-yarn-tiny"):
        put("model_files", (FIXTURES / name / "config.json").read_bytes())
    put("model_files", (FIXTURES / "qwen3-tiny" / "tokenizer.json").read_bytes())
    put("model_files", {"chat_template": CHATML, "eos_token": "<|im_end|>", "bos_token": None})
    put("model_files", {"chat_template": [{"name": "default", "template": CHATML}, {"name": "tool_use", "template": "{{ tools }}"}],
                        "bos_token": {"content": "<s>"}, "eos_token": {"content": "</s>"}})
    for source in qwen3_templates():
        put("model_files", {"chat_template": source, "eos_token": "<|im_end|>", "bos_token": None})
    put("model_files", {"eos_token_id": [151645, 151643], "bos_token_id": 151643, "do_sample": True})
    put("model_files", {"eos_token_id": 2})


def tool_parser():
    calls = (
        "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"note\": "
        "\"a } and \\\" and </tool_call>\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>"
    )
    texts = [
        calls,
        "Hello <b>world</b> < tool",
        "ends with <tool_ca",
        "a\n\n",
        "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"x\": [1, 2]}}\n</tool_call>",
        "<tool_call>\n{\"arguments\": {\"x\": 1}, \"name\": \"f\"}\n</tool_call>",
        "<tool_call>\nnot json\n</tool_call>",
        "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"city\": \"Pa",
        "<tool_call>\n{\"name\": \"f\", \"arguments\": 12}\n</tool_call>\n\n",
        "<tool_call>\n{\"name\": \"f\", \"parameters\": \"{}\"}\n</tool_call> after",
        "<tool_call>{\"name\":\"f\",\"arguments\":\"x\"}</tool_call><tool_call>",
    ]
    for text in texts:
        raw = text.encode()
        for cuts in ([], [len(raw) // 2], [1, 5, 12, 30]):
            put("tool_parser", bytes([len(cuts)]) + b"".join(struct.pack("<H", c) for c in cuts) + raw)


if __name__ == "__main__":
    chat_request()
    json_schema()
    model_files()
    tool_parser()
    for target in ("chat_request", "json_schema", "model_files", "tool_parser"):
        print(f"{target}: {len(list((CORPUS / target).iterdir()))} files")
