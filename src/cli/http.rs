//! `serve --metrics ADDR`: a small HTTP/1.1 listener for operators, answering `GET /metrics`
//! (the context's Prometheus metrics, OpenMetrics text) and `GET /sessions` (the session
//! listing as JSON). It has no authentication: it binds loopback unless told otherwise.
//!
//! One request per connection (`Connection: close`), the request head read within 5 s and
//! at most 8 KiB: enough for Prometheus and `coap-keepalive sessions`, and nothing a slow or
//! endless client can hold open.

use std::net::SocketAddr;
use std::time::Duration;

use coap_keepalive::Context;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::json;

/// The most a request head may take.
const MAX_HEAD: usize = 8 * 1024;
/// How long a client may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);

/// Parses `--metrics`: `PORT` (loopback, 127.0.0.1), or `HOST:PORT` / `[V6]:PORT`.
pub fn parse_listen_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    s.parse()
        .map_err(|_| format!("{s:?} is not PORT, HOST:PORT or [IPV6]:PORT"))
}

/// Binds `addr`; the listener is served by [`serve`].
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Answers every connection on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, ctx: Context) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    if let Err(error) = answer(stream, &ctx).await {
                        tracing::debug!(%peer, %error, "metrics request failed");
                    }
                });
            }
            Err(error) => {
                tracing::warn!(%error, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Reads one request head and writes its response.
async fn answer(mut stream: TcpStream, ctx: &Context) -> std::io::Result<()> {
    let head = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut stream)).await {
        Ok(head) => head?,
        Err(_) => return Ok(()),
    };
    let Some(head) = head else {
        return respond(&mut stream, 431, "text/plain", b"request head too large\n").await;
    };
    let mut words = head.lines().next().unwrap_or_default().split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    if method != "GET" {
        return respond(&mut stream, 405, "text/plain", b"only GET\n").await;
    }
    match path {
        "/metrics" => {
            let text = ctx.metrics_text();
            let kind = coap_keepalive::OPENMETRICS_CONTENT_TYPE;
            respond(&mut stream, 200, kind, text.as_bytes()).await
        }
        "/sessions" => {
            let sessions: Vec<_> = ctx
                .session_listing()
                .iter()
                .map(json::session_info)
                .collect();
            let body = json!({ "sessions": sessions }).to_string();
            respond(&mut stream, 200, "application/json", body.as_bytes()).await
        }
        "/" => {
            let body = b"coap-keepalive serve: /metrics (Prometheus), /sessions (JSON)\n";
            respond(&mut stream, 200, "text/plain", body).await
        }
        _ => respond(&mut stream, 404, "text/plain", b"not found\n").await,
    }
}

/// The request head, up to the blank line; `None` when it exceeds [`MAX_HEAD`].
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<String>> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            break;
        }
        if head.len() > MAX_HEAD {
            return Ok(None);
        }
    }
    Ok(Some(String::from_utf8_lossy(&head).into_owned()))
}

async fn respond(
    stream: &mut TcpStream,
    status: u16,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Request Header Fields Too Large",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    stream.shutdown().await
}

/// GETs `path` from `addr` and returns the body of a 200 response (for `coap-keepalive
/// sessions`).
pub async fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<String, String> {
    let fetch = async {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("{addr}: {e}"))?;
        let mut response = Vec::new();
        stream
            .read_to_end(&mut response)
            .await
            .map_err(|e| format!("{addr}: {e}"))?;
        let text = String::from_utf8_lossy(&response).into_owned();
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| format!("{addr}: not an HTTP response"))?;
        let status = head.lines().next().unwrap_or_default();
        if !status.contains(" 200 ") {
            return Err(format!("{addr}{path}: {status}"));
        }
        Ok(body.to_string())
    };
    tokio::time::timeout(timeout, fetch)
        .await
        .map_err(|_| format!("{addr}: no answer within {timeout:?}"))?
}

#[cfg(test)]
mod tests {
    use super::parse_listen_addr;

    #[test]
    fn a_port_alone_is_loopback() {
        assert_eq!(
            parse_listen_addr("9100").unwrap().to_string(),
            "127.0.0.1:9100"
        );
        assert_eq!(
            parse_listen_addr("0.0.0.0:9100").unwrap().to_string(),
            "0.0.0.0:9100"
        );
        assert_eq!(
            parse_listen_addr("[::1]:9100").unwrap().to_string(),
            "[::1]:9100"
        );
        assert!(parse_listen_addr("localhost").is_err());
    }
}
