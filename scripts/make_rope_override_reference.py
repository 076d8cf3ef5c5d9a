#!/usr/bin/env python3
"""Reference logits for `--rope-scaling` overrides, past the original window.

Loads the qwen3-tiny fixture (max_position_embeddings 256) with Hugging Face
transformers, replaces its RoPE scaling by each override below exactly as a
user would edit config.json (rope_parameters, and max_position_embeddings set
to the window vLLM derives: factor x original for YaRN, factor x
max_position_embeddings for linear and dynamic), and records the last-position
logits of a 400-token prompt, well past the checkpoint's 256.

Writes tests/fixtures/qwen3-tiny/rope_overrides.json. Regenerate with:
  python3 scripts/make_rope_override_reference.py   (needs scripts/requirements-fixtures.txt)
"""
import json
import pathlib
import random

import torch
import transformers

DIR = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "qwen3-tiny"
PROMPT_LEN = 400

OVERRIDES = [
    {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 256},
    {"rope_type": "linear", "factor": 2.0},
    {"rope_type": "dynamic", "factor": 4.0},
]


def main():
    base = json.loads((DIR / "config.json").read_text())
    theta = base["rope_parameters"]["rope_theta"]
    rng = random.Random(2026)
    prompt = [rng.randrange(1, base["vocab_size"] - 1) for _ in range(PROMPT_LEN)]
    cases = []
    for override in OVERRIDES:
        config = transformers.AutoConfig.from_pretrained(DIR)
        original = override.get("original_max_position_embeddings", config.max_position_embeddings)
        # Dynamic NTK grows past max_position_embeddings, so that stays the original window.
        if override["rope_type"] != "dynamic":
            config.max_position_embeddings = int(original * override["factor"])
        config.rope_parameters = dict(override, rope_theta=theta)
        model = transformers.AutoModelForCausalLM.from_pretrained(
            DIR, config=config, attn_implementation="eager"
        ).float().eval()
        with torch.no_grad():
            last = model(torch.tensor([prompt])).logits[0, -1]
        cases.append({"rope_scaling": override, "last_logits": [round(float(x), 7) for x in last]})
        print(f"{override['rope_type']}: top token {int(last.argmax())}")
    out = {
        "generator": f"scripts/make_rope_override_reference.py (transformers {transformers.__version__}, torch {torch.__version__})",
        "prompt": prompt,
        "cases": cases,
    }
    (DIR / "rope_overrides.json").write_text(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
