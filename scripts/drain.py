#!/usr/bin/env python3
"""Shutdown and crash test for `ember serve`.

Why: a deploy restarts servers. SIGTERM must drain (streams in flight run to
their end, new work is refused, the process exits 0 within the shutdown
timeout), and a server killed outright must come back on the same port and
answer exactly as before (no state that a crash could corrupt).

(a) drain: 4 streaming chat requests (ignore_eos, max_tokens 40); after each
    has sent its first content chunk, SIGTERM. Checks: every stream ends with
    a finish_reason ("length") and `data: [DONE]`, with chunks arriving after
    the signal; a new request on a new connection during the drain gets 503
    or is refused (the listener closed), one on a keep-alive connection
    opened before the signal gets 503 or a clean close (which one is printed),
    and one whose body was still arriving at the signal gets an answer (503:
    the only way to reach the handlers' shutting-down path over HTTP/1.1);
    /health is 503 or refused; the process exits 0 within the shutdown
    timeout (30 s, crates/ember-gateway/src/config.rs).
(b) crash: a greedy answer (temperature 0), then load (8 streaming and 4
    non-streamed clients), SIGKILL mid-load. Checks: every client sees the
    connection end (no hang); a new server on the same port becomes healthy,
    answers the greedy request identically, and is idle.

    scripts/drain.py [--ember PATH]

Standard library only; talks to 127.0.0.1 only. Ends with `N passed, N failed`.
"""

import argparse
import asyncio
import json
import signal
import sys
import time

import reliability_common as rc
from reliability_common import MODEL, ProtocolError, jbody

SHUTDOWN_TIMEOUT = 30  # ServerSection::default().shutdown_timeout_secs
SERVE_ARGS = ["--kv-cache-memory", "64MiB", "--max-num-seqs", "8"]

STREAM_BODY = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "Tell me a long story about a lighthouse."}],
    "max_tokens": 40,
    "ignore_eos": True,
    "stream": True,
}


class Stream:
    """A streaming chat request read in the background; `first` is set at
    the first content chunk."""

    def __init__(self, port, body):
        self.port, self.body = port, body
        self.events = []  # (time, data)
        self.first = asyncio.Event()
        self.status = None
        self.error = None
        self.task = asyncio.create_task(self.run())

    async def run(self):
        try:
            reader, writer = await rc.send(self.port, "POST", "/v1/chat/completions", jbody(self.body))
            try:
                self.status, headers = await rc.read_head(reader)
                sse = rc.SseParser()
                async for piece in rc.body_pieces(reader, headers):
                    for e in sse.feed(piece):
                        self.events.append((time.monotonic(), e))
                        if '"content":"' in e and '"content":""' not in e:
                            self.first.set()
            finally:
                rc.close(writer)
        except (ProtocolError, OSError) as e:
            self.error = f"{type(e).__name__}: {e}"
        finally:
            self.first.set()  # never leave a waiter hanging

    def finish_reasons(self):
        out = []
        for _, e in self.events:
            if e != "[DONE]":
                out += [c.get("finish_reason") for c in json.loads(e).get("choices", []) if c.get("finish_reason")]
        return out

    def problem(self) -> str | None:
        if self.error:
            return self.error
        if self.status != 200:
            return f"status {self.status}"
        if not self.events or self.events[-1][1] != "[DONE]":
            return f"no [DONE] at the end (last event {self.events[-1][1][:200] if self.events else None!r})"
        reasons = self.finish_reasons()
        if reasons != ["length"]:
            return f"finish_reasons {reasons}, expected ['length'] (ignore_eos, max_tokens 40)"
        errors = [e for _, e in self.events if '"error"' in e]
        return f"error event {errors[0][:200]}" if errors else None


async def keep_alive_connection(port):
    """A connection with one /health answered and kept open."""
    reader, writer = await rc.connect(port)
    writer.write(f"GET /health HTTP/1.1\r\nHost: {rc.HOST}:{port}\r\n\r\n".encode())
    await writer.drain()
    status, headers = await rc.read_head(reader)
    async for _ in rc.body_pieces(reader, headers):
        pass
    return reader, writer, status


