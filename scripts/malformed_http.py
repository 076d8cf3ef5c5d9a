#!/usr/bin/env python3
"""Malformed-request test: generated bad bodies against every POST route.

Hundreds of bad (and borderline) bodies per route, made by
scripts/malformed_cases.py, sent over raw sockets to one `ember serve`.

Why: Ember's invariant is that everything a client can get wrong is an
OpenAI-shaped 4xx naming the field, and that nothing a client sends can
panic the server. This throws wrong types, missing and unknown fields, huge,
negative and subnormal numbers (temperature 1e-40), NaN/Infinity literals,
deep nesting, invalid UTF-8 bytes, bodies over the 4 MiB limit (with a
Content-Length and chunked), odd roles and content parts, broken tools and
JSON schemas, huge max_tokens, n = 0/1000, ... at

    POST /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/responses,
         /v1/messages, /v1/messages/count_tokens, /generate, /tokenize, /detokenize

(Anthropic's routes answer errors in Anthropic's shape, which has the same
error.message and error.type; their streams and the Responses API's end
with their own last event instead of [DONE].)

The bodies come from a seeded generator (--seed), so a run is repeatable.
Bodies that may succeed keep max_tokens at 8 or less (the server also runs
with --max-model-len 256), so the run is quick. Pass: every answer is a 4xx
in OpenAI's error shape (JSON with error.message and error.type) or a valid
200 (a JSON answer of the route's shape, or an event stream with no error
event that ends with [DONE]); no 5xx, no dropped connection, no hang; the
server still answers a normal request at the end and its log has no panic.
Each failing body is printed (truncated) and saved whole, with a curl line
to replay it, under the run's directory.

    scripts/malformed_http.py [--ember PATH] [--count 300] [--seed 0]
    scripts/malformed_http.py --quick      # CI: 80 bodies per route, 8 at a time (~20 s)

Standard library only; talks to 127.0.0.1 only.
"""

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import reliability_common as rc
from malformed_cases import ROUTES, Case, build_cases
from reliability_common import MODEL, ProtocolError

EMBED_FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "qwen3-embed-tiny"

# --------------------------------------------------------------------------
# Sending and judging


@dataclass
class Result:
    case: Case
    status: int | None = None
    problem: str | None = None
    reply: bytes = b""
    seconds: float = 0.0


def request_bytes(port, c: Case) -> bytes:
    lines = [f"{c.method} {c.route} HTTP/1.1", f"Host: {rc.HOST}:{port}", "Connection: close"]
    if c.content_type:
        lines.append(f"Content-Type: {c.content_type}")
    if c.chunked:
        lines.append("Transfer-Encoding: chunked")
        pieces = [c.body[i:i + 65536] for i in range(0, len(c.body), 65536)]
        body = b"".join(b"%x\r\n" % len(p) + p + b"\r\n" for p in pieces) + b"0\r\n\r\n"
    else:
        lines.append(f"Content-Length: {len(c.body)}")
        body = c.body
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def send_case(port, c: Case, timeout: float) -> Result:
    """Writes the request while reading the answer, so an early 413 is seen
    even if the server stops reading the body."""
    started = time.monotonic()
    res = Result(c)
    try:
        reader, writer = await asyncio.wait_for(rc.connect(port), timeout)
    except (OSError, asyncio.TimeoutError) as e:
        res.problem = f"cannot connect: {type(e).__name__}: {e}"
        return res

    async def write():
        try:
            writer.write(request_bytes(port, c))
            await writer.drain()
        except (ConnectionError, OSError):
            pass

    writer_task = asyncio.create_task(write())
    try:
        resp = await asyncio.wait_for(read_whole(reader), timeout)
        res.status, res.reply = resp.status, resp.body
        res.problem = judge(c, resp)
    except asyncio.TimeoutError:
        res.problem = f"no complete answer within {timeout:.0f} s (hang)"
    except (ProtocolError, ConnectionError, OSError) as e:
        res.problem = f"dropped connection: {type(e).__name__}: {e}"
    finally:
        writer_task.cancel()
        rc.close(writer)
    res.seconds = time.monotonic() - started
    return res


async def read_whole(reader) -> rc.Response:
    status, headers = await rc.read_head(reader)
    resp = rc.Response(status, headers)
    sse = rc.SseParser() if headers.get("content-type", "").startswith("text/event-stream") else None
    async for piece in rc.body_pieces(reader, headers):
        resp.body += piece
        if sse:
            resp.events += sse.feed(piece)
    return resp


