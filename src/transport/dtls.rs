//! The DTLS driver: CoAP over DTLS behaves as over UDP (empty CON ping, RST pong, RFC 7252
//! retransmission), so DTLS sessions run the datagram driver of [`super::udp`].
//!
//! A server endpoint runs one driver, with one session table and deadline queue, for all its
//! connections (`DtlsEndpointIo`): [`DtlsListener`] demultiplexes the socket and runs the
//! handshakes, each under the context's connect timeout; a completed one becomes a session of
//! the driver, and a connection keeps no task or buffer of ours: the driver reads a
//! connection's decrypted records into its own buffer when the connection's waker says one is
//! there. A handshake that fails is reported as a session that failed with
//! [`NackReason::TlsFailed`], its cause in [`Session::failure_cause`]. A client runs a driver
//! of its own over its one connection (`DtlsIo`).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Instant;

use tokio::sync::mpsc;
use webrtc_dtls::conn::DTLSConn;
use webrtc_util::conn::Conn;

use crate::credentials::{ClientCredentials, ServerCredentials};
use crate::proto::error::{Error, NackReason, Result};
use crate::runtime::metrics::HandshakeFailure;
use crate::runtime::session::{Role, Session, Transport};
use crate::runtime::Runtime;
use crate::transport::dtls_conn::{
    dtls_connect, dtls_recv, dtls_send, is_close_notify, DtlsAccept, DtlsListener,
};
use crate::transport::udp::{DatagramDriver, DatagramIo, Received};
use crate::transport::{report_failed_start, unspecified_like, Endpoint};

/// Server handshakes in progress at once per endpoint; a ClientHello beyond it is dropped (the
/// peer retransmits it).
const MAX_HANDSHAKES_IN_PROGRESS: usize = 256;

/// The largest decrypted record a server connection hands to the driver. A CoAP message over
/// DTLS fits one datagram (RFC 7252 §4.6: 1152 bytes unless the path MTU is known, a 1024-byte
/// block and its header); a larger record is dropped, as an oversized datagram would be.
const MAX_RECORD: usize = 1536;

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
    async fn recv<'a>(&'a self, buf: &'a mut [u8]) -> io::Result<Received> {
        match dtls_recv(&self.conn, buf).await {
            Ok(Some(len)) => Ok(Received::Datagram(len, self.peer)),
            Ok(None) => Ok(Received::Closed(self.peer)),
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

/// One live connection of a server endpoint.
struct Live {
    /// Tells this connection from a later one of the same address.
    id: u64,
    conn: Arc<DTLSConn>,
    /// Wakes the driver when the connection has a decrypted record (or has ended).
    ready: Arc<ReadyWaker>,
}

/// A connection's waker: puts the connection on the endpoint's ready queue, once until the
/// driver has looked at it.
///
/// A connection holds no reader of its own: the driver polls `DTLSConn::read` once, with its
/// own buffer and this waker, and drops the future when it is pending. webrtc-dtls hands
/// decrypted records over a tokio channel, whose `poll_recv` keeps the waker of its last
/// pending poll and wakes it on the next record or on the channel's close, so the record waits
/// in the channel until the driver reads it.
struct ReadyWaker {
    peer: SocketAddr,
    id: u64,
    queued: AtomicBool,
    ready: mpsc::UnboundedSender<(SocketAddr, u64)>,
}

impl Wake for ReadyWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            // The driver is gone when this fails: nothing is left to wake.
            let _ = self.ready.send((self.peer, self.id));
        }
    }
}

/// Every DTLS connection of a server endpoint as one datagram socket: handshakes come out of
/// the listener as [`Received::Connected`], records of all connections as datagrams, and a
/// session's end closes its connection.
struct DtlsEndpointIo {
    rt: Arc<Runtime>,
    listener: DtlsListener,
    local: SocketAddr,
    live: Mutex<HashMap<SocketAddr, Live>>,
    next_id: AtomicU64,
    ready_tx: mpsc::UnboundedSender<(SocketAddr, u64)>,
    /// Connections whose waker fired: a record (or the end) may be there to read.
    ready: tokio::sync::Mutex<mpsc::UnboundedReceiver<(SocketAddr, u64)>>,
}

