#!/usr/bin/env python3
"""Writes a random Qwen3-shaped checkpoint of any size, for load-memory and
speed measurements (never for correctness: the weights are noise).

    python3 scripts/make_synthetic_model.py OUT_DIR --hidden 2560 --layers 36 \
        --heads 32 --kv-heads 8 --head-dim 128 --intermediate 9728 --vocab 151936 --dtype bf16

Needs only numpy. bf16 is written by truncating float32 bits, as safetensors
stores it. Tensors are generated one at a time, so even a multi-GB file needs
little memory to write.
"""
import argparse
import json
import pathlib
import struct

import numpy as np


def tensor_specs(a):
    d, kv = a.heads * a.head_dim, a.kv_heads * a.head_dim
    yield "model.embed_tokens.weight", (a.vocab, a.hidden)
    for i in range(a.layers):
        p = f"model.layers.{i}"
        yield f"{p}.input_layernorm.weight", (a.hidden,)
        yield f"{p}.post_attention_layernorm.weight", (a.hidden,)
        yield f"{p}.self_attn.q_proj.weight", (d, a.hidden)
        yield f"{p}.self_attn.k_proj.weight", (kv, a.hidden)
        yield f"{p}.self_attn.v_proj.weight", (kv, a.hidden)
        yield f"{p}.self_attn.o_proj.weight", (a.hidden, d)
        yield f"{p}.self_attn.q_norm.weight", (a.head_dim,)
        yield f"{p}.self_attn.k_norm.weight", (a.head_dim,)
        yield f"{p}.mlp.gate_proj.weight", (a.intermediate, a.hidden)
        yield f"{p}.mlp.up_proj.weight", (a.intermediate, a.hidden)
        yield f"{p}.mlp.down_proj.weight", (a.hidden, a.intermediate)
    yield "model.norm.weight", (a.hidden,)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--intermediate", type=int, default=3072)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--dtype", choices=["f32", "f16", "bf16"], default="bf16")
    a = ap.parse_args()

    out = pathlib.Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    config = {
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3",
        "vocab_size": a.vocab, "hidden_size": a.hidden, "intermediate_size": a.intermediate,
        "num_hidden_layers": a.layers, "num_attention_heads": a.heads,
        "num_key_value_heads": a.kv_heads, "head_dim": a.head_dim,
        "max_position_embeddings": 262144, "rms_norm_eps": 1e-6, "rope_theta": 5000000.0,
        "tie_word_embeddings": True, "hidden_act": "silu", "eos_token_id": a.vocab - 1,
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")

    size = {"f32": 4, "f16": 2, "bf16": 2}[a.dtype]
    st_dtype = {"f32": "F32", "f16": "F16", "bf16": "BF16"}[a.dtype]
    header, offset = {}, 0
    specs = list(tensor_specs(a))
    for name, shape in specs:
        n = int(np.prod(shape)) * size
        header[name] = {"dtype": st_dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    header_bytes = json.dumps(header).encode()
    header_bytes += b" " * (-len(header_bytes) % 8)
    rng = np.random.default_rng(0)
    with open(out / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(header_bytes)))
        f.write(header_bytes)
        for name, shape in specs:
            x = (rng.standard_normal(shape, dtype=np.float32) * 0.02)
            if name.endswith("norm.weight"):
                x = x + 1.0
            if a.dtype == "f32":
                f.write(x.astype("<f4").tobytes())
            elif a.dtype == "f16":
                f.write(x.astype("<f2").tobytes())
            else:
                f.write((x.view(np.uint32) >> 16).astype("<u2").tobytes())
    print(f"{out}: {offset / 1e9:.2f} GB of {a.dtype} weights")


if __name__ == "__main__":
    main()
