"""Shared pieces of Ember's reliability scripts (soak.py, malformed_http.py,
drain.py): start and stop an `ember serve` on a free loopback port, a small
HTTP/1.1 client over raw asyncio sockets (so a test controls exactly which
bytes go out and when the socket closes), an SSE reader, a Prometheus text
parser, and the pass/fail ledger that prints the final `N passed, N failed`
line.

Standard library only, and only 127.0.0.1 is ever contacted. Every wait in
here takes a deadline.
"""

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"
MODEL = "SmolLM2-135M-Instruct.Q4_1"
REPO = Path(__file__).resolve().parent.parent


def default_ember() -> str:
    """`${CARGO_TARGET_DIR:-target}/release/ember`, a relative target taken from the repository root."""
    target = Path(os.environ.get("CARGO_TARGET_DIR", "target"))
    if not target.is_absolute():
        target = REPO / target
    return str(target / "release" / "ember")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------
# The pass/fail ledger


class Ledger:
    """Named checks; `finish` prints every failure, then `N passed, N failed`."""

    def __init__(self):
        self.passed = 0
        self.failures = []

    def check(self, ok: bool, name: str, detail: str = "") -> bool:
        if ok:
            self.passed += 1
            print(f"PASS {name}" + (f": {detail}" if detail else ""), flush=True)
        else:
            self.failures.append(f"{name}: {detail}")
            print(f"FAIL {name}" + (f": {detail}" if detail else ""), flush=True)
        return ok

    def finish(self) -> int:
        if self.failures:
            print("\nfailures:")
            for f in self.failures:
                print(f"  - {f}")
        print(f"{self.passed} passed, {len(self.failures)} failed", flush=True)
        return 1 if self.failures else 0


# --------------------------------------------------------------------------
# The server under test


def die_with_parent():
    """In the child before exec: SIGTERM when this script dies, even killed
    (Linux prctl PR_SET_PDEATHSIG), so a timed-out test leaves no server."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Server:
    """One `ember serve` child on a loopback port, its stderr in a log file."""

    def __init__(self, ember: str, port: int | None = None, extra_args=(), name="serve", env=None):
        self.ember = ember
        self.port = port or free_port()
        self.args = [ember, "serve", "--host", HOST, "--port", str(self.port), *extra_args]
        self.log_path = Path(tempfile.mkdtemp(prefix="ember-reliability-")) / f"{name}.log"
        self.proc = None
        self.env = env

    def start(self):
        if not os.access(self.ember, os.X_OK):
            raise RuntimeError(f"no ember binary at {self.ember} (build it, or pass --ember PATH)")
        self.log = open(self.log_path, "ab")
        env = dict(os.environ, **(self.env or {}))
        env.pop("EMBER_API_KEY", None)
        self.proc = subprocess.Popen(self.args, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env, preexec_fn=die_with_parent)
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, timeout=120.0):
        """Polls /health until 200; raises with the log tail if it never comes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"ember serve exited with {self.proc.returncode} before it was ready:\n{self.log_tail()}")
            try:
                status, _, _ = sync_request(self.port, "GET", "/health", timeout=2)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"ember serve on port {self.port} not ready after {timeout} s:\n{self.log_tail()}")

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines=40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def startup_report(self) -> str:
        """The engine's `KV cache ...` line from the log (blocks, tokens, limits)."""
        for line in self.log_text().splitlines():
            if "KV cache" in line and "blocks" in line:
                return line[line.index("KV cache"):]
        return ""

    def panics(self) -> list[str]:
        return [l for l in self.log_text().splitlines() if "panicked" in l]

    def rss_kib(self) -> dict:
        """VmRSS and VmHWM of the server process, in KiB, from /proc."""
        out = {}
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(value.split()[0])
        return out

    def signal(self, sig):
        if self.alive():
            self.proc.send_signal(sig)

    def wait_exit(self, timeout) -> int | None:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop_checked(self, ledger: "Ledger"):
        """SIGTERM, and a check that the server exits 0 on it; then `stop`."""
        if self.proc is not None:
            self.signal(signal.SIGTERM)
            code = self.wait_exit(40)
            ledger.check(code == 0, "server exits 0 on SIGTERM", f"exit code {code}")
        self.stop()

    def stop(self):
        """SIGTERM, then SIGKILL after 40 s; closes the log."""
        if self.proc is None:
            return
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            if self.wait_exit(40) is None:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


