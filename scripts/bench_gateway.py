#!/usr/bin/env python3
"""What a gateway adds in front of a fast upstream, side by side in one run:
a stub OpenAI-compatible server on loopback (crates/ember-gateway/examples/
stub_upstream.rs, a fixed 16-token answer at once), then the same requests
sent directly, through `ember serve --upstream`, and through LiteLLM's
proxy (`litellm[proxy]` from the Python registry) configured to the same
stub. Load from `hey` (Debian's package, installed if missing), for
`--seconds` per cell, at 1 and 64 concurrent clients, non-streamed and
streamed. Prints a Markdown table (p50/p99 latency, requests/s, and the
latency each gateway adds over direct) and writes one JSON row per cell.

    scripts/bench_gateway.py [--seconds 10] [--out docs/gateway_overhead.jsonl]

It builds `ember` with the feature set of scripts/test.sh (so Burn is not
compiled a second time) and the stub. Each server gets one worker (actix
worker / uvicorn worker): this machine has 2 cores, shared with the load
generator and the stub.
"""

import argparse
import json
import secrets
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("EMBER_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ember")
TARGET = Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target")
# The newest release whose `proxy` extra installs: later ones pin
# `litellm-proxy` or `litellm-proxy-extras` releases the Python registry lacks.
LITELLM = "litellm[proxy]==1.106.12"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url, proc, seconds=120):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{url}: the server exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except Exception:
            time.sleep(0.3)
    sys.exit(f"{url} did not answer within {seconds} s")


def tools():
    features = ["--features", "ember-cli/wgpu ember-model/test-wgpu"]
    subprocess.run(["cargo", "build", "--release", "--locked", "--workspace", *features, "--bin", "ember", "--example", "stub_upstream"],
                   cwd=ROOT, check=True)
    if shutil.which("hey") is None:
        sudo = [] if os.geteuid() == 0 else ["sudo"]
        subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", "hey"], check=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    venv = CACHE / "venv-litellm"
    marker = venv / "installed.txt"
    if not marker.exists() or marker.read_text() != LITELLM:
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", LITELLM], check=True)
        marker.write_text(LITELLM)
    return venv / "bin" / "litellm"


def percentile(sorted_values, q):
    """The nearest-rank percentile."""
    index = max(0, min(len(sorted_values) - 1, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[index]


def load(url, key, stream, clients, seconds):
    """`hey` for `seconds` with `clients` connections; its per-request CSV
    (response-time,DNS+dialup,DNS,Request-write,Response-delay,
    Response-read,status-code,offset) gives the latencies and the rate."""
    body = {"model": "stub", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16, "stream": stream}
    out = subprocess.run(
        ["hey", "-z", f"{seconds}s", "-c", str(clients), "-o", "csv", "-m", "POST", "-T", "application/json",
         "-H", f"authorization: Bearer {key}", "-d", json.dumps(body), f"{url}/v1/chat/completions"],
        check=True, capture_output=True, text=True,
    )
    latencies, ends, requests = [], [], 0
    for line in out.stdout.splitlines()[1:]:
        fields = line.split(",")
        if len(fields) < 8:
            continue
        requests += 1
        if fields[6].startswith("2"):
            latencies.append(float(fields[0]))
            ends.append(float(fields[7]) + float(fields[0]))
    if not latencies:
        sys.exit(f"{url}: no request succeeded")
    latencies.sort()
    return {
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "requests_per_s": len(latencies) / max(ends),
        "ok": len(latencies),
        "requests": requests,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--out", default="docs/gateway_overhead.jsonl")
    args = parser.parse_args()
    litellm = tools()
    logs = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    procs = []
    # Both gateways check an API key, as in production (LiteLLM's proxy
    # refuses to start without one).
    key = "sk-" + secrets.token_hex(32)
    try:
        stub_port, ember_port, litellm_port = free_port(), free_port(), free_port()
        stub = TARGET / "release" / "examples" / "stub_upstream"
        procs.append(subprocess.Popen([str(stub), str(stub_port), "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_ready(f"http://127.0.0.1:{stub_port}/v1/models", procs[-1])
        # One HTTP worker, as LiteLLM's one uvicorn worker.
        config = logs / "ember.toml"
        config.write_text("[server]\nworkers = 1\n")
        ember_log = open(logs / "ember.log", "w")
        procs.append(subprocess.Popen(
            [str(TARGET / "release" / "ember"), "serve", "--config", str(config), "--port", str(ember_port),
             "--upstream", f"http://127.0.0.1:{stub_port}"],
            stdout=ember_log, stderr=ember_log, env={**os.environ, "RUST_LOG": "warn", "EMBER_API_KEY": key},
        ))
        wait_ready(f"http://127.0.0.1:{ember_port}/health", procs[-1])
        litellm_config = logs / "litellm.yaml"
        litellm_config.write_text(
            "model_list:\n"
            "  - model_name: stub\n"
            "    litellm_params:\n"
            "      model: openai/stub\n"
            f"      api_base: http://127.0.0.1:{stub_port}/v1\n"
            "      api_key: sk-bench\n"
            "general_settings:\n"
            f"  master_key: {key}\n"
        )
        litellm_log = open(logs / "litellm.log", "w")
        procs.append(subprocess.Popen(
            [str(litellm), "--config", str(litellm_config), "--port", str(litellm_port), "--num_workers", "1"],
            stdout=litellm_log, stderr=litellm_log, env={**os.environ, "LITELLM_LOG": "ERROR"},
        ))
        wait_ready(f"http://127.0.0.1:{litellm_port}/health/liveliness", procs[-1], seconds=300)
        targets = {
            "direct": f"http://127.0.0.1:{stub_port}",
            "ember": f"http://127.0.0.1:{ember_port}",
            "litellm": f"http://127.0.0.1:{litellm_port}",
        }
        rows = []
        for stream in (False, True):
            for clients in (1, 64):
                for name, url in targets.items():
                    load(url, key, stream, clients, 2)  # warm up
                    row = {"target": name, "stream": stream, "clients": clients, **load(url, key, stream, clients, args.seconds)}
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr)
        with open(ROOT / args.out, "w") as out:
            for row in rows:
                out.write(json.dumps(row) + "\n")
        print("| answer | clients | target | p50 ms | p99 ms | added p50 ms | requests/s | ok |")
        print("|---|---:|---|---:|---:|---:|---:|---:|")
        for row in rows:
            direct = next(r for r in rows if r["target"] == "direct" and r["stream"] == row["stream"] and r["clients"] == row["clients"])
            added = row["p50_ms"] - direct["p50_ms"]
            print(f"| {'streamed' if row['stream'] else 'whole'} | {row['clients']} | {row['target']} | {row['p50_ms']:.2f} | "
                  f"{row['p99_ms']:.2f} | {'-' if row['target'] == 'direct' else f'{added:.2f}'} | {row['requests_per_s']:.0f} | "
                  f"{row['ok']}/{row['requests']} |")
    finally:
        for p in procs:
            p.kill()
            p.wait()


if __name__ == "__main__":
    main()
