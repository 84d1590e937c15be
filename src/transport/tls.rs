//! The TLS driver: CoAP over TLS behaves as over TCP (CSM, 7.02 Ping, 7.03 Pong), so each TLS
//! connection runs the stream driver of [`super::tcp`] over its encrypted stream once the
//! handshake is done.
//!
//! Handshakes run within the context's connect timeout; one that fails is reported as a
//! session that failed with [`NackReason::TlsFailed`], on either side.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use crate::context::{Context, Endpoint};
use crate::credentials::{ClientCredentials, ServerCredentials};
use crate::error::{Error, NackReason, Result};
use crate::session::{lock, Role, Session, Transport};
use crate::transport::tcp::{bind_listener, configure, start, wait_established};
use crate::transport::tls_conn::{tls_accept, tls_handshake};
use crate::transport::{report_failed_start, unspecified_like, SessionLimit};
use crate::uri::CoapUri;

impl Context {
    /// Serves CoAP over TLS on `addr` with a certificate (a PSK is an [`Error::Config`]: rustls
    /// has no PSK cipher suites). With a client CA, clients must present a certificate it signed.
    /// Each handshake runs in its own task within the connect timeout; one that fails reaches the
    /// nack handler as [`NackReason::TlsFailed`].
    pub async fn listen_tls(
        &self,
        addr: SocketAddr,
        credentials: ServerCredentials,
    ) -> Result<Endpoint> {
        listen(self, addr, &credentials).await
    }

    /// Opens a TLS session to `peer` and returns once the peer's CSM arrived, all within the
    /// connect timeout. The server's certificate must name `server_name` (a DNS name or an IP
    /// literal).
    ///
    /// A failed handshake, or a TLS alert before the peer's CSM (how a TLS 1.3 server rejects a
    /// client certificate), is an [`Error::Tls`] naming the cause, and the nack handler sees it
    /// as [`NackReason::TlsFailed`].
    pub async fn connect_tls(
        &self,
        peer: SocketAddr,
        server_name: &str,
        credentials: &ClientCredentials,
    ) -> Result<Session> {
        connect(self, peer, server_name, credentials).await
    }

    /// Opens a session to the host of `uri` over the transport its scheme names, with
    /// `credentials` for `coaps://` and `coaps+tcp://` (where the server's certificate must name
    /// the URI's host). `coap://` and `coap+tcp://` ignore them.
    pub async fn connect_with(
        &self,
        uri: &str,
        credentials: &ClientCredentials,
    ) -> Result<Session> {
        let uri = CoapUri::parse(uri)?;
        let peer = uri.resolve().await?;
        match uri.transport {
            Transport::Udp => self.connect_udp(peer).await,
            Transport::Tcp => self.connect_tcp(peer).await,
            Transport::Dtls => {
                crate::transport::dtls::connect(self, peer, &uri.host, credentials).await
            }
            Transport::Tls => connect(self, peer, &uri.host, credentials).await,
        }
    }
}

/// Binds `addr` and runs a handshake, then a session, for every connection accepted on it.
async fn listen(
    ctx: &Context,
    addr: SocketAddr,
    credentials: &ServerCredentials,
) -> Result<Endpoint> {
    let acceptor = TlsAcceptor::from(credentials.tls_config()?);
    let listener = bind_listener(addr)?;
    let local_addr = listener.local_addr()?;
    let accept_ctx = ctx.clone();
    let limit = SessionLimit::new(ctx);
    let mut shutdown = ctx.shutdown_signal();
    ctx.spawn(async move {
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    // A handshake in progress holds a place too.
                    Ok((stream, peer)) => match limit.admit() {
                        Some(place) => {
                            configure(&accept_ctx, &stream);
                            let local = stream.local_addr().unwrap_or(local_addr);
                            let serve = serve_connection(
                                accept_ctx.clone(),
                                acceptor.clone(),
                                stream,
                                peer,
                                local,
                            );
                            accept_ctx.spawn(async move {
                                serve.await;
                                drop(place);
                            });
                        }
                        None => tracing::debug!(%peer, "session limit reached: tls connection refused"),
                    },
                    Err(error) => {
                        // Out of descriptors or similar: keep serving the others.
                        tracing::warn!(%error, "tls accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                _ = shutdown.changed() => return,
            }
        }
    });
    tracing::info!(%local_addr, "listening on tls");
    Ok(Endpoint {
        transport: Transport::Tls,
        local_addr,
    })
}

/// The server side of one connection: the handshake, then the session.
async fn serve_connection(
    ctx: Context,
    acceptor: TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
) {
    let mut shutdown = ctx.shutdown_signal();
    if *shutdown.borrow_and_update() {
        return;
    }
    let handshake = tls_accept(&acceptor, stream, ctx.settings().connect_timeout);
    let accepted = tokio::select! {
        accepted = handshake => accepted,
        _ = shutdown.changed() => return,
    };
    match accepted {
        Ok(tls) => {
            let (session, run) = start(&ctx, tls, peer, local, Transport::Tls, Role::Server);
            tracing::debug!(session = %session, "tls handshake completed");
            run.await;
        }
        Err(error) => {
            tracing::debug!(%peer, %error, "tls handshake failed");
            report_failed_start(
                &ctx,
                peer,
                local,
                Transport::Tls,
                Role::Server,
                NackReason::TlsFailed,
            );
        }
    }
}

