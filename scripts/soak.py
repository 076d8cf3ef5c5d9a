#!/usr/bin/env python3
"""Soak test: many concurrent clients against one `ember serve` in rounds.

A small KV pool forces preemption; the test checks that nothing leaks or hangs.

Why: preemption, cancellation (clients that hang up mid-stream or give up
before the answer), constrained decoding and n>1 all free and re-take KV
blocks and per-request state; a leak or a stall only shows after many
requests. Each round runs C clients for S seconds on a mix of
  - chat, streamed (a third hang up after the first few chunks) and not
    (some give up client-side before the answer: the socket is closed),
  - /v1/completions with n=2,
  - chat with a `json_schema` response_format (the content must parse and
    match the schema),
  - /generate, streamed or not;
then checks
  - every request the client kept got a well-formed 200, or a 429 with
    Retry-After (a client backs off as told), within its deadline;
  - the server goes idle: running = waiting = 0 and no KV block in use,
    read from /metrics, within --idle-timeout seconds;
  - a greedy canary (temperature 0, fixed prompt) answers as before the load;
  - the server's VmRSS after round k (k >= 2) is within --rss-tolerance of
    round 1;
and at the end that the log has no panic and SIGTERM exits 0.

    scripts/soak.py [--ember PATH] [--seconds 180] [--clients 48] [--rounds 3]
    scripts/soak.py --quick        # CI: 16 clients, 2 rounds of 6 s, max_tokens <= 16 (~25 s)

Standard library only; talks to 127.0.0.1 only. Prints a summary (requests
by kind and outcome, pool saturation, RSS per round) and `N passed, N failed`.
"""

import argparse
import asyncio
import json
import random
import re
import sys
import time
from collections import Counter

import reliability_common as rc
from reliability_common import MODEL, ProtocolError, Response, jbody

TOPICS = ["a lighthouse", "the moon", "bread", "rivers", "a fox", "winter", "clocks", "the sea", "trains", "bees"]

ANSWER_SCHEMA = {
    "type": "object",
    "properties": {
        "answer": {"type": "string", "enum": ["yes", "no", "maybe"]},
        "confident": {"type": "boolean"},
    },
    "required": ["answer", "confident"],
    "additionalProperties": False,
}

# kind -> weight in the mix
MIX = {"chat_stream": 4, "chat": 3, "completions_n2": 2, "json_schema": 2, "generate": 1, "generate_stream": 1}

# Longest answer asked for (chat; the others ask for up to 2/3 of it). A
# JSON-schema answer always may take 48: the schema's longest answer is ~16.
MAX_TOKENS = 48

# Outcomes that are not failures.
GOOD = {"ok", "429", "hung_up", "gave_up"}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ember", default=rc.default_ember(), help="the ember binary [default: %(default)s]")
    p.add_argument("--seconds", type=float, default=180, help="load per round [default: 180]")
    p.add_argument("--clients", type=int, default=48, help="concurrent clients [default: 48]")
    p.add_argument("--rounds", type=int, default=3, help="rounds [default: 3]")
    p.add_argument("--kv-cache-memory", default="16MiB", help="the server's KV pool [default: 16MiB]")
    p.add_argument("--max-num-seqs", type=int, default=16)
    p.add_argument("--max-queue-len", type=int, help="[default: 3/4 of the clients, at least 4: some 429s]")
    p.add_argument("--deadline", type=float, default=120, help="per-request deadline, seconds [default: 120]")
    p.add_argument("--idle-timeout", type=float, default=10, help="seconds to go idle after a round [default: 10]")
    p.add_argument("--rss-tolerance", type=float, default=0.10, help="RSS growth allowed vs round 1 [default: 0.10]")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--max-tokens", type=int, default=48, help="longest answer asked for [default: 48]")
    p.add_argument("--quick", action="store_true", help="CI: 16 clients, 2 rounds of 6 s, answers of at most 16 tokens")
    a = p.parse_args()
    if a.quick:
        a.clients, a.seconds, a.rounds, a.max_tokens = 16, 6, 2, 16
    if a.max_queue_len is None:
        a.max_queue_len = max(4, a.clients * 3 // 4)
    return a


# --------------------------------------------------------------------------
# Request bodies


def prompt_text(rng: random.Random) -> str:
    text = f"Write two sentences about {rng.choice(TOPICS)}."
    if rng.random() < 0.25:  # a longer prompt, so the pool fills faster
        text += " Some context: " + " ".join(rng.choice(TOPICS) for _ in range(rng.randint(20, 60)))
    return text


def chat_body(rng, stream: bool) -> dict:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": prompt_text(rng)}],
        "max_tokens": rng.randint(8, MAX_TOKENS),
        "temperature": rng.choice([0, 0.7, 1.0]),
        "stream": stream,
    }
    if rng.random() < 0.5:
        body["ignore_eos"] = True
    return body


