//! The TLS transport: CoAP over TLS behaves as over TCP (CSM, 7.02 Ping, 7.03 Pong), so once
//! its handshake is done each TLS connection is served by the stream driver of
//! [`super::stream`] over its encrypted stream, a listener's connections all by one driver.
//!
//! Handshakes run within the context's connect timeout; one that fails is reported as a
//! session that failed with [`NackReason::TlsFailed`], on either side.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::credentials::{ClientCredentials, ServerCredentials};
use crate::proto::error::{Error, NackReason, Result};
use crate::runtime::metrics::{AtLimit, HandshakeFailure};
use crate::runtime::session::{lock, Role, Session, Transport};
use crate::runtime::Runtime;
use crate::transport::stream::{Accepted, Incoming, StreamDriver};
use crate::transport::tcp::{bind_listener, configure, wait_established};
use crate::transport::tls_conn::{tls_accept, tls_handshake};
use crate::transport::tls_server_stream::TlsServerStream;
use crate::transport::{report_failed_start, unspecified_like, Endpoint, SessionLimit};

/// Binds `addr` and runs a handshake for every connection accepted on it, each in a task of
/// its own while it lasts; every connection past its handshake is served by the listener's one
/// stream driver.
pub(crate) async fn listen(
    rt: &Arc<Runtime>,
    addr: SocketAddr,
    credentials: &ServerCredentials,
) -> Result<Endpoint> {
    let config = credentials.tls_config()?;
    let listener = bind_listener(addr)?;
    let local_addr = listener.local_addr()?;
    let (handshaken, established) = mpsc::unbounded_channel();
    let incoming = TlsIncoming {
        rt: Arc::clone(rt),
        listener,
        local_addr,
        limit: SessionLimit::new(rt),
        config,
        handshaken,
        established,
    };
    let driver = StreamDriver::<ServerTls>::new(rt, Transport::Tls, local_addr);
    rt.spawn(driver.run(Some(incoming)));
    tracing::info!(%local_addr, "listening on tls");
    Ok(Endpoint {
        transport: Transport::Tls,
        local_addr,
    })
}

/// A server's TLS connection past its handshake.
type ServerTls = TlsServerStream;

/// The connections of a TLS listener: accepted and admitted to the endpoint's session limit
/// (a handshake in progress holds a place too), then handshaken in tasks of their own.
struct TlsIncoming {
    rt: Arc<Runtime>,
    listener: TcpListener,
    local_addr: SocketAddr,
    limit: SessionLimit,
    config: Arc<rustls::ServerConfig>,
    handshaken: mpsc::UnboundedSender<Accepted<ServerTls>>,
    established: mpsc::UnboundedReceiver<Accepted<ServerTls>>,
}

