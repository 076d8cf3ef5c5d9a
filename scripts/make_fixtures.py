#!/usr/bin/env python3
"""Makes the tiny reference models under tests/fixtures/ with Hugging Face transformers.

Each fixture directory holds config.json, model.safetensors and reference.json:
  - logits at every position of a short prompt,
  - last-position logits of longer prompts,
  - 20 greedy tokens from a prompt whose every greedy step has a clear
    top-1/top-2 margin (so f32 rounding cannot flip a token).

float32, eager attention, fixed seeds, and a non-default random init (norm
weights and biases randomised) so that a skipped norm or bias shows up.

qwen3-embed-tiny is an embedding model as Qwen3-Embedding ships: a bare
`Qwen3Model` (no head) with sentence-transformers' modules.json and
1_Pooling/config.json (last-token pooling); its reference.json holds the
L2-normalized last-token and mean-pooled final hidden states of a few inputs.

Regenerate with:  python3 scripts/make_fixtures.py   (needs scripts/requirements-fixtures.txt)
"""
import json
import pathlib
import random

import torch
import transformers
from transformers import LlamaConfig, Qwen2Config, Qwen3Config

ROOT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures"
GREEDY_STEPS = 20
MIN_MARGIN = 0.05  # logit gap between top-1 and top-2 at every greedy step

COMMON = dict(
    vocab_size=512,
    hidden_size=64,
    intermediate_size=160,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    rms_norm_eps=1e-6,
    initializer_range=0.08,
    eos_token_id=511,
    bos_token_id=0,
)