def completions_body(rng) -> dict:
    return {"model": MODEL, "prompt": prompt_text(rng), "n": 2, "max_tokens": rng.randint(8, MAX_TOKENS * 2 // 3),
            "temperature": 0.8, "seed": rng.randint(0, 1 << 30)}


def json_schema_body(rng) -> dict:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"Is {rng.choice(TOPICS)} blue? Answer in JSON."}],
        "max_tokens": 48,
        "temperature": rng.choice([0, 0.7]),
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": ANSWER_SCHEMA}},
    }


def generate_body(rng, stream: bool) -> dict:
    return {"prompt": prompt_text(rng), "max_tokens": rng.randint(8, MAX_TOKENS * 2 // 3), "stream": stream}


# --------------------------------------------------------------------------
# Answer checks: each returns None when the answer is well formed, else why not


def check_chat(obj, n=1):
    if obj.get("object") != "chat.completion" or len(obj.get("choices", [])) != n:
        return f"not a chat.completion with {n} choice(s)"
    for c in obj["choices"]:
        if not isinstance(c.get("message", {}).get("content"), str):
            return "a choice without string content"
        if c.get("finish_reason") not in ("stop", "length"):
            return f"finish_reason {c.get('finish_reason')!r}"
    if not isinstance(obj.get("usage", {}).get("completion_tokens"), int):
        return "no usage"
    return None


def check_json_schema(obj):
    problem = check_chat(obj)
    if problem:
        return problem
    content = obj["choices"][0]["message"]["content"]
    try:
        value = json.loads(content)
    except ValueError:
        return f"content is not JSON: {content[:200]!r} (finish_reason {obj['choices'][0]['finish_reason']})"
    if not (isinstance(value, dict) and set(value) == {"answer", "confident"}
            and value["answer"] in ("yes", "no", "maybe") and isinstance(value["confident"], bool)):
        return f"content does not match the schema: {content[:200]!r}"
    return None


def check_completions(obj, n=2):
    choices = obj.get("choices", [])
    if obj.get("object") != "text_completion" or sorted(c.get("index") for c in choices) != list(range(n)):
        return f"not a text_completion with choices 0..{n - 1}"
    for c in choices:
        if not isinstance(c.get("text"), str) or c.get("finish_reason") not in ("stop", "length"):
            return f"bad choice {json.dumps(c)[:200]}"
    return None


def check_generate(obj):
    if not isinstance(obj.get("text"), str) or obj.get("finish_reason") not in ("stop", "length"):
        return f"bad /generate answer {json.dumps(obj)[:200]}"
    return None


def check_events(events, kind):
    """A complete stream: JSON chunks, one finish_reason, then [DONE]."""
    problem = rc.stream_problem(Response(200, {}, events=events))
    if problem:
        return problem
    finishes = 0
    for e in events[:-1]:
        obj = json.loads(e)
        if kind == "chat_stream":
            if obj.get("object") != "chat.completion.chunk":
                return f"not a chat.completion.chunk: {e[:200]}"
            finishes += sum(1 for c in obj.get("choices", []) if c.get("finish_reason"))
        else:
            finishes += 1 if obj.get("finish_reason") else 0
    return None if finishes == 1 else f"{finishes} finish_reasons in the stream"


# --------------------------------------------------------------------------
# One request of each kind -> an outcome string


def answer(resp: Response, check) -> str:
    if resp.status == 200:
        try:
            problem = check(resp.json())
        except ValueError:
            problem = f"body is not JSON: {resp.body[:200]!r}"
        return "ok" if problem is None else f"malformed: {problem}"
    return status_outcome(resp)


def status_outcome(resp: Response) -> str:
    if resp.status == 429:
        if "retry-after" not in resp.headers:
            return "429 without Retry-After"
        shape = rc.error_shape_problem(resp)
        return "429" if shape is None else f"429 {shape}"
    return f"status {resp.status}: {resp.body[:300]!r}"


async def plain(port, path, body, check, deadline) -> tuple[str, Response | None]:
    resp = await rc.request(port, "POST", path, jbody(body), timeout=deadline)
    return answer(resp, check), resp


async def streamed(port, path, body, kind, hang_up_after: int | None, deadline) -> tuple[str, Response | None]:
    """Reads a stream; with `hang_up_after`, closes the socket after that many events."""

    async def go():
        reader, writer = await rc.send(port, "POST", path, jbody(body))
        try:
            status, headers = await rc.read_head(reader)
            resp = Response(status, headers)
            sse = rc.SseParser()
            async for piece in rc.body_pieces(reader, headers):
                resp.body += piece
                if status == 200:
                    resp.events += sse.feed(piece)
                    if hang_up_after is not None and len(resp.events) >= hang_up_after and resp.events[-1] != "[DONE]":
                        return "hung_up", resp
            if status != 200:
                return status_outcome(resp), resp
            problem = check_events(resp.events, kind)
            return ("ok" if problem is None else f"malformed: {problem}"), resp
        finally:
            rc.close(writer)

    return await asyncio.wait_for(go(), deadline)


async def give_up(port, path, body, after: float) -> tuple[str, None]:
    """Sends a non-streamed request and closes the socket before the answer.
    An answer whose head arrives first (a fast request, or an error) counts
    by its status: 200, or 429 with Retry-After, else a failure."""
    reader, writer = await rc.send(port, "POST", path, jbody(body))
    try:
        status, headers = await asyncio.wait_for(rc.read_head(reader), after)
    except asyncio.TimeoutError:
        return "gave_up", None
    finally:
        rc.close(writer)
    if status == 200 or (status == 429 and "retry-after" in headers):
        return ("ok" if status == 200 else "429"), None
    return f"status {status} (before giving up)", None


async def one_request(port, rng, kind, deadline, abandon=True) -> tuple[str, Response | None]:
    """One request of `kind`; with `abandon`, a third of streams hang up and
    a quarter of non-streamed chats give up."""
    hang = rng.randint(2, 4) if abandon and rng.random() < 1 / 3 else None
    if kind == "chat_stream":
        return await streamed(port, "/v1/chat/completions", chat_body(rng, True), kind, hang, deadline)
    if kind == "chat":
        if abandon and rng.random() < 0.25:
            return await give_up(port, "/v1/chat/completions", chat_body(rng, False), rng.uniform(0.05, 1.5))
        return await plain(port, "/v1/chat/completions", chat_body(rng, False), check_chat, deadline)
    if kind == "completions_n2":
        return await plain(port, "/v1/completions", completions_body(rng), check_completions, deadline)
    if kind == "json_schema":
        return await plain(port, "/v1/chat/completions", json_schema_body(rng), check_json_schema, deadline)
    if kind == "generate":
        return await plain(port, "/generate", generate_body(rng, False), check_generate, deadline)
    return await streamed(port, "/generate", generate_body(rng, True), "generate_stream", hang, deadline)


# --------------------------------------------------------------------------
# A round


class RoundStats:
    def __init__(self):
        self.outcomes = Counter()  # (kind, outcome-class) -> count
        self.failures = []  # (kind, detail)
        self.peak = Counter()  # gauge -> max seen
        self.latencies = []

    def record(self, kind, outcome, elapsed):
        cls = outcome if outcome in GOOD else "FAIL"
        self.outcomes[(kind, cls)] += 1
        if cls == "FAIL":
            self.failures.append((kind, outcome))
        elif outcome == "ok":
            self.latencies.append(elapsed)


async def client(port, index, seed, stop_at, deadline, stats: RoundStats):
    """Requests back to back until `stop_at`. The first is kind `index` of the
    mix, kept to the end, so even a short round answers every kind."""
    rng = random.Random(seed)
    kinds, weights = list(MIX), list(MIX.values())
    for i in range(100_000):  # bounded: the round's clock stops it long before
        if time.monotonic() >= stop_at:
            return
        kind = kinds[index % len(kinds)] if i == 0 else rng.choices(kinds, weights)[0]
        started = time.monotonic()
        try:
            outcome, resp = await one_request(port, rng, kind, deadline, abandon=i > 0)
        except asyncio.TimeoutError:
            outcome, resp = f"no answer within the {deadline:.0f} s deadline", None
        except (ProtocolError, OSError) as e:
            outcome, resp = f"connection: {type(e).__name__}: {e}", None
        stats.record(kind, outcome, time.monotonic() - started)
        if outcome == "429":
            retry = float(resp.headers.get("retry-after", "1")) if resp else 1.0
            await asyncio.sleep(min(retry, 5.0) * rng.uniform(1.0, 1.5))  # as told, with jitter


async def sample_gauges(port, stop_at, stats: RoundStats):
    names = ["ember:num_requests_running", "ember:num_requests_waiting", "ember:kv_cache_usage_perc"]
    while time.monotonic() < stop_at:
        try:
            m = await rc.metrics(port)
            for n in names:
                stats.peak[n] = max(stats.peak[n], m.get(n, 0))
        except (ProtocolError, OSError, asyncio.TimeoutError):
            pass
        await asyncio.sleep(0.25)


async def run_round(args, port, r) -> RoundStats:
    stats = RoundStats()
    stop_at = time.monotonic() + args.seconds
    sampler = asyncio.create_task(sample_gauges(port, stop_at, stats))
    clients = [client(port, i, args.seed * 1000 + r * 100 + i, stop_at, args.deadline, stats) for i in range(args.clients)]
    await asyncio.gather(*clients)
    await sampler
    return stats


def print_round(r, stats: RoundStats, elapsed):
    kinds = list(MIX)
    cols = ["ok", "429", "hung_up", "gave_up", "FAIL"]
    print(f"\nround {r + 1}: {sum(stats.outcomes.values())} requests in {elapsed:.0f} s")
    print(f"  {'kind':<16}" + "".join(f"{c:>9}" for c in cols))
    for k in kinds:
        print(f"  {k:<16}" + "".join(f"{stats.outcomes[(k, c)]:>9}" for c in cols))
    lat = sorted(stats.latencies)
    if lat:
        print(f"  latency of ok requests: p50 {lat[len(lat) // 2]:.2f} s, max {lat[-1]:.2f} s")
    print("  peaks: " + ", ".join(f"{k.split(':')[1]} {v:g}" for k, v in stats.peak.items()))
    for kind, detail in stats.failures[:20]:
        print(f"  FAILED {kind}: {detail}")
    if len(stats.failures) > 20:
        print(f"  ... and {len(stats.failures) - 20} more failures")


# --------------------------------------------------------------------------


def pool_tokens(report: str) -> int | None:
    m = re.search(r"\((\d+) tokens\)", report)
    return int(m.group(1)) if m else None


async def soak(args, server: rc.Server, ledger: rc.Ledger):
    port = server.port
    report = server.startup_report()
    print(f"server: {report}")
    tokens = pool_tokens(report)
    # The longest request: ~110 prompt tokens with the chat template, plus its answer.
    longest = 110 + args.max_tokens
    ledger.check(tokens is not None and tokens < args.max_num_seqs * longest, "KV pool smaller than max_num_seqs long requests",
                 f"{tokens} tokens for {args.max_num_seqs} x ~{longest}")
    baseline = await rc.canary(port)
    print(f"canary: {baseline!r}")
    rss = []
    totals = Counter()
    peak_kv = 0.0
    for r in range(args.rounds):
        started = time.monotonic()
        stats = await run_round(args, port, r)
        print_round(r, stats, time.monotonic() - started)
        totals.update(stats.outcomes)
        peak_kv = max(peak_kv, stats.peak["ember:kv_cache_usage_perc"])
        n = sum(stats.outcomes.values())
        ledger.check(not stats.failures, f"round {r + 1}: every kept request well formed (200, or 429 + Retry-After)",
                     f"{n - len(stats.failures)}/{n}" + (f"; first: {stats.failures[0][0]}: {stats.failures[0][1][:300]}" if stats.failures else ""))
        idle, took, last = await rc.wait_idle(port, args.idle_timeout)
        ledger.check(idle, f"round {r + 1}: idle after the load (running, waiting, KV usage all 0)",
                     f"after {took:.1f} s: {last}")
        after = await rc.canary(port)
        ledger.check(after == baseline, f"round {r + 1}: greedy canary unchanged", "" if after == baseline else f"{after!r} != {baseline!r}")
        mem = server.rss_kib()
        rss.append(mem)
        print(f"  RSS after round {r + 1}: {mem['VmRSS'] / 1024:.1f} MiB (peak {mem['VmHWM'] / 1024:.1f} MiB)")
        if r > 0:
            growth = mem["VmRSS"] / rss[0]["VmRSS"] - 1
            ledger.check(growth <= args.rss_tolerance, f"round {r + 1}: RSS within {args.rss_tolerance:.0%} of round 1",
                         f"{rss[0]['VmRSS'] / 1024:.1f} -> {mem['VmRSS'] / 1024:.1f} MiB ({growth:+.1%})")
    ledger.check(peak_kv >= 0.8, "the KV pool filled up under load (preemption pressure)", f"peak usage {peak_kv:.2f}")
    for kind in MIX:
        ledger.check(totals[(kind, "ok")] > 0, f"{kind}: at least one request answered", f"{totals[(kind, 'ok')]} ok")
    print_summary(args, totals, rss)


def print_summary(args, totals, rss):
    print("\nsummary")
    print(f"  {args.rounds} round(s) x {args.seconds:g} s, {args.clients} clients, "
          f"--kv-cache-memory {args.kv_cache_memory} --max-num-seqs {args.max_num_seqs} --max-queue-len {args.max_queue_len}")
    for kind in MIX:
        row = {c: totals[(kind, c)] for c in ["ok", "429", "hung_up", "gave_up", "FAIL"]}
        print(f"  {kind:<16} " + " ".join(f"{k}={v}" for k, v in row.items()))
    print(f"  requests: {sum(totals.values())}")
    print("  preemptions: not exported by /metrics (EngineStats.preemptions is not in the gateway's registry);"
          " the pool-saturation check above stands in for it")
    print("  RSS per round (MiB): " + ", ".join(f"{m['VmRSS'] / 1024:.1f}" for m in rss))


def main():
    global MAX_TOKENS
    args = parse_args()
    MAX_TOKENS = args.max_tokens
    ledger = rc.Ledger()
    server = rc.Server(args.ember, extra_args=[
        "--kv-cache-memory", args.kv_cache_memory, "--max-num-seqs", str(args.max_num_seqs),
        "--max-queue-len", str(args.max_queue_len)], name="soak")

    def body():
        asyncio.run(soak(args, server, ledger))
        ledger.check(server.alive(), "server still running after the load")

    rc.run_checked(server, ledger, "soak", body)
    print(f"server log: {server.log_path}")
    sys.exit(ledger.finish())


if __name__ == "__main__":
    main()
