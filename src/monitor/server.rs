//! The monitor's HTTP server: `GET` only, one request per connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::{Monitor, metrics};

/// The page, with its script and styles (no other file, no network).
const PAGE: &str = include_str!("page.html");

/// The longest request head read.
const MAX_HEAD: usize = 8 * 1024;

/// A running monitor server; stops when dropped.
#[derive(Debug)]
pub struct MonitorServer {
    address: SocketAddr,
    task: JoinHandle<()>,
}

impl MonitorServer {
    pub(super) async fn bind(monitor: Arc<Monitor>, address: &str) -> std::io::Result<Self> {
        let listener = TcpListener::bind(loopback_unless_told(address)).await?;
        let address = listener.local_addr()?;
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let monitor = Arc::clone(&monitor);
                tokio::spawn(async move {
                    // A client that stalls is dropped after a while.
                    let _ = tokio::time::timeout(Duration::from_secs(10), answer(stream, &monitor))
                        .await;
                });
            }
        });
        Ok(Self { address, task })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.address
    }
}

impl Drop for MonitorServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One `GET path` from the monitor server at `address`: the response's
/// status line and body. A small client for scripts, tests and benches
/// that scrape the server as Prometheus or the page would.
pub async fn get(address: SocketAddr, path: &str) -> std::io::Result<(String, String)> {
    let mut stream = TcpStream::connect(address).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: {address}\r\n\r\n").as_bytes())
        .await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.lines().next().unwrap_or_default().to_string();
    Ok((status, body.to_string()))
}

/// Scrapes the monitor server at `address` every `every` (`/metrics` and
/// `/api/queries`, as Prometheus and the page would) until the returned
/// task is aborted: the load a watched run carries, for benches.
pub fn scrape_every(address: SocketAddr, every: Duration) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            for path in ["/metrics", "/api/queries"] {
                let _ = get(address, path).await;
            }
            tokio::time::sleep(every).await;
        }
    })
}

/// `address`, or for a bare port, that port on 127.0.0.1: the server is
/// reachable from elsewhere only when an address says so.
pub(super) fn loopback_unless_told(address: &str) -> String {
    match address.trim().parse::<u16>() {
        Ok(port) => format!("127.0.0.1:{port}"),
        Err(_) => address.to_string(),
    }
}

/// Reads one request and answers it.
async fn answer(mut stream: TcpStream, monitor: &Monitor) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 || head.len() + n > MAX_HEAD {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    // The monitor's own work: from a whole request to the answer written.
    let start = std::time::Instant::now();
    let head = String::from_utf8_lossy(&head);
    let mut words = head.lines().next().unwrap_or_default().split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, kind, body) = if method != "GET" && method != "HEAD" {
        (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "read-only: GET only\n".to_string(),
        )
    } else {
        route(path, monitor)
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n\
         Content-Security-Policy: default-src 'self'; script-src 'unsafe-inline'; \
         style-src 'unsafe-inline'\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if method != "HEAD" {
        response.extend_from_slice(body.as_bytes());
    }
    let written = stream.write_all(&response).await;
    monitor.add_busy(start);
    written?;
    stream.shutdown().await
}

/// The status, content type and body for `path`.
fn route(path: &str, monitor: &Monitor) -> (&'static str, &'static str, String) {
    const JSON: &str = "application/json";
    match path {
        "/" | "/index.html" => ("200 OK", "text/html; charset=utf-8", PAGE.to_string()),
        "/metrics" => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            metrics::render(&monitor.queries()),
        ),
        "/api/queries" => (
            "200 OK",
            JSON,
            serde_json::to_string(&monitor.queries()).unwrap_or_default(),
        ),
        _ => match path
            .strip_prefix("/api/queries/")
            .and_then(|rest| rest.strip_suffix("/progress"))
            .and_then(|id| monitor.recent(id))
        {
            Some(recent) => (
                "200 OK",
                JSON,
                serde_json::to_string(&recent).unwrap_or_default(),
            ),
            None => (
                "404 Not Found",
                "text/plain; charset=utf-8",
                "not found\n".to_string(),
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::loopback_unless_told;

    #[test]
    fn a_bare_port_binds_to_the_loopback_address() {
        assert_eq!(loopback_unless_told("4040"), "127.0.0.1:4040");
        assert_eq!(loopback_unless_told("0.0.0.0:4040"), "0.0.0.0:4040");
    }
}