impl Incoming<ServerTls> for TlsIncoming {
    async fn next(&mut self) -> Accepted<ServerTls> {
        loop {
            tokio::select! {
                Some(established) = self.established.recv() => return established,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, peer)) => match self.limit.admit() {
                        Some(place) => {
                            configure(&self.rt, &stream);
                            let local = stream.local_addr().unwrap_or(self.local_addr);
                            let handshake = handshake(
                                Arc::clone(&self.rt),
                                Arc::clone(&self.config),
                                stream,
                                peer,
                                local,
                            );
                            let handshaken = self.handshaken.clone();
                            self.rt.spawn(async move {
                                if let Some(stream) = handshake.await {
                                    // The driver is gone only once shutdown began.
                                    let _ = handshaken.send(Accepted {
                                        stream,
                                        peer,
                                        local,
                                        place,
                                    });
                                }
                            });
                        }
                        None => {
                            tracing::debug!(%peer, "session limit reached: tls connection refused");
                            self.rt.counters.at_limit(Transport::Tls, AtLimit::Refused);
                        }
                    },
                    Err(error) => {
                        // Out of descriptors or similar: keep serving the others.
                        tracing::warn!(%error, "tls accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
    }
}

/// The server side of one connection's handshake; a failed one is reported as a session that
/// failed. `None` too when shutdown began meanwhile.
async fn handshake(
    rt: Arc<Runtime>,
    config: Arc<rustls::ServerConfig>,
    stream: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
) -> Option<ServerTls> {
    let mut shutdown = rt.shutdown_signal();
    if *shutdown.borrow_and_update() {
        return None;
    }
    let handshake = tls_accept(&config, stream, rt.settings.connect_timeout);
    let accepted = tokio::select! {
        accepted = handshake => accepted,
        _ = shutdown.changed() => return None,
    };
    match accepted {
        Ok(tls) => {
            rt.counters.handshake(Transport::Tls);
            tracing::debug!(%peer, "tls handshake completed");
            Some(tls)
        }
        Err(error) => {
            tracing::debug!(%peer, %error, "tls handshake failed");
            rt.counters
                .handshake_failed(Transport::Tls, HandshakeFailure::of(&error));
            report_failed_start(
                &rt,
                peer,
                local,
                Transport::Tls,
                Role::Server,
                NackReason::TlsFailed,
                Some(error.to_string()),
            );
            None
        }
    }
}

/// Connects, runs the client handshake and waits for the peer's CSM, all within the connect
/// timeout.
pub(crate) async fn connect(
    rt: &Arc<Runtime>,
    peer: SocketAddr,
    server_name: &str,
    credentials: &ClientCredentials,
) -> Result<Session> {
    // Bad credentials are the caller's mistake, not a session that failed: no nack.
    let config = credentials.tls_config()?;
    let timeout = rt.settings.connect_timeout;
    let deadline = tokio::time::Instant::now() + timeout;
    let fail = |error: Error, local: SocketAddr, reason: NackReason| {
        tracing::debug!(%peer, %error, "tls connect failed");
        report_failed_start(rt, peer, local, Transport::Tls, Role::Client, reason, None);
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
    configure(rt, &tcp);
    let local = tcp.local_addr().unwrap_or_else(|_| unspecified_like(peer));
    // One deadline covers the TCP connect, the handshake and the CSM exchange.
    let handshake = tls_handshake(tcp, server_name, config, timeout);
    let tls = match tokio::time::timeout_at(deadline, handshake).await {
        Ok(Ok(tls)) => tls,
        // A name that is not a valid server name is the caller's mistake too.
        Ok(Err(error @ Error::Config(_))) => return Err(error),
        Ok(Err(error)) => {
            rt.counters
                .handshake_failed(Transport::Tls, HandshakeFailure::of(&error));
            return Err(fail(error, local, NackReason::TlsFailed));
        }
        Err(_) => {
            let error = Error::Tls(format!("handshake with {peer} timed out after {timeout:?}"));
            rt.counters
                .handshake_failed(Transport::Tls, HandshakeFailure::Timeout);
            return Err(fail(error, local, NackReason::TlsFailed));
        }
    };
    rt.counters.handshake(Transport::Tls);

    let stream = FirstError::new(tls);
    let first_error = stream.error.clone();
    let mut driver = StreamDriver::new(rt, Transport::Tls, local);
    let session = driver.add(stream, peer, local, Role::Client, None);
    rt.spawn(driver.run_client());
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
    use crate::proto::config::KeepaliveConfig;
    use crate::runtime::settings::ContextSettings;

    /// The OS keepalive setting reaches both ends of a connection: what an accepting endpoint
    /// and a connecting client (TCP or TLS) do to their socket before anything else.
    #[tokio::test]
    async fn tcp_keepalive_applies_to_accepted_and_connected_sockets() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let connected = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();

        let off = Runtime::new(ContextSettings::default(), KeepaliveConfig::default());
        configure(&off, &accepted);
        assert!(!socket2::SockRef::from(&accepted).keepalive().unwrap());

        let settings = ContextSettings {
            tcp_keepalive: Some(Duration::from_secs(7)),
            ..ContextSettings::default()
        };
        let on = Runtime::new(settings, KeepaliveConfig::default());
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
