#!/usr/bin/env python3
"""The baseline for docs/PERFORMANCE.md: Hugging Face transformers (PyTorch,
CPU, float32) on the same GGUF Ember runs, with the same prompt shapes:
decode tokens/s for a 128-token answer and prefill tokens/s for 512 tokens.

    python3 scripts/bench_transformers.py ~/.cache/ember/models/SmolLM2-135M-Instruct.Q4_1.gguf
(needs scripts/requirements-fixtures.txt plus gguf and accelerate)
"""
import pathlib
import sys
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def main():
    path = pathlib.Path(sys.argv[1])
    torch.set_num_threads(2)
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    messages = [{"role": "user", "content": "Write a long story about a dragon who learns to cook."}]
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        model.generate(ids, max_new_tokens=4, do_sample=False)  # warm-up
        start = time.perf_counter()
        model(ids)
        first = time.perf_counter() - start
        start = time.perf_counter()
        out = model.generate(ids, max_new_tokens=129, min_new_tokens=129, do_sample=False)
        total = time.perf_counter() - start
        decoded = out.shape[1] - ids.shape[1] - 1
        print(f"decode: {decoded} tokens at {decoded / (total - first):.2f} tok/s (prompt {ids.shape[1]} tokens)")
        long = torch.arange(1000, 1512).unsqueeze(0)
        model(long[:, :16])
        start = time.perf_counter()
        model(long)
        print(f"prefill: 512 tokens at {512 / (time.perf_counter() - start):.1f} tok/s")


if __name__ == "__main__":
    main()