def judge(c: Case, resp: rc.Response) -> str | None:
    """None when the answer is acceptable, else why not."""
    if 400 <= resp.status < 500:
        return rc.error_shape_problem(resp)
    if resp.status != 200:
        return f"status {resp.status}"
    if resp.headers.get("content-type", "").startswith("text/event-stream"):
        return named_stream_problem(c.route, resp) if c.route in LAST_EVENTS else rc.stream_problem(resp)
    try:
        obj = resp.json()
    except ValueError:
        return f"200 with a body that is not JSON: {resp.body[:200]!r}"
    return shape_problem(c.route, obj)


# The events that end a complete stream of the routes without `[DONE]`.
LAST_EVENTS = {"/v1/responses": ("response.completed", "response.incomplete"), "/v1/messages": ("message_stop",)}


def named_stream_problem(route, resp) -> str | None:
    """Why a Responses or Messages stream is not complete and error-free, or None."""
    try:
        events = [json.loads(e) for e in resp.events]
    except ValueError:
        return "an event that is not JSON"
    if not events or events[-1].get("type") not in LAST_EVENTS[route]:
        return f"the stream does not end with {LAST_EVENTS[route]} (last: {json.dumps(events[-1:])[:200]})"
    failed = [e for e in events if e.get("type") in ("error", "response.failed")]
    return f"an error event in a 200 stream: {json.dumps(failed[0])[:300]}" if failed else None


def shape_problem(route, obj) -> str | None:
    expect = {
        "/v1/chat/completions": lambda o: o.get("object") == "chat.completion" and all(
            "message" in ch and ch.get("finish_reason") for ch in o.get("choices", [])) and o.get("choices"),
        "/v1/completions": lambda o: o.get("object") == "text_completion" and all(
            isinstance(ch.get("text"), str) and ch.get("finish_reason") for ch in o.get("choices", [])) and o.get("choices"),
        "/v1/embeddings": lambda o: o.get("object") == "list" and o.get("data") and all(
            d.get("object") == "embedding" for d in o["data"]),
        "/v1/responses": lambda o: o.get("object") == "response" and o.get("status") in ("completed", "incomplete")
            and isinstance(o.get("output"), list),
        "/v1/messages": lambda o: o.get("type") == "message" and isinstance(o.get("content"), list)
            and o.get("stop_reason") in ("end_turn", "max_tokens", "tool_use"),
        "/v1/messages/count_tokens": lambda o: isinstance(o.get("input_tokens"), int),
        "/generate": lambda o: isinstance(o.get("text"), str) and o.get("finish_reason") in ("stop", "length"),
        "/tokenize": lambda o: isinstance(o.get("tokens"), list) and o.get("count") == len(o["tokens"]),
        "/detokenize": lambda o: isinstance(o.get("prompt"), str),
    }[route]
    return None if isinstance(obj, dict) and expect(obj) else f"200 without the route's answer shape: {json.dumps(obj)[:300]}"


async def run_all(servers: dict, cases, concurrency, timeout) -> list[Result]:
    """Sends every case to its route's server (`servers[route]`, else
    `servers[None]`), `concurrency` at a time; stops sending if a server dies."""
    queue = list(enumerate(cases))
    results = [Result(c, problem="not sent: the server had died") for c in cases]

    async def worker():
        while queue and all(s.alive() for s in servers.values()):
            i, c = queue.pop(0)
            results[i] = await send_case(servers.get(c.route, servers[None]).port, c, timeout)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


# --------------------------------------------------------------------------
# Reporting


def save_failure(outdir: Path, n: int, r: Result) -> Path:
    """The body as sent, and a curl line replaying it against a server on PORT."""
    path = outdir / f"failure-{n:03d}.body"
    path.write_bytes(r.case.body)
    ct = f"-H 'Content-Type: {r.case.content_type}' " if r.case.content_type else ""
    te = "-H 'Transfer-Encoding: chunked' " if r.case.chunked else ""
    (outdir / f"failure-{n:03d}.sh").write_text(
        f"# {r.case.label}\ncurl -sS -i -X {r.case.method} {ct}{te}--data-binary @{path} http://127.0.0.1:PORT{r.case.route}\n")
    return path


def reply_summary(r: Result) -> str:
    try:
        return json.loads(r.reply)["error"]["message"][:120]
    except Exception:
        return r.reply[:80].decode("utf-8", "replace").replace("\n", " ")


