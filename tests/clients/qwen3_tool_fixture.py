"""Builds the tiny random Qwen3 fixture as a tool-calling model directory:
tests/fixtures/qwen3-tiny with a 4096-token window (a random model writes
long JSON strings), `<tool_call>` and `</tool_call>` added to its vocabulary
as single tokens (ids 392 and 393, inside the model's 512-wide output, as
Qwen3's tokenizer has them), and Qwen3-Instruct-2507's chat template (from
scripts/fetch-qwen3-templates.sh). Usage: qwen3_tool_fixture.py OUT_DIR"""

import json
import os
import shutil
import sys
from pathlib import Path

root = Path(__file__).resolve().parents[2]
src = root / "tests/fixtures/qwen3-tiny"
out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
cache = Path(os.environ.get("EMBER_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ember")

config = json.loads((src / "config.json").read_text())
config["max_position_embeddings"] = 4096
(out / "config.json").write_text(json.dumps(config))
shutil.copy(src / "model.safetensors", out / "model.safetensors")
tokenizer = json.loads((src / "tokenizer.json").read_text())
for id_, content in [(392, "<tool_call>"), (393, "</tool_call>")]:
    # Qwen3 marks them non-special: they stay in decoded text.
    tokenizer["added_tokens"].append({"id": id_, "content": content, "single_word": False, "lstrip": False,
                                      "rstrip": False, "normalized": False, "special": False})
(out / "tokenizer.json").write_text(json.dumps(tokenizer))
template = (cache / "qwen3/Qwen3-Instruct-2507.jinja").read_text()
(out / "tokenizer_config.json").write_text(json.dumps({"chat_template": template, "eos_token": "<|im_end|>"}))
