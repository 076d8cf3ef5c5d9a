//! A client that hangs up stops its request, proven on real sockets against
//! a real `ember serve` (the default model, slow enough on a CPU that a
//! 400-token answer takes many seconds): closing the connection, or only
//! its sending side, while the request is streamed, non-streamed, or still
//! waiting in the queue, frees the request within a few steps.

mod common;

use std::io::{BufRead, BufReader};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use common::{MODEL, Server};

/// The hang-up checks on top of the shared server.
trait HangUpChecks {
    fn send_chat(&self, stream: bool) -> Result<TcpStream>;
    fn wait_for(&self, running: f64, waiting: f64, within: Duration) -> Result<()>;
    fn wait_idle(&self) -> Result<()>;
}

impl HangUpChecks for Server {
    /// Sends a chat request for a long answer and returns the open socket.
    fn send_chat(&self, stream: bool) -> Result<TcpStream> {
        let body = serde_json::json!({
            "model": MODEL,
            "messages": [{"role": "user", "content": "Tell me a long story about a lighthouse."}],
            "max_tokens": 400,
            "ignore_eos": true,
            "stream": stream,
        });
        self.send_post("/v1/chat/completions", &body)
    }

    /// Waits until `running` and `waiting` read as given.
    fn wait_for(&self, running: f64, waiting: f64, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let now = (self.metric("ember:num_requests_running")?, self.metric("ember:num_requests_waiting")?);
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
        let kv = self.metric("ember:kv_cache_usage_perc")?;
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
    let server = Server::start(&["--kv-cache-memory", "64MiB", "--max-num-seqs", "1"])?;

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