def report(results: list[Result], outdir: Path, verbose: bool) -> list[Result]:
    table = Counter((r.case.route, r.status if r.status is not None else "none") for r in results)
    print("\nanswers per route and status")
    for route in ROUTES:
        row = {s: n for (rt, s), n in table.items() if rt == route}
        print(f"  {route:<22} " + "  ".join(f"{s}: {n}" for s, n in sorted(row.items(), key=lambda kv: str(kv[0]))))
    failed = [r for r in results if r.problem]
    if failed:
        print(f"\nfailing bodies ({len(failed)}; saved whole under {outdir}):")
    for n, r in enumerate(failed):
        path = save_failure(outdir, n, r)
        if n == 50:
            print(f"  ... {len(failed) - 50} more, saved under {outdir}")
        if n >= 50:
            continue
        body = r.case.body[:200]
        print(f"  [{n}] {r.case.method} {r.case.route} ({r.case.label}) -> {r.status}: {r.problem[:300]}")
        print(f"      body ({len(r.case.body)} bytes, {path.name}): {body!r}{'...' if len(r.case.body) > 200 else ''}")
        if r.reply:
            print(f"      reply: {r.reply[:300]!r}")
    if verbose:
        print("\nevery body:")
        for r in results:
            print(f"  {r.case.route} {r.case.label[:70]!s:<70} -> {r.status} {reply_summary(r)}")
    slow = sorted(results, key=lambda r: -r.seconds)[:3]
    print("\nslowest: " + "; ".join(f"{r.case.route} {r.case.label} {r.seconds:.1f} s" for r in slow))
    return failed


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ember", default=rc.default_ember(), help="the ember binary [default: %(default)s]")
    p.add_argument("--count", type=int, default=300, help="bodies per route; 0: every hand-written and single-field case, no random combinations [default: 300]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--timeout", type=float, default=60, help="per-request deadline, seconds [default: 60]")
    p.add_argument("--quick", action="store_true", help="CI: 80 bodies per route, 8 at a time, no slow ones")
    p.add_argument("--verbose", action="store_true", help="print every body's label, status and error message")
    a = p.parse_args()
    if a.quick:
        a.count, a.concurrency = 80, 8
    return a


async def final_checks(port, ledger):
    ok = await rc.request(port, "POST", "/v1/chat/completions", rc.jbody(
        {"model": MODEL, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8}), timeout=60)
    ledger.check(ok.status == 200 and shape_problem("/v1/chat/completions", ok.json()) is None,
                 "a normal chat request still answers 200 afterwards", f"status {ok.status}")
    health = await rc.request(port, "GET", "/health", timeout=10)
    ledger.check(health.status == 200, "/health is 200 afterwards", f"status {health.status}")
    idle, took, last = await rc.wait_idle(port, 30)
    ledger.check(idle, "the server is idle afterwards (no leaked sequence or KV block)", f"after {took:.1f} s: {last}")


def main():
    args = parse_args()
    ledger = rc.Ledger()
    cases = build_cases(args.count, args.seed, args.quick)
    server = rc.Server(args.ember, extra_args=["--kv-cache-memory", "64MiB", "--max-model-len", "256", "--max-num-seqs", "16"],
                       name="malformed")
    outdir = Path(tempfile.mkdtemp(prefix="ember-malformed-"))
    started = time.monotonic()

    # /v1/embeddings goes to the tiny Qwen3-Embedding fixture, served under
    # the same name; the default model would refuse every body as generative.
    embedder = rc.Server(args.ember, extra_args=["--model", str(EMBED_FIXTURE), "--served-model-name", MODEL,
                                                 "--kv-cache-memory", "64MiB", "--max-num-seqs", "16"], name="malformed-embed")

    def body():
        print(f"server: {server.startup_report()}")
        embedder.start().wait_ready()
        print(f"{len(cases)} bodies ({args.count or 'all'} per route, seed {args.seed}), {args.concurrency} at a time")
        try:
            results = asyncio.run(run_all({None: server, "/v1/embeddings": embedder}, cases, args.concurrency, args.timeout))
            ledger.check(embedder.alive() and not embedder.panics(), "the embedding server is still running, with no panic",
                         f"exit {embedder.proc.returncode}: {embedder.log_tail()}" if not embedder.alive() else " | ".join(embedder.panics()[:3]))
        finally:
            embedder.stop_checked(ledger)
        report(results, outdir, args.verbose)
        for route in ROUTES:
            mine = [r for r in results if r.case.route == route]
            bad = [r for r in mine if r.problem]
            ledger.check(not bad, f"{route}: every answer a 4xx in OpenAI's shape or a valid 200",
                         f"{len(mine) - len(bad)}/{len(mine)}" + (f"; first failure: {bad[0].case.label} -> {bad[0].problem[:200]}" if bad else ""))
        alive = ledger.check(server.alive(), "the server is still running",
                             "" if server.alive() else f"it exited with {server.proc.returncode}; the bodies it "
                             "was answering are the first 'dropped connection' failures above")
        if not alive:
            print(f"--- server log tail ({server.log_path}):\n{server.log_tail()}")
        if server.alive():
            asyncio.run(final_checks(server.port, ledger))

    rc.run_checked(server, ledger, "malformed_http", body)
    print(f"ran {time.monotonic() - started:.0f} s; server log: {server.log_path}")
    sys.exit(ledger.finish())


if __name__ == "__main__":
    main()