/// Connects, runs the client handshake and waits for the peer's CSM, all within the connect
/// timeout.
async fn connect(
    ctx: &Context,
    peer: SocketAddr,
    server_name: &str,
    credentials: &ClientCredentials,
) -> Result<Session> {
    // Bad credentials are the caller's mistake, not a session that failed: no nack.
    let config = credentials.tls_config()?;
    let timeout = ctx.settings().connect_timeout;
    let deadline = tokio::time::Instant::now() + timeout;
    let fail = |error: Error, local: SocketAddr, reason: NackReason| {
        tracing::debug!(%peer, %error, "tls connect failed");
        report_failed_start(ctx, peer, local, Transport::Tls, Role::Client, reason);
        error
    };

    let tcp = match tokio::time::timeout_at(deadline, TcpStream::connect(peer)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(error)) => {
            let local = unspecified_like(peer);
            return Err(fail(Error::Io(error), local, NackReason::NotDeliverable));
        }
        Err(_) => {
            let error = Error::Timeout(format!("TCP connect to {peer}"));
            let local = unspecified_like(peer);
            return Err(fail(error, local, NackReason::NotDeliverable));
        }
    };
    configure(ctx, &tcp);
    let local = tcp.local_addr().unwrap_or_else(|_| unspecified_like(peer));
    // One deadline covers the TCP connect, the handshake and the CSM exchange.
    let handshake = tls_handshake(tcp, server_name, config, timeout);
    let tls = match tokio::time::timeout_at(deadline, handshake).await {
        Ok(Ok(tls)) => tls,
        // A name that is not a valid server name is the caller's mistake too.
        Ok(Err(error @ Error::Config(_))) => return Err(error),
        Ok(Err(error)) => return Err(fail(error, local, NackReason::TlsFailed)),
        Err(_) => {
            let error = Error::Tls(format!("handshake with {peer} timed out after {timeout:?}"));
            return Err(fail(error, local, NackReason::TlsFailed));
        }
    };

    let stream = FirstError::new(tls);
    let first_error = stream.error.clone();
    let (session, run) = start(ctx, stream, peer, local, Transport::Tls, Role::Client);
    ctx.spawn(run);
    let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
    match wait_established(&session, remaining).await {
        Ok(()) => Ok(session),
        // The driver already reported the failure; say what the peer's alert was.
        Err(Error::SessionFailed(NackReason::TlsFailed)) => {
            let cause = lock(&first_error)
                .clone()
                .unwrap_or_else(|| "a TLS failure".into());
            Err(Error::Tls(format!(
                "{peer} rejected the session after the handshake: {cause}"
            )))
        }
        Err(error) => Err(error),
    }
}

/// A stream that remembers the first read or write error it passed on, so that the connecting
/// side can tell why the session failed (with TLS 1.3 the server's verdict on a client
/// certificate arrives as an alert after the handshake completed).
struct FirstError<S> {
    inner: S,
    error: Arc<Mutex<Option<String>>>,
}

impl<S> FirstError<S> {
    fn new(inner: S) -> FirstError<S> {
        FirstError {
            inner,
            error: Arc::new(Mutex::new(None)),
        }
    }

    fn note<T>(&self, poll: Poll<std::io::Result<T>>) -> Poll<std::io::Result<T>> {
        if let Poll::Ready(Err(error)) = &poll {
            lock(&self.error).get_or_insert_with(|| error.to_string());
        }
        poll
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FirstError<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.note(poll)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FirstError<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.note(poll)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.note(poll)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::credentials::CertificateSet;
    use crate::session::SessionState;

    /// TCP and TLS endpoints bound to port 0 of the IPv6 loopback serve sessions (the TLS one
    /// with a certificate that names `::1`).
    #[tokio::test]
    async fn tcp_and_tls_endpoints_listen_on_the_ipv6_loopback() {
        let loopback = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 0));
        let certs = CertificateSet::generate().unwrap();
        let server = Context::new();
        let tcp = server.listen_tcp(loopback).await.unwrap();
        let credentials = ServerCredentials::Certificate {
            identity: certs.server_identity(),
            client_ca_pem: None,
        };
        let tls = server.listen_tls(loopback, credentials).await.unwrap();
        for endpoint in [&tcp, &tls] {
            assert!(endpoint.local_addr.is_ipv6(), "{}", endpoint.local_addr);
            assert_ne!(endpoint.local_addr.port(), 0);
        }

        let client = Context::new();
        let session = client.connect_tcp(tcp.local_addr).await.unwrap();
        assert_eq!(session.state(), SessionState::Established);
        assert_eq!(session.peer(), tcp.local_addr);
        let credentials = ClientCredentials::Certificate {
            ca_pem: Some(certs.ca_cert_pem.clone()),
            identity: None,
            insecure: false,
        };
        let session = client
            .connect_tls(tls.local_addr, "::1", &credentials)
            .await
            .unwrap();
        assert_eq!(session.state(), SessionState::Established);
        assert_eq!(session.peer(), tls.local_addr);
        client.shutdown().await;
        server.shutdown().await;
    }

    /// The OS keepalive setting reaches both ends of a connection: what an accepting endpoint
    /// and a connecting client (TCP or TLS) do to their socket before anything else.
    #[tokio::test]
    async fn tcp_keepalive_applies_to_accepted_and_connected_sockets() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let connected = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();

        let off = Context::new();
        configure(&off, &accepted);
        assert!(!socket2::SockRef::from(&accepted).keepalive().unwrap());

        let on = Context::builder()
            .tcp_keepalive(Duration::from_secs(7))
            .build()
            .unwrap();
        for stream in [&accepted, &connected] {
            configure(&on, stream);
            let socket = socket2::SockRef::from(stream);
            assert!(socket.keepalive().unwrap());
            assert!(stream.nodelay().unwrap());
            #[cfg(target_os = "linux")]
            {
                assert_eq!(socket.keepalive_time().unwrap(), Duration::from_secs(7));
                assert_eq!(socket.keepalive_interval().unwrap(), Duration::from_secs(7));
            }
        }
    }
}
