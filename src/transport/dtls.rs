//! The DTLS driver: CoAP over DTLS behaves as over UDP (empty CON ping, RST pong, RFC 7252
//! retransmission), so each DTLS connection runs the datagram driver of [`super::udp`] over
//! `DtlsIo`, one driver per connection.
//!
//! A server's handshakes run in [`DtlsListener`]'s tasks, each under the context's connect
//! timeout; a handshake that fails is reported as a session that failed with
//! [`NackReason::TlsFailed`].

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use webrtc_dtls::conn::DTLSConn;
use webrtc_util::conn::Conn;

use crate::credentials::{ClientCredentials, ServerCredentials};
use crate::proto::error::{Error, NackReason, Result};
use crate::runtime::metrics::{AtLimit, HandshakeFailure};
use crate::runtime::session::{Role, Session, Transport};
use crate::runtime::Runtime;
use crate::transport::dtls_conn::{dtls_connect, dtls_recv, dtls_send, DtlsAccept, DtlsListener};
use crate::transport::udp::{DatagramDriver, DatagramIo};
use crate::transport::{report_failed_start, unspecified_like, Endpoint, SessionLimit};

/// Server handshakes in progress at once per endpoint; a ClientHello beyond it is dropped (the
/// peer retransmits it).
const MAX_HANDSHAKES_IN_PROGRESS: usize = 256;

/// One DTLS connection as the datagram driver's socket: every datagram comes from, and goes
/// to, the connection's one peer.
pub(crate) struct DtlsIo {
    conn: Arc<DTLSConn>,
    peer: SocketAddr,
    local: SocketAddr,
}

impl DtlsIo {
    fn new(conn: Arc<DTLSConn>, peer: SocketAddr) -> DtlsIo {
        let local = conn.local_addr().unwrap_or_else(|_| unspecified_like(peer));
        DtlsIo { conn, peer, local }
    }
}

impl DatagramIo for DtlsIo {
    async fn recv_from<'a>(&'a self, buf: &'a mut [u8]) -> io::Result<(usize, SocketAddr)> {
        match dtls_recv(&self.conn, buf).await {
            Ok(Some(len)) => Ok((len, self.peer)),
            Ok(None) => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "DTLS connection closed",
            )),
            Err(error) => Err(into_io(error)),
        }
    }

    async fn send_to<'a>(&'a self, buf: &'a [u8], _peer: SocketAddr) -> io::Result<()> {
        dtls_send(&self.conn, buf).await.map_err(into_io)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    async fn close(&self) {
        // Sends close_notify; the connection may already be closed by the peer.
        let _ = self.conn.close().await;
    }
}

fn into_io(error: Error) -> io::Error {
    match error {
        Error::Io(error) => error,
        other => io::Error::other(other.to_string()),
    }
}

/// Binds `addr` and serves every peer that completes a handshake.
pub(crate) async fn listen(
    rt: &Arc<Runtime>,
    addr: SocketAddr,
    credentials: &ServerCredentials,
) -> Result<Endpoint> {
    let config = credentials.dtls_config()?;
    let listener = DtlsListener::bind(
        addr,
        config,
        rt.settings.connect_timeout,
        MAX_HANDSHAKES_IN_PROGRESS,
    )
    .await?;
    let local_addr = listener.local_addr();
    let accept_rt = Arc::clone(rt);
    let limit = SessionLimit::new(rt);
    let mut shutdown = rt.shutdown_signal();
    rt.spawn(async move {
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(DtlsAccept::Established(conn, peer)) => match limit.admit() {
                        Some(place) => {
                            accept_rt.counters.handshake(Transport::Dtls);
                            let mut driver = DatagramDriver::new(
                                &accept_rt,
                                DtlsIo::new(conn, peer),
                                Transport::Dtls,
                                false,
                            );
                            let session = driver.add_session(peer, Role::Server, Instant::now());
                            tracing::debug!(session = %session, "dtls handshake completed");
                            accept_rt.spawn(async move {
                                driver.run().await;
                                drop(place);
                            });
                        }
                        None => {
                            tracing::debug!(%peer, "session limit reached: dtls connection closed");
                            accept_rt.counters.at_limit(Transport::Dtls, AtLimit::Refused);
                            // close_notify: the peer learns at once rather than by its keepalive.
                            tokio::spawn(async move {
                                let _ = conn.close().await;
                            });
                        }
                    },
                    Ok(DtlsAccept::Failed { peer, error }) => {
                        tracing::debug!(%peer, %error, "dtls handshake failed");
                        accept_rt
                            .counters
                            .handshake_failed(Transport::Dtls, HandshakeFailure::of(&error));
                        report_failed_start(
                            &accept_rt,
                            peer,
                            local_addr,
                            Transport::Dtls,
                            Role::Server,
                            NackReason::TlsFailed,
                        );
                    }
                    Err(error) => {
                        tracing::warn!(%error, %local_addr, "dtls endpoint failed");
                        return;
                    }
                },
                _ = shutdown.changed() => return,
            }
        }
    });
    tracing::info!(%local_addr, "listening on dtls");
    Ok(Endpoint {
        transport: Transport::Dtls,
        local_addr,
    })
}

/// Runs the client handshake with `peer` and starts the session's driver. `server_name` is
/// what the server's certificate must name.
pub(crate) async fn connect(
    rt: &Arc<Runtime>,
    peer: SocketAddr,
    server_name: &str,
    credentials: &ClientCredentials,
) -> Result<Session> {
    // Bad credentials are the caller's mistake, not a session that failed: no nack.
    let config = credentials.dtls_config(server_name)?;
    let conn = match dtls_connect(peer, config, rt.settings.connect_timeout).await {
        Ok(conn) => conn,
        Err(error) => {
            tracing::debug!(%peer, %error, "dtls connect failed");
            rt.counters
                .handshake_failed(Transport::Dtls, HandshakeFailure::of(&error));
            report_failed_start(
                rt,
                peer,
                unspecified_like(peer),
                Transport::Dtls,
                Role::Client,
                error.nack_reason(),
            );
            return Err(error);
        }
    };
    rt.counters.handshake(Transport::Dtls);
    let mut driver = DatagramDriver::new(rt, DtlsIo::new(conn, peer), Transport::Dtls, false);
    let session = driver.add_session(peer, Role::Client, Instant::now());
    rt.spawn(driver.run());
    Ok(session)
}
