//! A raw DTLS client, webrtc-dtls's own: a `DTLSConn` over a connected UDP socket, its
//! handshake under a deadline. The raw peers use it with the configurations of [`super::configs`]
//! to send exact bytes inside a DTLS session to a library server; the library's own DTLS layer
//! is crate-private and tested inside the crate.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use webrtc_dtls::config::Config;
use webrtc_dtls::conn::DTLSConn;
use webrtc_util::conn::Conn;

/// Connects to the DTLS server at `server` from a fresh loopback port and runs the client
/// handshake within `limit`; the error says what went wrong.
pub async fn connect(
    server: SocketAddr,
    mut config: Config,
    limit: Duration,
) -> Result<Arc<DTLSConn>, String> {
    let socket = UdpSocket::bind(super::loopback()).await.unwrap();
    socket.connect(server).await.unwrap();
    if config.server_name.is_empty() {
        config.server_name = server.ip().to_string();
    }
    let socket: Arc<dyn Conn + Send + Sync> = Arc::new(socket);
    match tokio::time::timeout(limit, DTLSConn::new(socket, config, true, None)).await {
        Ok(Ok(conn)) => Ok(Arc::new(conn)),
        Ok(Err(e)) => Err(format!("DTLS handshake with {server} failed: {e}")),
        Err(_) => Err(format!(
            "DTLS handshake with {server} timed out after {limit:?}"
        )),
    }
}

/// Sends `bytes` as one record.
pub async fn send(conn: &DTLSConn, bytes: &[u8]) {
    conn.write(bytes, None).await.expect("DTLS send");
}

/// Reads one record into `buf`; `None` once the server has closed the session (a close_notify
/// or a fatal alert, which webrtc-dtls does not tell apart).
pub async fn recv(conn: &DTLSConn, buf: &mut [u8]) -> Option<usize> {
    match conn.read(buf, None).await {
        Ok(n) => Some(n),
        Err(webrtc_dtls::Error::ErrAlertFatalOrClose | webrtc_dtls::Error::ErrConnClosed) => None,
        Err(e) => panic!("DTLS receive failed: {e}"),
    }
}
