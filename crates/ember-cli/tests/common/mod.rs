//! `ember serve` as a real process on a free loopback port, for the tests
//! that need one, with the few HTTP calls they make over plain sockets.

#![allow(dead_code)]

pub mod stub;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The default model's served name.
pub const MODEL: &str = "SmolLM2-135M-Instruct.Q4_1";

/// `ember serve` on a free loopback port, killed on drop.
pub struct Server {
    child: Child,
    pub port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Starts `ember serve --port PORT ARGS...` and waits until `/health` is 200.
    pub fn start(args: &[&str]) -> Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Command::new(env!("CARGO_BIN_EXE_ember"))
            .args(["serve", "--port", &port.to_string()])
            .args(args)
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
        bail!("ember serve {args:?} did not become ready on port {port}")
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn connect(&self) -> Result<TcpStream> {
        let stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        Ok(stream)
    }

    /// The whole HTTP response to a GET, head and body.
    pub fn get(&self, path: &str) -> Result<String> {
        let mut stream = self.connect()?;
        write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        Ok(response)
    }

    /// Writes a JSON POST and returns the open socket.
    pub fn send_post(&self, path: &str, body: &serde_json::Value) -> Result<TcpStream> {
        let body = body.to_string();
        let mut socket = self.connect()?;
        write!(
            socket,
            "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )?;
        Ok(socket)
    }

    /// A JSON POST's status and body (for a stream, the whole SSE text).
    pub fn post(&self, path: &str, body: &serde_json::Value) -> Result<(u16, String)> {
        let mut socket = self.send_post(path, body)?;
        let mut response = String::new();
        socket.read_to_string(&mut response)?;
        let status = response
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("no status line in {response:?}"))?;
        let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
        Ok((status, body))
    }

    /// A metric's value from /metrics (the first line starting with `name`,
    /// labels included).
    pub fn metric(&self, name: &str) -> Result<f64> {
        let metrics = self.get("/metrics")?;
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .with_context(|| format!("no {name} in /metrics"))
    }
}
