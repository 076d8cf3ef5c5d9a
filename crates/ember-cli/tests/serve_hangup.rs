//! A client that hangs up stops its request, proven on real sockets against
//! a real `ember serve` (the default model, slow enough on a CPU that a
//! 400-token answer takes many seconds): closing the connection, or only
//! its sending side, while the request is streamed, non-streamed, or still
//! waiting in the queue, frees the request within a few steps.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

const MODEL: &str = "SmolLM2-135M-Instruct.Q4_1";

/// `ember serve` on a free loopback port, killed on drop.
struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(extra: &[&str]) -> Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Command::new(env!("CARGO_BIN_EXE_ember"))
            .args(["serve", "--port", &port.to_string(), "--kv-cache-memory", "64MiB"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let server = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            if server.get("/health").is_ok_and(|r| r.starts_with("HTTP/1.1 200")) {
                return Ok(server);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        bail!("ember serve did not become ready on port {port}")
    }

    fn connect(&self) -> Result<TcpStream> {
        let stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        Ok(stream)
    }

    fn get(&self, path: &str) -> Result<String> {
        let mut stream = self.connect()?;
        write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        Ok(response)
    }

    /// Sends a chat request for a long answer and returns the open socket.
    fn send_chat(&self, stream: bool) -> Result<TcpStream> {
        let body = serde_json::json!({
            "model": MODEL,
            "messages": [{"role": "user", "content": "Tell me a long story about a lighthouse."}],
            "max_tokens": 400,
            "ignore_eos": true,
            "stream": stream,
        })
        .to_string();
        let mut socket = self.connect()?;
        write!(
            socket,
            "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )?;
        Ok(socket)
    }

    /// A gauge from /metrics.
    fn gauge(&self, name: &str) -> Result<f64> {
        let metrics = self.get("/metrics")?;
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .with_context(|| format!("no {name} in /metrics"))
    }

    /// Waits until `running` and `waiting` read as given.
    fn wait_for(&self, running: f64, waiting: f64, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let now = (self.gauge("ember:num_requests_running")?, self.gauge("ember:num_requests_waiting")?);
            if now == (running, waiting) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("running/waiting stayed {now:?}, expected ({running}, {waiting}) within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn wait_idle(&self) -> Result<()> {
        self.wait_for(0.0, 0.0, Duration::from_secs(10))?;
        let kv = self.gauge("ember:kv_cache_usage_perc")?;
        if kv != 0.0 {
            bail!("KV blocks still in use after the hang-up: {kv}");
        }
        Ok(())
    }
}

/// Reads until the first SSE `data:` line of content.
fn read_first_chunk(socket: &TcpStream) -> Result<()> {
    let mut reader = BufReader::new(socket);
    let mut line = String::new();
    while reader.read_line(&mut line)? > 0 {
        if line.starts_with("data: ") {
            return Ok(());
        }
        line.clear();
    }
    bail!("the stream ended before its first chunk")
}

#[test]
fn a_client_that_hangs_up_or_half_closes_stops_its_request() -> Result<()> {
    // One sequence at a time, so a second request waits in the queue.
    let server = Server::start(&["--max-num-seqs", "1"])?;

    // Streamed: close after the first chunk.
    let socket = server.send_chat(true)?;
    read_first_chunk(&socket)?;
    server.wait_for(1.0, 0.0, Duration::from_secs(10))?;
    drop(socket);
    server.wait_idle().context("streamed, closed after the first chunk")?;

    // Non-streamed: close while the answer is being generated.
    let socket = server.send_chat(false)?;
    server.wait_for(1.0, 0.0, Duration::from_secs(10))?;
    drop(socket);
    server.wait_idle().context("non-streamed, closed")?;

    // Half-close: the client shuts its sending side and keeps listening.
    for stream in [true, false] {
        let socket = server.send_chat(stream)?;
        server.wait_for(1.0, 0.0, Duration::from_secs(10))?;
        socket.shutdown(Shutdown::Write)?;
        server.wait_idle().with_context(|| format!("half-closed, stream: {stream}"))?;
        drop(socket);
    }

    // Still queued: the first request runs, the second waits and hangs up.
    let running = server.send_chat(true)?;
    read_first_chunk(&running)?;
    for stream in [true, false] {
        let queued = server.send_chat(stream)?;
        server.wait_for(1.0, 1.0, Duration::from_secs(10))?;
        drop(queued);
        server
            .wait_for(1.0, 0.0, Duration::from_secs(10))
            .with_context(|| format!("queued, stream: {stream}"))?;
    }
    drop(running);
    server.wait_idle().context("after the running request hung up")?;
    Ok(())
}