impl DtlsEndpointIo {
    fn new(rt: &Arc<Runtime>, listener: DtlsListener) -> DtlsEndpointIo {
        let (ready_tx, ready) = mpsc::unbounded_channel();
        DtlsEndpointIo {
            rt: Arc::clone(rt),
            local: listener.local_addr(),
            listener,
            live: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            ready_tx,
            ready: tokio::sync::Mutex::new(ready),
        }
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Live>> {
        // Every update is one call: the map stays consistent if a holder panicked.
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Routes `peer` to `conn`, and has the driver look for records at once: the first may
    /// have come with the handshake's last flight.
    fn register(&self, conn: Arc<DTLSConn>, peer: SocketAddr) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let ready = Arc::new(ReadyWaker {
            peer,
            id,
            queued: AtomicBool::new(false),
            ready: self.ready_tx.clone(),
        });
        ready.wake_by_ref();
        if let Some(old) = self.live().insert(peer, Live { id, conn, ready }) {
            close_live(old);
        }
    }

    /// A handshake's outcome; `Some` when a session should open.
    fn on_accept(&self, accepted: DtlsAccept) -> Option<Received> {
        match accepted {
            DtlsAccept::Established(conn, peer) => {
                tracing::debug!(%peer, "dtls handshake completed");
                self.rt.counters.handshake(Transport::Dtls);
                self.register(conn, peer);
                Some(Received::Connected(peer))
            }
            DtlsAccept::Failed { peer, error } => {
                tracing::debug!(%peer, %error, "dtls handshake failed");
                self.rt
                    .counters
                    .handshake_failed(Transport::Dtls, HandshakeFailure::of(&error));
                let session = report_failed_start(
                    &self.rt,
                    peer,
                    self.local,
                    Transport::Dtls,
                    Role::Server,
                    NackReason::TlsFailed,
                    Some(cause_of(&error)),
                );
                drop(session);
                None
            }
        }
    }

    /// Reads what the connection `(peer, id)` has for the driver into `buf`: `None` when it has
    /// nothing yet (its waker will say when), or when it is no longer live.
    fn on_ready(&self, peer: SocketAddr, id: u64, buf: &mut [u8]) -> Option<Received> {
        let mut live = self.live();
        let conn = live.get(&peer).filter(|l| l.id == id)?;
        conn.ready.queued.store(false, Ordering::Release);
        let limit = buf.len().min(MAX_RECORD);
        let waker = Waker::from(Arc::clone(&conn.ready));
        match poll_read(&conn.conn, &mut buf[..limit], &waker) {
            Poll::Pending => None,
            Poll::Ready(Ok(len)) => {
                // More may be queued behind it: look again before waiting for the waker.
                waker.wake_by_ref();
                Some(Received::Datagram(len, peer))
            }
            Poll::Ready(Err(webrtc_dtls::Error::ErrBufferTooSmall)) => {
                // At info, as other refused input: an operator running `serve -v` sees it.
                tracing::info!(%peer, "a DTLS record above {MAX_RECORD} bytes dropped");
                waker.wake_by_ref();
                None
            }
            Poll::Ready(Err(error)) => {
                // close_notify, a fatal alert, or a broken transport.
                if !is_close_notify(&error) {
                    tracing::debug!(%peer, %error, "DTLS receive failed");
                }
                if let Some(old) = live.remove(&peer) {
                    close_live(old);
                }
                Some(Received::Closed(peer))
            }
        }
    }
}

impl DatagramIo for DtlsEndpointIo {
    async fn recv<'a>(&'a self, buf: &'a mut [u8]) -> io::Result<Received> {
        let mut ready = self.ready.lock().await;
        loop {
            tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok(accepted) => {
                        if let Some(received) = self.on_accept(accepted) {
                            return Ok(received);
                        }
                    }
                    Err(error) => return Err(into_io(error)),
                },
                Some((peer, id)) = ready.recv() => {
                    if let Some(received) = self.on_ready(peer, id, buf) {
                        return Ok(received);
                    }
                }
            }
        }
    }

    async fn send_to<'a>(&'a self, buf: &'a [u8], peer: SocketAddr) -> io::Result<()> {
        let conn = self.live().get(&peer).map(|l| Arc::clone(&l.conn));
        match conn {
            Some(conn) => dtls_send(&conn, buf).await.map_err(into_io),
            None => Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "DTLS connection closed",
            )),
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    fn strangers_open_sessions(&self) -> bool {
        false
    }

    async fn release(&self, peer: SocketAddr) {
        let old = self.live().remove(&peer);
        if let Some(old) = old {
            close_live(old);
        }
    }

    async fn close(&self) {
        let all: Vec<Live> = self.live().drain().map(|(_, l)| l).collect();
        for live in all {
            close_live(live);
        }
    }
}

/// Closes a connection (close_notify) in the background.
fn close_live(live: Live) {
    let conn = live.conn;
    tokio::spawn(async move {
        let _ = conn.close().await;
    });
}

/// Polls `conn.read` once with `waker`, then drops the read: a pending one leaves the waker
/// with webrtc-dtls's channel of decrypted records (see [`ReadyWaker`]), and nothing is taken
/// from the connection unless the read completed.
fn poll_read(
    conn: &DTLSConn,
    buf: &mut [u8],
    waker: &Waker,
) -> Poll<std::result::Result<usize, webrtc_dtls::Error>> {
    let read = std::pin::pin!(conn.read(buf, None));
    read.poll(&mut Context::from_waker(waker))
}

/// The cause in a handshake error (`handshake with PEER failed: CAUSE`).
fn cause_of(error: &Error) -> String {
    let text = match error {
        Error::Tls(text) => text.as_str(),
        _ => return error.to_string(),
    };
    match text.split_once(" failed: ") {
        Some((_, cause)) => cause.to_string(),
        None => text.to_string(),
    }
}

/// Binds `addr` and serves every peer that completes a handshake, all from one driver.
pub(crate) async fn listen(
    rt: &Arc<Runtime>,
    addr: SocketAddr,
    credentials: &ServerCredentials,
) -> Result<Endpoint> {
    let configs = credentials.dtls_configs()?;
    let listener = DtlsListener::bind(
        addr,
        configs,
        rt.settings.connect_timeout,
        MAX_HANDSHAKES_IN_PROGRESS,
    )
    .await?;
    let local_addr = listener.local_addr();
    let driver = DatagramDriver::new(rt, DtlsEndpointIo::new(rt, listener), Transport::Dtls, true);
    rt.spawn(driver.run());
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
                Some(cause_of(&error)),
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
