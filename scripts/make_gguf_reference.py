#!/usr/bin/env python3
"""Reference values for Ember's GGUF path, made with the `gguf` Python package
and Hugging Face transformers (which dequantizes a GGUF to float32):

  tests/fixtures/gguf/dequant.json   blocks of every supported tensor type
                                     (raw bytes -> gguf.quants.dequantize)
  tests/fixtures/gguf/smollm2.json   SmolLM2-135M-Instruct: chat prompts as
                                     rendered by apply_chat_template, their
                                     token ids, and greedy answers

The GGUF itself is not committed; scripts/fetch-default-model.sh fetches it.
Regenerate with:
  python3 scripts/make_gguf_reference.py PATH/TO/SmolLM2-135M-Instruct.Q4_1.gguf
(needs scripts/requirements-fixtures.txt plus gguf and accelerate)
"""
import json
import pathlib
import sys

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "gguf"

# Block sizes in bytes, and which byte offsets hold f16 scales that must be
# finite (random bytes elsewhere exercise every bit of the layout).
TYPES = {
    "F32": (GGMLQuantizationType.F32, 4, []),
    "F16": (GGMLQuantizationType.F16, 2, [0]),
    "BF16": (GGMLQuantizationType.BF16, 2, []),
    "Q4_0": (GGMLQuantizationType.Q4_0, 18, [0]),
    "Q4_1": (GGMLQuantizationType.Q4_1, 20, [0, 2]),
    "Q8_0": (GGMLQuantizationType.Q8_0, 34, [0]),
    "Q4_K": (GGMLQuantizationType.Q4_K, 144, [0, 2]),
    "Q5_K": (GGMLQuantizationType.Q5_K, 176, [0, 2]),
    "Q6_K": (GGMLQuantizationType.Q6_K, 210, [208]),
}

CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are a concise assistant."},
     {"role": "user", "content": "Name three primary colors."}],
    [{"role": "user", "content": "Hi! Who are you?"},
     {"role": "assistant", "content": "I am SmolLM, an AI assistant."},
     {"role": "user", "content": "Write one sentence about the sea."}],
]
GREEDY_TOKENS = 24


def dequant_blocks():
    rng = np.random.default_rng(7)
    cases = {}
    for name, (qtype, block_bytes, f16_offsets) in TYPES.items():
        n_blocks = 3 if block_bytes > 4 else 64
        raw = rng.integers(0, 256, size=(n_blocks, block_bytes), dtype=np.uint8)
        for off in f16_offsets:
            scales = rng.uniform(0.001, 0.05, size=n_blocks).astype(np.float16).view(np.uint8).reshape(n_blocks, 2)
            raw[:, off:off + 2] = scales
        if name in ("F32", "BF16"):
            # Finite floats: random bytes may be NaN.
            vals = rng.standard_normal(n_blocks).astype(np.float32)
            raw = (vals.view(np.uint8) if name == "F32" else (vals.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)).reshape(n_blocks, -1)
        values = dequantize(raw.reshape(-1), qtype).reshape(-1)
        cases[name] = {"bytes": raw.reshape(-1).tobytes().hex(), "values": [float(v) for v in values]}
    return cases


def smollm2(path):
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(pathlib.Path(path).parent), pathlib.Path(path).name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    reader = GGUFReader(path)
    chats = []
    for messages in CHATS:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), max_new_tokens=GREEDY_TOKENS, do_sample=False)
            logits = model(torch.tensor([ids])).logits[0, -1]
        tokens = out[0, len(ids):].tolist()
        chats.append({
            "messages": messages,
            "rendered": text,
            "prompt_ids": ids,
            "greedy_tokens": tokens,
            "answer": tokenizer.decode(tokens, skip_special_tokens=True),
            "last_logits_head": [float(x) for x in logits[:16]],
        })
        print(repr(chats[-1]["answer"]))
    return {
        "generator": f"scripts/make_gguf_reference.py (transformers {transformers.__version__})",
        "file": name,
        "tensor_types": sorted({t.tensor_type.name for t in reader.tensors}),
        "chats": chats,
    }


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "dequant.json").write_text(json.dumps(dequant_blocks()) + "\n")
    if len(sys.argv) > 1:
        (OUT / "smollm2.json").write_text(json.dumps(smollm2(sys.argv[1]), indent=1) + "\n")


if __name__ == "__main__":
    main()