async def half_sent_request(port):
    """A chat request with its last bytes held back: (writer, reader, the rest)."""
    body = jbody({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4})
    data = rc.build_request(port, "POST", "/v1/chat/completions", body)
    reader, writer = await rc.connect(port)
    writer.write(data[:-10])
    await writer.drain()
    return reader, writer, data[-10:]


async def finish_half_sent(half, timeout=15.0) -> str:
    """Sends the held-back bytes; '503', '200', 'closed' or what came instead."""
    reader, writer, rest = half
    try:
        writer.write(rest)
        await writer.drain()
        status, headers = await asyncio.wait_for(rc.read_head(reader), timeout)
        resp = rc.Response(status, headers)
        async for piece in rc.body_pieces(reader, headers):
            resp.body += piece
    except (ProtocolError, ConnectionResetError, BrokenPipeError):
        return "closed"
    except asyncio.TimeoutError:
        return f"no answer within {timeout:.0f} s"
    finally:
        rc.close(writer)
    if resp.status == 503 and rc.error_shape_problem(resp) is None:
        return "503"
    return "200" if resp.status == 200 else f"status {resp.status}: {resp.body[:200]!r}"


async def request_during_drain(port, conn=None, path="/v1/chat/completions", timeout=15.0) -> str:
    """What a request during the drain gets: '503', 'refused', 'closed', or
    something else (a failure). `conn` reuses a keep-alive connection."""
    body = jbody({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}) if path != "/health" else None
    method = "GET" if path == "/health" else "POST"
    try:
        if conn is None:
            reader, writer = await asyncio.wait_for(rc.connect(port), timeout)
        else:
            reader, writer = conn
        try:
            writer.write(rc.build_request(port, method, path, body))
            await writer.drain()
            status, headers = await asyncio.wait_for(rc.read_head(reader), timeout)
            resp = rc.Response(status, headers)
            async for piece in rc.body_pieces(reader, headers):
                resp.body += piece
        finally:
            rc.close(writer)
    except ConnectionRefusedError:
        return "refused"
    except (ProtocolError, ConnectionResetError, BrokenPipeError):
        return "closed"
    except asyncio.TimeoutError:
        return f"no answer within {timeout:.0f} s"
    if resp.status == 503 and (path == "/health" or rc.error_shape_problem(resp) is None):
        return "503"
    return f"status {resp.status}: {resp.body[:200]!r}"


async def drain(args, ledger: rc.Ledger):
    print("\n(a) SIGTERM with 4 streams in flight")
    server = rc.Server(args.ember, extra_args=SERVE_ARGS, name="drain").start()
    try:
        server.wait_ready()
        port = server.port
        kept = await keep_alive_connection(port)
        half = await half_sent_request(port)
        streams = [Stream(port, STREAM_BODY) for _ in range(4)]
        await asyncio.wait_for(asyncio.gather(*(s.first.wait() for s in streams)), 120)
        before = [len(s.events) for s in streams]
        sigterm_at = time.monotonic()
        server.signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        fresh = await request_during_drain(port)
        reused = await request_during_drain(port, conn=kept[:2])
        health = await request_during_drain(port, path="/health")
        late = await finish_half_sent(half)
        await asyncio.wait_for(asyncio.gather(*(s.task for s in streams)), 90)
        after = [sum(1 for t, _ in s.events if t > sigterm_at) for s in streams]
        for i, s in enumerate(streams):
            p = s.problem()
            ledger.check(p is None, f"stream {i + 1} finished through the drain", p or f"{before[i]} events before SIGTERM, {after[i]} after")
        ledger.check(any(after), "chunks kept coming after SIGTERM", f"events after the signal: {after}")
        ledger.check(fresh in ("503", "refused"), "a new connection during the drain: 503 or refused", fresh)
        ledger.check(reused in ("503", "closed"), "a request on a kept-alive connection during the drain: 503 or a clean close", reused)
        ledger.check(health in ("503", "refused"), "/health during the drain: 503 or refused", health)
        ledger.check(late in ("503", "200"), "a request whose body was still arriving at SIGTERM: 503 (or served)", late)
        code = await asyncio.to_thread(server.wait_exit, SHUTDOWN_TIMEOUT + 10)
        took = time.monotonic() - sigterm_at
        ledger.check(code == 0 and took <= SHUTDOWN_TIMEOUT + 2, "the process exits 0 within the shutdown timeout",
                     f"exit code {code} after {took:.1f} s (timeout {SHUTDOWN_TIMEOUT} s)")
    finally:
        server.stop()
    return server


