//! TLS over TCP primitives: connect with a handshake deadline, accept with one, and TCP
//! keepalive socket options.
//!
//! Handshake failures of any kind (refused connection, certificate rejected, fatal alert,
//! deadline passed) come back as [`Error::Tls`] carrying the cause, so that the caller reports
//! them as a failed TLS session.

#[cfg(test)]
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::{client, TlsConnector};

use crate::proto::error::{Error, Result};
use crate::transport::tls_server_stream::{self, TlsServerStream};

/// Connects to `peer` over TCP and runs a TLS client handshake, both within `timeout`.
///
/// `server_name` is what the server's certificate must name: a DNS name or an IP literal. It is
/// also sent as SNI when it is a DNS name.
#[cfg(test)]
pub async fn tls_connect(
    peer: SocketAddr,
    server_name: &str,
    config: Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<client::TlsStream<TcpStream>> {
    let name = server_name_of(server_name)?;
    let handshake = async {
        let tcp = TcpStream::connect(peer)
            .await
            .map_err(|e| Error::Tls(format!("cannot connect to {peer}: {e}")))?;
        handshake_client(tcp, peer, name, config).await
    };
    tokio::time::timeout(timeout, handshake)
        .await
        .map_err(|_| Error::Tls(format!("handshake with {peer} timed out after {timeout:?}")))?
}

/// Runs a TLS client handshake over an established TCP connection within `timeout`: like
/// [`tls_connect`] for a caller that connected (and set socket options) itself.
pub async fn tls_handshake(
    tcp: TcpStream,
    server_name: &str,
    config: Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<client::TlsStream<TcpStream>> {
    let name = server_name_of(server_name)?;
    let peer = tcp
        .peer_addr()
        .map_or_else(|_| "peer".to_owned(), |a| a.to_string());
    tokio::time::timeout(timeout, handshake_client(tcp, &peer, name, config))
        .await
        .map_err(|_| Error::Tls(format!("handshake with {peer} timed out after {timeout:?}")))?
}

/// True when an I/O error of a TLS stream is a TLS failure (a fatal alert received, a record
/// that does not decrypt, a certificate rejected) rather than the connection's end or reset.
pub fn is_tls_error(error: &std::io::Error) -> bool {
    error
        .get_ref()
        .is_some_and(|inner| inner.is::<rustls::Error>())
}

fn server_name_of(server_name: &str) -> Result<ServerName<'static>> {
    ServerName::try_from(server_name.to_owned())
        .map_err(|e| Error::Config(format!("invalid TLS server name {server_name:?}: {e}")))
}

async fn handshake_client(
    tcp: TcpStream,
    peer: impl std::fmt::Display,
    name: ServerName<'static>,
    config: Arc<rustls::ClientConfig>,
) -> Result<client::TlsStream<TcpStream>> {
    // Keepalive traffic is small and latency-sensitive.
    tcp.set_nodelay(true)?;
    TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| Error::Tls(format!("handshake with {peer} failed: {e}")))
}

/// Runs the TLS server handshake on an accepted TCP connection within `timeout`.
pub async fn tls_accept(
    config: &Arc<rustls::ServerConfig>,
    tcp: TcpStream,
    timeout: Duration,
) -> Result<TlsServerStream> {
    let peer = tcp
        .peer_addr()
        .map_or_else(|_| "peer".to_owned(), |a| a.to_string());
    tcp.set_nodelay(true)?;
    tokio::time::timeout(timeout, tls_server_stream::accept(Arc::clone(config), tcp))
        .await
        .map_err(|_| Error::Tls(format!("handshake with {peer} timed out after {timeout:?}")))?
        .map_err(|e| Error::Tls(format!("handshake with {peer} failed: {e}")))
}