FIXTURES = {
    # Tied embeddings; head_dim 32 != hidden 64 / 4 heads, as in Qwen3-4B.
    "qwen3-tiny": dict(
        cls=Qwen3Config,
        config=dict(COMMON, head_dim=32, max_position_embeddings=256, tie_word_embeddings=True,
                    rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
        long_prompts=[40, 100],
        greedy_prompt=12,
        classic_layout=False,
    ),
    # YaRN, untied; prompts run well past original_max_position_embeddings (32).
    # Written in the classic layout (top-level rope_theta + rope_scaling).
    "qwen3-yarn-tiny": dict(
        cls=Qwen3Config,
        config=dict(COMMON, head_dim=16, max_position_embeddings=128, tie_word_embeddings=False,
                    rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                                     "original_max_position_embeddings": 32}),
        long_prompts=[48, 110],
        greedy_prompt=24,
        classic_layout=True,
    ),
    # Llama with Llama-3 rope scaling, untied, no q/k norm.
    "llama-tiny": dict(
        cls=LlamaConfig,
        config=dict(COMMON, max_position_embeddings=256, tie_word_embeddings=False,
                    rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
                                     "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                     "original_max_position_embeddings": 32}),
        long_prompts=[40, 100],
        greedy_prompt=12,
        classic_layout=False,
    ),
    # Qwen2: q/k/v biases, no o bias, untied.
    "qwen2-tiny": dict(
        cls=Qwen2Config,
        config=dict(COMMON, max_position_embeddings=256, tie_word_embeddings=False,
                    rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
        long_prompts=[40, 100],
        greedy_prompt=12,
        classic_layout=False,
    ),
}


def randomise(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Norm weights around 1 and biases around 0, but not exactly, so each matters."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))


def greedy(model, prompt):
    ids = list(prompt)
    margins = []
    for _ in range(GREEDY_STEPS):
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, -1]
        top = torch.topk(logits, 2)
        margins.append(float(top.values[0] - top.values[1]))
        ids.append(int(top.indices[0]))
    return ids[len(prompt):], min(margins)


def make(name, spec, seed):
    rng = random.Random(seed)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    config = spec["cls"](**spec["config"])
    config._attn_implementation = "eager"
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager").float().eval()
    randomise(model, gen)
    vocab = config.vocab_size
    eos = config.eos_token_id

    def prompt(n):
        return [rng.randrange(1, vocab - 1) for _ in range(n)]

    short = prompt(8)
    with torch.no_grad():
        short_logits = model(torch.tensor([short])).logits[0]
        short_f64 = model.double()(torch.tensor([short])).logits[0]
        model.float()
    f64_error = float((short_logits.double() - short_f64).abs().max())

    long = []
    for n in spec["long_prompts"]:
        p = prompt(n)
        with torch.no_grad():
            last = model(torch.tensor([p])).logits[0, -1]
        long.append({"prompt": p, "last_logits": [round(float(x), 7) for x in last]})

    for attempt in range(200):
        gp = prompt(spec["greedy_prompt"])
        tokens, margin = greedy(model, gp)
        if margin >= MIN_MARGIN and eos not in tokens:
            break
    else:
        raise SystemExit(f"{name}: no greedy prompt with margin >= {MIN_MARGIN}")

    out = ROOT / name
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    if spec["classic_layout"]:
        cfg = json.loads((out / "config.json").read_text())
        params = cfg.pop("rope_parameters")
        cfg["rope_theta"] = params.pop("rope_theta")
        params["type"] = params.pop("rope_type")
        cfg["rope_scaling"] = params
        (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        # The classic layout must load to the same model.
        reloaded = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").float().eval()
        with torch.no_grad():
            assert torch.allclose(reloaded(torch.tensor([short])).logits[0], short_logits, atol=1e-6)
    (out / "generation_config.json").unlink(missing_ok=True)
    reference = {
        "generator": f"scripts/make_fixtures.py (transformers {transformers.__version__}, torch {torch.__version__})",
        "seed": seed,
        "f32_vs_f64_max_abs_error": f64_error,
        "short": {"prompt": short, "logits": [[round(float(x), 7) for x in row] for row in short_logits]},
        "long": long,
        "greedy": {"prompt": gp, "tokens": tokens, "min_margin": margin},
    }
    (out / "reference.json").write_text(json.dumps(reference) + "\n")
    print(f"{name}: greedy margin {margin:.3f}, f32-vs-f64 {f64_error:.2e}, prompt attempts {attempt + 1}")


TOKENIZER_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Ember serves Qwen3 models behind an OpenAI-compatible API.",
    "Paris is the capital of France; Berlin is the capital of Germany.",
    "Rust, Burn and Hugging Face tokenizers work together here.",
] * 50
TOKENIZER_TEXTS = ["Hello, Ember!", "The capital of France is Paris.", "naïve café 東京 🙂"]


def make_tokenizer(name):
    """A byte-level BPE of the fixture's vocabulary size, with the reference
    encodings of a few texts (ASCII, accents, CJK, emoji) for the Rust side."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    vocab = FIXTURES[name]["config"]["vocab_size"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab - 1, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TOKENIZER_CORPUS, trainer)
    tok.add_special_tokens(["<|im_end|>"])  # id vocab-1 = eos_token_id
    out = ROOT / name
    tok.save(str(out / "tokenizer.json"))
    reference = json.loads((out / "reference.json").read_text())
    reference["tokenizer"] = [
        {"text": t, "ids": tok.encode(t).ids, "decoded": tok.decode(tok.encode(t).ids)} for t in TOKENIZER_TEXTS
    ]
    (out / "reference.json").write_text(json.dumps(reference) + "\n")


def make_embedding(seed):
    """A tiny Qwen3-Embedding: pooled, normalized hidden states of token-id inputs."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    config = Qwen3Config(**dict(COMMON, head_dim=32, max_position_embeddings=256, tie_word_embeddings=True,
                                rope_parameters={"rope_type": "default", "rope_theta": 10000.0}))
    model = transformers.AutoModel.from_config(config, attn_implementation="eager").float().eval()
    randomise(model, gen)
    out = ROOT / "qwen3-embed-tiny"
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    (out / "generation_config.json").unlink(missing_ok=True)
    (out / "tokenizer.json").write_bytes((ROOT / "qwen3-tiny" / "tokenizer.json").read_bytes())
    (out / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ], indent=2) + "\n")
    (out / "1_Pooling").mkdir(exist_ok=True)
    # Qwen3-Embedding's own pooling config.
    (out / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": config.hidden_size, "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": False, "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False, "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": True, "include_prompt": True,
    }, indent=2) + "\n")
    inputs = [[rng.randrange(1, config.vocab_size - 1) for _ in range(n)] for n in (1, 5, 17, 40, 100)]
    cases = []
    for ids in inputs:
        with torch.no_grad():
            hidden = model(torch.tensor([ids])).last_hidden_state[0]
        last = torch.nn.functional.normalize(hidden[-1], dim=0)
        mean = torch.nn.functional.normalize(hidden.mean(dim=0), dim=0)
        cases.append({"input": ids, "last": [round(float(x), 7) for x in last],
                      "mean": [round(float(x), 7) for x in mean]})
    reference = {
        "generator": f"scripts/make_fixtures.py (transformers {transformers.__version__}, torch {torch.__version__})",
        "seed": seed,
        "cases": cases,
    }
    (out / "reference.json").write_text(json.dumps(reference) + "\n")
    print(f"qwen3-embed-tiny: {len(cases)} cases")


def main():
    for i, (name, spec) in enumerate(FIXTURES.items()):
        make(name, spec, seed=1234 + i)
    make_tokenizer("qwen3-tiny")
    make_embedding(seed=4321)


if __name__ == "__main__":
    main()
