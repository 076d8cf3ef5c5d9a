#!/usr/bin/env python3
"""Renders conversations through Qwen3's chat templates with Hugging Face's
own renderer (transformers' `render_jinja_template`, what
`apply_chat_template` calls) and writes the strings Ember's minijinja
rendering must reproduce: tests/fixtures/qwen3-templates/reference.json.

The templates come from scripts/fetch-qwen3-templates.sh (see there for
their sources). Needs transformers (scripts/requirements-fixtures.txt).

    python3 scripts/make_qwen3_template_reference.py "$(scripts/fetch-qwen3-templates.sh)"
"""

import hashlib
import json
import sys
from pathlib import Path

from transformers.utils.chat_template_utils import render_jinja_template

TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather",
        "description": "Current weather in a city. Units: \"c\" or \"f\" & nothing else <strict>.",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "description": "City name, e.g. Zürich or 東京"},
            "unit": {"type": "string", "enum": ["c", "f"]},
        }, "required": ["city"]},
    }},
    {"type": "function", "function": {
        "name": "add", "description": "Adds two numbers.",
        "parameters": {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
                       "required": ["a", "b"], "additionalProperties": False},
    }},
]

CALL = {"id": "call_1", "type": "function",
        "function": {"name": "get_weather", "arguments": {"city": "Zürich", "unit": "c"}}}

CASES = [
    {"name": "one user turn", "messages": [{"role": "user", "content": "Hello!"}], "add_generation_prompt": True},
    {"name": "system and multi-turn", "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4."},
        {"role": "user", "content": "And 3+3? Answer in 中文 🙂"},
    ], "add_generation_prompt": True},
    {"name": "tools offered", "tools": TOOLS, "messages": [
        {"role": "system", "content": "Use tools when useful."},
        {"role": "user", "content": "Weather in Zürich?"},
    ], "add_generation_prompt": True},
    {"name": "tool call round trip", "tools": TOOLS, "messages": [
        {"role": "user", "content": "Weather in Zürich, and 2+3?"},
        {"role": "assistant", "content": "Let me check.", "tool_calls": [
            CALL, {"id": "call_2", "type": "function", "function": {"name": "add", "arguments": {"a": 2, "b": 3}}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\": 21, \"sky\": \"clear\"}"},
        {"role": "tool", "tool_call_id": "call_2", "content": "5"},
    ], "add_generation_prompt": True},
    {"name": "tool call with string arguments", "tools": TOOLS, "messages": [
        {"role": "user", "content": "Add 1 and 2."},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_3", "type": "function", "function": {"name": "add", "arguments": "{\"a\": 1, \"b\": 2}"}}]},
        {"role": "tool", "tool_call_id": "call_3", "content": "3"},
        {"role": "assistant", "content": "1 + 2 = 3."},
        {"role": "user", "content": "Thanks."},
    ], "add_generation_prompt": True},
    {"name": "reasoning content and think tags", "messages": [
        {"role": "user", "content": "Think, then answer: 7*6?"},
        {"role": "assistant", "content": "42", "reasoning_content": "7*6 is 42."},
        {"role": "user", "content": "And 6*7?"},
        {"role": "assistant", "content": "<think>\nSame thing.\n</think>\n\n42 again."},
    ], "add_generation_prompt": False},
    {"name": "no generation prompt", "messages": [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
    ], "add_generation_prompt": False},
]


def main():
    folder = Path(sys.argv[1])
    out = {"generator": "transformers.utils.chat_template_utils.render_jinja_template", "templates": []}
    for file in ["Qwen3-Instruct-2507.jinja", "Qwen3-hybrid.jinja"]:
        source = (folder / file).read_text()
        cases = []
        for case in CASES:
            rendered = render_jinja_template(
                conversations=[case["messages"]], tools=case.get("tools"), chat_template=source,
                add_generation_prompt=case["add_generation_prompt"],
                bos_token="", eos_token="<|im_end|>",
            )[0][0]
            cases.append({**case, "rendered": rendered})
        out["templates"].append({"file": file, "sha256": hashlib.sha256(source.encode()).hexdigest(), "cases": cases})
    dest = Path(__file__).resolve().parent.parent / "tests/fixtures/qwen3-templates/reference.json"
    dest.write_text(json.dumps(out, ensure_ascii=False, indent=1) + "\n")
    print(f"wrote {dest}")


if __name__ == "__main__":
    main()