/// Turns TCP keepalive on: the first probe after `idle` without traffic, then one every
/// `interval` (where the platform lets the interval be set).
pub fn set_tcp_keepalive(stream: &TcpStream, idle: Duration, interval: Duration) -> Result<()> {
    let keepalive = socket2::TcpKeepalive::new().with_time(idle);
    #[cfg(any(
        target_os = "android",
        target_os = "dragonfly",
        target_os = "freebsd",
        target_os = "fuchsia",
        target_os = "illumos",
        target_os = "ios",
        target_os = "linux",
        target_os = "macos",
        target_os = "netbsd",
        target_os = "tvos",
        target_os = "watchos",
        target_os = "windows",
    ))]
    let keepalive = keepalive.with_interval(interval);
    #[cfg(not(any(
        target_os = "android",
        target_os = "dragonfly",
        target_os = "freebsd",
        target_os = "fuchsia",
        target_os = "illumos",
        target_os = "ios",
        target_os = "linux",
        target_os = "macos",
        target_os = "netbsd",
        target_os = "tvos",
        target_os = "watchos",
        target_os = "windows",
    )))]
    let _ = interval;
    socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::credentials::rustls::{tls_client_config, tls_server_config};
    use crate::credentials::CertificateSet;

    const TIMEOUT: Duration = Duration::from_secs(5);
    /// An empty CoAP Confirmable message (a ping), as sent over UDP; any bytes do for an echo.
    const PING: [u8; 4] = [0x40, 0x00, 0x12, 0x34];

    /// A TLS server on loopback that runs one handshake and echoes what it reads until EOF.
    /// The handle yields the handshake's result and the ALPN protocol agreed.
    async fn echo_server(
        config: Arc<rustls::ServerConfig>,
    ) -> (SocketAddr, tokio::task::JoinHandle<Result<Option<Vec<u8>>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await?;
            let mut tls = tls_accept(&config, tcp, TIMEOUT).await?;
            let alpn = tls.alpn_protocol().map(<[u8]>::to_vec);
            let mut buf = [0u8; 64];
            loop {
                let n = tls.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                tls.write_all(&buf[..n]).await?;
            }
            Ok(alpn)
        });
        (addr, task)
    }

    async fn echo_once(tls: &mut client::TlsStream<TcpStream>) -> std::io::Result<Vec<u8>> {
        tls.write_all(&PING).await?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await?;
        Ok(buf.to_vec())
    }

    #[tokio::test]
    async fn handshake_and_echo() {
        let set = CertificateSet::generate().unwrap();
        let server = tls_server_config(&set.server_identity(), None).unwrap();
        let (addr, task) = echo_server(server).await;
        let client = tls_client_config(Some(&set.ca_cert_pem), None, false).unwrap();
        let mut tls = tls_connect(addr, "127.0.0.1", client, TIMEOUT)
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"coap"[..]));
        assert_eq!(echo_once(&mut tls).await.unwrap(), PING);
        tls.shutdown().await.unwrap();
        let alpn = task.await.unwrap().unwrap();
        assert_eq!(alpn.as_deref(), Some(&b"coap"[..]));
    }

    #[tokio::test]
    async fn server_name_may_be_a_dns_name() {
        let set = CertificateSet::generate().unwrap();
        let server = tls_server_config(&set.server_identity(), None).unwrap();
        let (addr, _task) = echo_server(server).await;
        let client = tls_client_config(Some(&set.ca_cert_pem), None, false).unwrap();
        let mut tls = tls_connect(addr, "localhost", client, TIMEOUT)
            .await
            .unwrap();
        assert_eq!(echo_once(&mut tls).await.unwrap(), PING);
    }

    #[tokio::test]
    async fn mutual_tls() {
        let set = CertificateSet::generate().unwrap();
        let server = tls_server_config(&set.server_identity(), Some(&set.ca_cert_pem)).unwrap();
        let (addr, task) = echo_server(server).await;
        let client =
            tls_client_config(Some(&set.ca_cert_pem), Some(&set.client_identity()), false).unwrap();
        let mut tls = tls_connect(addr, "127.0.0.1", client, TIMEOUT)
            .await
            .unwrap();
        assert_eq!(echo_once(&mut tls).await.unwrap(), PING);
        let (_, session) = tls.get_ref();
        assert!(session.peer_certificates().is_some());
        tls.shutdown().await.unwrap();
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn missing_client_certificate_is_rejected() {
        let set = CertificateSet::generate().unwrap();
        let server = tls_server_config(&set.server_identity(), Some(&set.ca_cert_pem)).unwrap();
        let (addr, task) = echo_server(server).await;
        let client = tls_client_config(Some(&set.ca_cert_pem), None, false).unwrap();
        // With TLS 1.3 the client learns of the rejection only when it reads the server's alert.
        let client_result = match tls_connect(addr, "127.0.0.1", client, TIMEOUT).await {
            Ok(mut tls) => echo_once(&mut tls).await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let client_error = client_result.unwrap_err();
        assert!(
            client_error.contains("CertificateRequired"),
            "{client_error}"
        );
        let server_error = task.await.unwrap().unwrap_err();
        assert!(matches!(server_error, Error::Tls(_)), "{server_error}");
        assert!(
            server_error.to_string().contains("no certificates"),
            "{server_error}"
        );
    }

    #[tokio::test]
    async fn client_certificate_from_another_ca_is_rejected() {
        let set = CertificateSet::generate().unwrap();
        let other = CertificateSet::generate().unwrap();
        let server = tls_server_config(&set.server_identity(), Some(&set.ca_cert_pem)).unwrap();
        let (addr, task) = echo_server(server).await;
        let client = tls_client_config(
            Some(&set.ca_cert_pem),
            Some(&other.client_identity()),
            false,
        )
        .unwrap();
        if let Ok(mut tls) = tls_connect(addr, "127.0.0.1", client, TIMEOUT).await {
            echo_once(&mut tls).await.unwrap_err();
        }
        let server_error = task.await.unwrap().unwrap_err();
        // Both test CAs have the same name, so WebPKI finds an issuer and rejects its
        // signature: BadSignature rather than UnknownIssuer.
        assert!(
            server_error
                .to_string()
                .contains("invalid peer certificate"),
            "{server_error}"
        );
    }

    #[tokio::test]
    async fn untrusted_server_certificate_is_rejected() {
        let set = CertificateSet::generate().unwrap();
        let other = CertificateSet::generate().unwrap();
        let server = tls_server_config(&set.server_identity(), None).unwrap();
        let (addr, task) = echo_server(server).await;
        let client = tls_client_config(Some(&other.ca_cert_pem), None, false).unwrap();
        let error = tls_connect(addr, "127.0.0.1", client, TIMEOUT)
            .await
            .unwrap_err();
        assert!(matches!(error, Error::Tls(_)), "{error}");
        assert!(
            error.to_string().contains("invalid peer certificate"),
            "{error}"
        );
        assert!(matches!(task.await.unwrap(), Err(Error::Tls(_))));
    }

    #[tokio::test]
    async fn wrong_server_name_is_rejected() {
        let set = CertificateSet::generate().unwrap();
        let server = tls_server_config(&set.server_identity(), None).unwrap();
        let (addr, _task) = echo_server(server).await;
        let client = tls_client_config(Some(&set.ca_cert_pem), None, false).unwrap();
        let error = tls_connect(addr, "example.com", client, TIMEOUT)
            .await
            .unwrap_err();
        assert!(error.to_string().contains("not valid for name"), "{error}");
    }

    #[tokio::test]
    async fn insecure_mode_accepts_an_untrusted_server() {
        let set = CertificateSet::generate().unwrap();
        let server = tls_server_config(&set.server_identity(), None).unwrap();
        let (addr, _task) = echo_server(server).await;
        let client = tls_client_config(None, None, true).unwrap();
        let mut tls = tls_connect(addr, "example.com", client, TIMEOUT)
            .await
            .unwrap();
        assert_eq!(echo_once(&mut tls).await.unwrap(), PING);
    }

    #[tokio::test]
    async fn client_without_alpn_connects() {
        let set = CertificateSet::generate().unwrap();
        let server = tls_server_config(&set.server_identity(), None).unwrap();
        let (addr, task) = echo_server(server).await;
        let mut client = (*tls_client_config(Some(&set.ca_cert_pem), None, false).unwrap()).clone();
        client.alpn_protocols.clear();
        let mut tls = tls_connect(addr, "127.0.0.1", Arc::new(client), TIMEOUT)
            .await
            .unwrap();
        assert_eq!(echo_once(&mut tls).await.unwrap(), PING);
        tls.shutdown().await.unwrap();
        assert_eq!(task.await.unwrap().unwrap(), None);
    }

    #[tokio::test]
    async fn ca_is_required_unless_insecure() {
        let error = tls_client_config(None, None, false).unwrap_err();
        assert!(matches!(error, Error::Config(_)), "{error}");
    }

    #[tokio::test]
    async fn handshake_times_out_on_a_silent_server() {
        // A listener that accepts (the kernel completes the TCP handshake) but never answers.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tls_client_config(None, None, true).unwrap();
        let timeout = Duration::from_millis(300);
        let error = tls_connect(addr, "localhost", client, timeout)
            .await
            .unwrap_err();
        assert!(matches!(error, Error::Tls(_)), "{error}");
        assert!(
            error.to_string().contains("timed out after 300ms"),
            "{error}"
        );
        drop(listener);
    }

    #[tokio::test]
    async fn accept_times_out_on_a_silent_client() {
        let set = CertificateSet::generate().unwrap();
        let server = tls_server_config(&set.server_identity(), None).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _silent = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (tcp, _) = listener.accept().await.unwrap();
        let error = tls_accept(&server, tcp, Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(error.to_string().contains("timed out"), "{error}");
    }

    #[tokio::test]
    async fn connection_refused_is_a_tls_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let client = tls_client_config(None, None, true).unwrap();
        let error = tls_connect(addr, "localhost", client, TIMEOUT)
            .await
            .unwrap_err();
        assert!(matches!(error, Error::Tls(_)), "{error}");
    }

    #[tokio::test]
    async fn tcp_keepalive_is_set() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        set_tcp_keepalive(&stream, Duration::from_secs(7), Duration::from_secs(3)).unwrap();
        let socket = socket2::SockRef::from(&stream);
        assert!(socket.keepalive().unwrap());
        #[cfg(target_os = "linux")]
        {
            // TCP_KEEPIDLE and TCP_KEEPINTVL read back.
            assert_eq!(socket.keepalive_time().unwrap(), Duration::from_secs(7));
            assert_eq!(socket.keepalive_interval().unwrap(), Duration::from_secs(3));
        }
    }
}