async def load_client(port, i, stop: asyncio.Event) -> str:
    """Requests until the server dies; returns how the last one ended."""
    for _ in range(1000):
        body = dict(STREAM_BODY, max_tokens=64, stream=i % 3 != 0)
        body["messages"] = [{"role": "user", "content": f"Client {i}: tell me about the sea."}]
        try:
            resp = await rc.request(port, "POST", "/v1/chat/completions", jbody(body), timeout=60)
            if stop.is_set():
                return f"completed {resp.status}"
        except (ProtocolError, OSError) as e:
            return f"connection ended ({type(e).__name__})"
        except asyncio.TimeoutError:
            return "hang: no end within 60 s"
    return "ran out of iterations"


async def crash(args, ledger: rc.Ledger):
    print("\n(b) SIGKILL under load, then a restart on the same port")
    server = rc.Server(args.ember, extra_args=SERVE_ARGS, name="crash").start()
    port = server.port
    try:
        server.wait_ready()
        greedy = await rc.canary(port)
        print(f"greedy answer: {greedy!r}")
        stop = asyncio.Event()
        clients = [asyncio.create_task(load_client(port, i, stop)) for i in range(12)]
        for _ in range(100):  # until the engine is busy, at most 20 s
            m = await rc.metrics(port)
            if m.get("ember:num_requests_running", 0) >= 4:
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)
        m = await rc.metrics(port)
        print(f"SIGKILL with {m.get('ember:num_requests_running', 0):g} running, "
              f"{m.get('ember:num_requests_waiting', 0):g} waiting, KV usage {m.get('ember:kv_cache_usage_perc', 0):.2f}")
        stop.set()
        server.proc.kill()
        code = await asyncio.to_thread(server.wait_exit, 10)
        ledger.check(code == -signal.SIGKILL, "the server died of SIGKILL", f"exit {code}")
        ends = await asyncio.wait_for(asyncio.gather(*clients), 70)
        hung = [e for e in ends if e.startswith("hang") or e.startswith("ran out")]
        ledger.check(not hung, "every client saw its connection end (no hang)", f"{sorted(set(ends))}")
    finally:
        server.stop()

    again = rc.Server(args.ember, port=port, extra_args=SERVE_ARGS, name="restart").start()
    try:
        started = time.monotonic()
        again.wait_ready()
        ledger.check(True, "restarted on the same port and healthy", f"ready after {time.monotonic() - started:.1f} s")
        after = await rc.canary(port)
        ledger.check(after == greedy, "the greedy answer is identical after the crash", "" if after == greedy else f"{after!r} != {greedy!r}")
        idle, took, last = await rc.wait_idle(port, 10)
        ledger.check(idle, "the restarted server is idle", str(last))
        again.signal(signal.SIGTERM)
        code = await asyncio.to_thread(again.wait_exit, SHUTDOWN_TIMEOUT + 10)
        ledger.check(code == 0, "the restarted server exits 0 on SIGTERM", f"exit code {code}")
    except RuntimeError as e:
        ledger.check(False, "restarted on the same port and healthy", str(e)[:500])
    finally:
        again.stop()
    return server, again


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ember", default=rc.default_ember(), help="the ember binary [default: %(default)s]")
    args = p.parse_args()
    ledger = rc.Ledger()
    servers = []
    for part in (drain, crash):
        try:
            servers.append(asyncio.run(part(args, ledger)))
        except (RuntimeError, ProtocolError, OSError, asyncio.TimeoutError) as e:
            ledger.check(False, f"{part.__name__} ran to the end", f"{type(e).__name__}: {e}")
    for s in servers:
        for srv in s if isinstance(s, tuple) else (s,):
            panics = srv.panics()
            ledger.check(not panics, f"no panic in {srv.log_path.name}", " | ".join(panics[:3]))
            print(f"log: {srv.log_path}")
    sys.exit(ledger.finish())


if __name__ == "__main__":
    main()