# --------------------------------------------------------------------------
# HTTP/1.1 over raw sockets


class ProtocolError(Exception):
    """The server broke HTTP: closed early, sent garbage, ..."""


def run_checked(server: "Server", ledger: "Ledger", what: str, body) -> None:
    """Starts `server`, runs `body()`, then checks the log holds no panic.
    A protocol or I/O failure becomes the failed check "`what` ran to the
    end" (with the log's tail); the server is always stopped, its exit
    checked."""
    try:
        server.start()
        server.wait_ready()
        body()
        panics = server.panics()
        ledger.check(not panics, "no panic in the server log", " | ".join(p[-200:] for p in panics[:3]))
    except (RuntimeError, ProtocolError, OSError, asyncio.TimeoutError) as e:
        ledger.check(False, f"{what} ran to the end", f"{type(e).__name__}: {e}")
        print(f"--- server log ({server.log_path}):\n{server.log_tail()}")
    finally:
        server.stop_checked(ledger)


@dataclass
class Response:
    status: int
    headers: dict
    body: bytes = b""
    events: list = field(default_factory=list)  # SSE `data:` payloads, for streams

    def json(self):
        return json.loads(self.body)


def build_request(port, method, path, body: bytes | None = None, headers=None, content_type="application/json") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}:{port}", "Connection: close"]
    if body is not None:
        if content_type:
            lines.append(f"Content-Type: {content_type}")
        lines.append(f"Content-Length: {len(body)}")
    lines += list(headers or [])
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


def sync_request(port, method, path, body=None, timeout=10.0):
    """A blocking request for set-up and polling: (status, headers, body)."""
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.sendall(build_request(port, method, path, body))
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status, headers = parse_head(head)
    if headers.get("transfer-encoding", "").lower() == "chunked":
        rest = dechunk(rest)
    return status, headers, rest


def parse_head(head: bytes):
    lines = head.decode("latin-1").split("\r\n")
    m = re.match(r"HTTP/1\.[01] (\d{3})", lines[0])
    if not m:
        raise ProtocolError(f"bad status line {lines[0]!r}")
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return int(m.group(1)), headers


def dechunk(data: bytes) -> bytes:
    out, i = b"", 0
    while True:
        j = data.index(b"\r\n", i)
        size = int(data[i:j].split(b";")[0], 16)
        if size == 0:
            return out
        out += data[j + 2 : j + 2 + size]
        i = j + 2 + size + 2


async def connect(port):
    return await asyncio.open_connection(HOST, port, limit=1 << 22)


async def read_head(reader):
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as e:
        raise ProtocolError(f"connection closed before a response ({len(e.partial)} bytes of head)") from None
    return parse_head(head[:-4])


