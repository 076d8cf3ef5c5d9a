#!/usr/bin/env python3
"""Table and plot of scripts/bench_long_context.sh's results.

  python3 scripts/plot_long_context.py [IN.jsonl] [OUT.png]   (needs matplotlib)

Prints a Markdown table (length, dense and sparse prefill time, their
ratio, peak memory) and writes a two-panel PNG: prefill time and peak RSS
against prompt length, log-log. A length measured more than once keeps its
last run. Lengths within 1% of each other share a row (the dense 64K run
went through `ember serve` with a 65,520-token prompt, the sparse one
through the engine with 65,535).
"""
import json
import pathlib
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent


def bucket(n):
    """The power of two within 1% of `n`, else `n`."""
    power = 1 << max(0, round(n).bit_length() - 1)
    for p in (power, power * 2):
        if abs(n - p) <= p / 100:
            return p
    return n


def main():
    source = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "long_context_speed.jsonl"
    target = pathlib.Path(sys.argv[2]) if len(sys.argv) > 2 else ROOT / "docs" / "long_context_speed.png"
    runs = {}
    for line in source.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            runs[(r["attention"], bucket(r["prompt_len"]))] = r
    lengths = sorted({n for _, n in runs})

    print("| prompt tokens | dense prefill | sparse prefill | sparse / dense | dense peak RSS | sparse peak RSS |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n in lengths:
        d, s = runs.get(("dense", n)), runs.get(("sparse", n))
        sizes = sorted({r["prompt_len"] for r in (d, s) if r})
        label = " / ".join(f"{size:,}" for size in sizes)
        cell = lambda r: f"{r['ttft_s']:.1f} s ({r['prefill_tok_s']:.0f} tok/s)" if r else "not run"
        mem = lambda r: f"{r['peak_rss_mib']} MiB" if r else "-"
        ratio = f"{s['ttft_s'] / d['ttft_s']:.2f}" if d and s else "-"
        print(f"| {label} | {cell(d)} | {cell(s)} | {ratio} | {mem(d)} | {mem(s)} |")

    fig, (time_ax, mem_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for attention, style in [("dense", "o-"), ("sparse", "s-")]:
        points = [(n, runs[(attention, n)]) for n in lengths if (attention, n) in runs]
        xs = [r["prompt_len"] for _, r in points]
        time_ax.plot(xs, [r["ttft_s"] for _, r in points], style, label=attention)
        mem_ax.plot(xs, [r["peak_rss_mib"] for _, r in points], style, label=attention)
    for ax, title, unit in [(time_ax, "Prefill time", "seconds"), (mem_ax, "Peak memory (RSS)", "MiB")]:
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("prompt tokens")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle("SmolLM2-135M Q4_1, YaRN x8 window, 2 CPU cores: dense vs sparse attention")
    fig.tight_layout()
    fig.savefig(target, dpi=110)
    print(f"\nplot: {target.relative_to(ROOT) if target.is_relative_to(ROOT) else target}", file=sys.stderr)


if __name__ == "__main__":
    main()
