#!/usr/bin/env python3
"""Load against a running `ember serve` (or any OpenAI-compatible server)
with concurrent streaming chat clients, using the official `openai` SDK.

For each concurrency level, that many clients send streaming chat requests
back to back (a closed loop) until the level's request count is done; each
stream is timed from the client. Prints requests/s, output tokens/s, TTFT,
inter-token and end-to-end latency percentiles, and how many requests
completed or failed (with the errors), as a table and as JSON.

    python3 scripts/http_load.py --base-url http://127.0.0.1:8080/v1 \
        --model SmolLM2-135M-Instruct.Q4_1 --concurrency 1,16,64

Needs `openai` (scripts/client-tests.sh's venv has it).
"""

import argparse
import asyncio
import json
import time

import openai


def pct(values, p):
    if not values:
        return 0.0
    values = sorted(values)
    k = max(1, int(-(-p * len(values) // 100)))
    return values[min(k, len(values)) - 1]


async def one_request(client, args, i):
    start = time.perf_counter()
    first, last, gaps, tokens = None, None, [], 0
    stream = await client.chat.completions.create(
        model=args.model,
        messages=[{"role": "user", "content": f"Request {i}: write a short story about a lighthouse keeper."}],
        max_tokens=args.output_len,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    async for chunk in stream:
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
            continue
        if chunk.choices and chunk.choices[0].delta.content:
            now = time.perf_counter()
            if first is None:
                first = now
            else:
                gaps.append(now - last)
            last = now
    end = time.perf_counter()
    return {"ttft": (first or end) - start, "gaps": gaps, "e2e": end - start, "tokens": tokens}


async def level(args, concurrency, count):
    client = openai.AsyncOpenAI(base_url=args.base_url, api_key=args.api_key, max_retries=0, timeout=600)
    next_i, results, errors = 0, [], []

    async def worker():
        nonlocal next_i
        while next_i < count:
            i = next_i
            next_i += 1
            try:
                results.append(await one_request(client, args, i))
            except openai.APIError as e:  # a clear error still counts as answered
                errors.append(f"{type(e).__name__}: {e}")

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    duration = time.perf_counter() - start
    await client.close()
    ttft = [r["ttft"] * 1000 for r in results]
    itl = [g * 1000 for r in results for g in r["gaps"]]
    e2e = [r["e2e"] * 1000 for r in results]
    tokens = sum(r["tokens"] for r in results)
    return {
        "concurrency": concurrency, "requests": count, "completed": len(results), "errors": len(errors),
        "error_kinds": sorted(set(errors))[:5], "duration_s": duration,
        "requests_per_s": len(results) / duration, "output_tokens_per_s": tokens / duration,
        "ttft_p50_ms": pct(ttft, 50), "ttft_p99_ms": pct(ttft, 99),
        "itl_p50_ms": pct(itl, 50), "itl_p99_ms": pct(itl, 99),
        "e2e_p50_ms": pct(e2e, 50), "e2e_p99_ms": pct(e2e, 99),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base-url", default="http://127.0.0.1:8080/v1")
    p.add_argument("--api-key", default="unused")
    p.add_argument("--model", required=True)
    p.add_argument("--concurrency", default="1,16,64")
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--requests", type=int, help="per level [default: twice the concurrency, at least 8]")
    args = p.parse_args()
    levels = []
    for c in [int(x) for x in args.concurrency.split(",")]:
        levels.append(asyncio.run(level(args, c, args.requests or max(2 * c, 8))))
    print(f"{'conc':>5} {'reqs':>5} {'ok':>4} {'err':>4} {'req/s':>7} {'tok/s':>7} {'TTFT p50':>9} {'TTFT p99':>9} "
          f"{'ITL p50':>8} {'ITL p99':>8} {'e2e p50':>8} {'e2e p99':>8}")
    for l in levels:
        print(f"{l['concurrency']:>5} {l['requests']:>5} {l['completed']:>4} {l['errors']:>4} {l['requests_per_s']:>7.2f} "
              f"{l['output_tokens_per_s']:>7.1f} {l['ttft_p50_ms']:>7.0f}ms {l['ttft_p99_ms']:>7.0f}ms "
              f"{l['itl_p50_ms']:>6.0f}ms {l['itl_p99_ms']:>6.0f}ms {l['e2e_p50_ms']:>6.0f}ms {l['e2e_p99_ms']:>6.0f}ms")
        for e in l["error_kinds"]:
            print(f"      error: {e}")
    print(json.dumps({"levels": levels}))


if __name__ == "__main__":
    main()