async def body_pieces(reader, headers):
    """Yields the body as it arrives: chunked, by Content-Length, or to EOF."""
    try:
        if headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                line = await reader.readuntil(b"\r\n")
                size = int(line.split(b";")[0].strip(), 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")
                    return
                piece = await reader.readexactly(size)
                await reader.readexactly(2)
                yield piece
        elif "content-length" in headers:
            yield await reader.readexactly(int(headers["content-length"]))
        else:
            yield await reader.read()
    except asyncio.IncompleteReadError:
        raise ProtocolError("connection closed in the middle of the body") from None


class SseParser:
    """Splits a byte stream into the `data:` payloads of server-sent events."""

    def __init__(self):
        self.buf = b""

    def feed(self, piece: bytes) -> list[str]:
        self.buf += piece
        events = []
        while b"\n\n" in self.buf:
            raw, self.buf = self.buf.split(b"\n\n", 1)
            data = [l[5:].lstrip() for l in raw.decode("utf-8", "replace").split("\n") if l.startswith("data:")]
            if data:
                events.append("\n".join(data))
        return events


async def send(port, method, path, body: bytes | None = None, headers=None, content_type="application/json"):
    """Opens a connection and sends one request; returns (reader, writer)."""
    reader, writer = await connect(port)
    writer.write(build_request(port, method, path, body, headers, content_type))
    await writer.drain()
    return reader, writer


async def request(port, method, path, body=None, timeout=60.0, **kw) -> Response:
    """One whole request: the body read, SSE events split out for event streams."""

    async def go():
        reader, writer = await send(port, method, path, body, **kw)
        try:
            status, headers = await read_head(reader)
            resp = Response(status, headers)
            sse = SseParser() if headers.get("content-type", "").startswith("text/event-stream") else None
            async for piece in body_pieces(reader, headers):
                resp.body += piece
                if sse:
                    resp.events += sse.feed(piece)
            return resp
        finally:
            close(writer)

    return await asyncio.wait_for(go(), timeout)


def close(writer):
    try:
        writer.close()
    except Exception:
        pass


def jbody(obj) -> bytes:
    return json.dumps(obj).encode()


# --------------------------------------------------------------------------
# Answer shapes


def error_shape_problem(resp: Response) -> str | None:
    """Why `resp` is not OpenAI's error shape, or None when it is."""
    try:
        err = resp.json()["error"]
    except Exception as e:
        return f"not an error JSON ({type(e).__name__}): {resp.body[:200]!r}"
    if not isinstance(err, dict) or not isinstance(err.get("message"), str) or not isinstance(err.get("type"), str):
        return f"error without string message/type: {resp.body[:200]!r}"
    return None


def stream_problem(resp: Response) -> str | None:
    """Why an SSE answer is not a complete, error-free stream, or None."""
    if not resp.events:
        return "an event stream with no events"
    if resp.events[-1] != "[DONE]":
        return f"the stream does not end with [DONE] (last: {resp.events[-1][:200]!r})"
    for e in resp.events[:-1]:
        try:
            obj = json.loads(e)
        except ValueError:
            return f"an event that is not JSON: {e[:200]!r}"
        if "error" in obj:
            return f"an error event in a 200 stream: {e[:300]}"
    return None


# --------------------------------------------------------------------------
# Metrics


def parse_metrics(text: str) -> dict:
    """Prometheus text -> {'name' or 'name{labels}': value}."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        try:
            out[key] = float(value)
        except ValueError:
            continue
    return out


async def metrics(port) -> dict:
    resp = await request(port, "GET", "/metrics", timeout=10)
    return parse_metrics(resp.body.decode())


def sum_metric(m: dict, name: str) -> float:
    return sum(v for k, v in m.items() if k == name or k.startswith(name + "{"))


async def wait_idle(port, timeout: float):
    """Polls /metrics until nothing runs or waits and no KV block is in use.
    Returns (idle, seconds taken, last reading of the three gauges)."""
    started = time.monotonic()
    last = {}
    while True:
        m = await metrics(port)
        last = {
            "running": m.get("ember:num_requests_running", -1),
            "waiting": m.get("ember:num_requests_waiting", -1),
            "kv_cache_usage_perc": m.get("ember:kv_cache_usage_perc", -1),
        }
        if all(v == 0 for v in last.values()):
            return True, time.monotonic() - started, last
        if time.monotonic() - started > timeout:
            return False, time.monotonic() - started, last
        await asyncio.sleep(0.25)


# --------------------------------------------------------------------------
# Canary


CANARY_CHAT = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "Name three colors of the rainbow."}],
    "max_tokens": 24,
    "temperature": 0,
}


async def canary(port, timeout=120.0) -> str:
    """The greedy answer to a fixed chat prompt (raises on anything but 200)."""
    resp = await request(port, "POST", "/v1/chat/completions", jbody(CANARY_CHAT), timeout=timeout)
    if resp.status != 200:
        raise ProtocolError(f"canary answered {resp.status}: {resp.body[:300]!r}")
    return resp.json()["choices"][0]["message"]["content"]


def die(message: str, server: Server | None = None):
    print(f"error: {message}", file=sys.stderr)
    if server is not None:
        print(f"--- server log ({server.log_path}):\n{server.log_tail()}", file=sys.stderr)
    print("0 passed, 1 failed")
    sys.exit(1)
