#!/usr/bin/env python3
"""Reference values for Ember's GGUF path, made with the `gguf` Python package
and Hugging Face transformers (which dequantizes a GGUF to float32):

  tests/fixtures/gguf/dequant.json   blocks of every supported tensor type
                                     (raw bytes -> gguf.quants.dequantize)
  tests/fixtures/gguf/*-tiny.*.gguf  the tiny safetensors fixtures written as
                                     GGUF by gguf's GGUFWriter, with llama.cpp's
                                     names, q/k permutation (llama) and types
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
from gguf.quants import dequantize, quantize

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
    # Last, so that adding them left the earlier cases' random bytes unchanged.
    "Q5_0": (GGMLQuantizationType.Q5_0, 22, [0]),
    "Q5_1": (GGMLQuantizationType.Q5_1, 24, [0, 2]),
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


GGUF_NAMES = {
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}


def llama_cpp_permute(w, n_head):
    """convert_hf_to_gguf.py's LlamaModel.permute: rotate-half rows -> interleaved pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def tiny_gguf(fixture, arch, qtype, out_name):
    """Writes a tiny safetensors fixture as GGUF, the way llama.cpp's converter lays it out."""
    from gguf import GGUFWriter
    from safetensors.numpy import load_file

    src = OUT.parent / fixture
    cfg = json.loads((src / "config.json").read_text())
    tensors = load_file(str(src / "model.safetensors"))
    heads, kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    rope = cfg.get("rope_parameters") or {"rope_theta": cfg.get("rope_theta", 10000.0)}
    w = GGUFWriter(str(OUT / out_name), arch)
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_freq_base(rope["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_eos_token_id(cfg["eos_token_id"])
    for name, t in tensors.items():
        if name == "model.embed_tokens.weight":
            gname = "token_embd.weight"
        elif name == "model.norm.weight":
            gname = "output_norm.weight"
        elif name == "lm_head.weight":
            gname = "output.weight"
        else:
            layer, rest = name.removeprefix("model.layers.").split(".", 1)
            module, kind = rest.rsplit(".", 1)
            gname = f"blk.{layer}.{GGUF_NAMES[module]}.{kind}"
        if arch == "llama" and ".attn_q." in gname:
            t = llama_cpp_permute(t, heads)
        elif arch == "llama" and ".attn_k." in gname:
            t = llama_cpp_permute(t, kv_heads)
        # Like llama.cpp: 1-D tensors (norms, biases) stay F32.
        if t.ndim == 2 and qtype != GGMLQuantizationType.F32:
            w.add_tensor(gname, quantize(t, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(gname, t.astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "dequant.json").write_text(json.dumps(dequant_blocks()) + "\n")
    tiny_gguf("qwen3-tiny", "qwen3", GGMLQuantizationType.F32, "qwen3-tiny.f32.gguf")
    tiny_gguf("qwen3-tiny", "qwen3", GGMLQuantizationType.Q8_0, "qwen3-tiny.q8_0.gguf")
    tiny_gguf("llama-tiny", "llama", GGMLQuantizationType.F32, "llama-tiny.f32.gguf")
    tiny_gguf("qwen2-tiny", "qwen2", GGMLQuantizationType.F32, "qwen2-tiny.f32.gguf")
    if len(sys.argv) > 1:
        (OUT / "smollm2.json").write_text(json.dumps(smollm2(sys.argv[1]), indent=1) + "\n")


if __name__ == "__main__":
    main()
