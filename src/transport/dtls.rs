//! The DTLS driver: CoAP over DTLS behaves as over UDP (empty CON ping, RST pong, RFC 7252
//! retransmission), so DTLS sessions run the datagram driver of [`super::udp`].
//!
//! A server endpoint runs one driver, with one session table and deadline queue, for all its
//! connections (`DtlsEndpointIo`): [`DtlsListener`] demultiplexes the socket and runs the
//! handshakes, each under the context's connect timeout; a completed one becomes a session of
//! the driver, and each connection keeps only a small task that hands its decrypted records to
//! the driver. A handshake that fails is reported as a session that failed with
//! [`NackReason::TlsFailed`], its cause in [`Session::failure_cause`]. A client runs a driver
//! of its own over its one connection (`DtlsIo`).

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
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

/// The largest decrypted record a server connection hands to the driver: each connection's
/// reader holds a buffer this big for as long as it lives. A CoAP message over DTLS fits one
/// datagram (RFC 7252 §4.6: 1152 bytes unless the path MTU is known, a 1024-byte block and its
/// header); a larger record is dropped, as an oversized datagram would be.
const MAX_RECORD: usize = 1536;

/// Decrypted records and closes queued from all connections for the driver.
const READER_QUEUE: usize = 256;

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

/// What a connection's reader hands the driver.
enum Record {
    /// A decrypted record.
    Data(Vec<u8>),
    /// The connection is over (close_notify, fatal alert, or a broken transport).
    Closed,
}

/// One live connection of a server endpoint.
struct Live {
    /// Tells this connection from a later one of the same address.
    id: u64,
    conn: Arc<DTLSConn>,
    reader: tokio::task::AbortHandle,
}

/// Every DTLS connection of a server endpoint as one datagram socket: handshakes come out of
/// the listener as [`Received::Connected`], records of all connections as datagrams, and a
/// session's end closes its connection.
struct DtlsEndpointIo {
    rt: Arc<Runtime>,
    listener: DtlsListener,
    local: SocketAddr,
    live: Mutex<HashMap<SocketAddr, Live>>,
    next_id: std::sync::atomic::AtomicU64,
    records_tx: mpsc::Sender<(SocketAddr, u64, Record)>,
    records: tokio::sync::Mutex<mpsc::Receiver<(SocketAddr, u64, Record)>>,
}

impl DtlsEndpointIo {
    fn new(rt: &Arc<Runtime>, listener: DtlsListener) -> DtlsEndpointIo {
        let (records_tx, records) = mpsc::channel(READER_QUEUE);
        DtlsEndpointIo {
            rt: Arc::clone(rt),
            local: listener.local_addr(),
            listener,
            live: Mutex::new(HashMap::new()),
            next_id: std::sync::atomic::AtomicU64::new(0),
            records_tx,
            records: tokio::sync::Mutex::new(records),
        }
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Live>> {
        // Every update is one call: the map stays consistent if a holder panicked.
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts reading `conn` and routes `peer` to it.
    fn register(&self, conn: Arc<DTLSConn>, peer: SocketAddr) {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let reader = tokio::spawn(read_records(
            Arc::clone(&conn),
            peer,
            id,
            self.records_tx.clone(),
        ))
        .abort_handle();
        if let Some(old) = self.live().insert(peer, Live { id, conn, reader }) {
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

    /// A record from a reader; `None` when it is from a connection that is no longer live.
    fn on_record(
        &self,
        peer: SocketAddr,
        id: u64,
        record: Record,
        buf: &mut [u8],
    ) -> Option<Received> {
        let mut live = self.live();
        if live.get(&peer).is_none_or(|l| l.id != id) {
            return None;
        }
        match record {
            Record::Data(data) => {
                let len = data.len().min(buf.len());
                buf[..len].copy_from_slice(&data[..len]);
                Some(Received::Datagram(len, peer))
            }
            Record::Closed => {
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
        let mut records = self.records.lock().await;
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
                Some((peer, id, record)) = records.recv() => {
                    if let Some(received) = self.on_record(peer, id, record, buf) {
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

/// Stops a connection's reader and closes it (close_notify) in the background.
fn close_live(live: Live) {
    live.reader.abort();
    let conn = live.conn;
    tokio::spawn(async move {
        let _ = conn.close().await;
    });
}

/// The reader of one server connection: hands each decrypted record to the endpoint's driver,
/// then the connection's end.
async fn read_records(
    conn: Arc<DTLSConn>,
    peer: SocketAddr,
    id: u64,
    records: mpsc::Sender<(SocketAddr, u64, Record)>,
) {
    let mut buf = vec![0u8; MAX_RECORD];
    loop {
        let record = match conn.read(&mut buf, None).await {
            Ok(len) => Record::Data(buf[..len].to_vec()),
            Err(webrtc_dtls::Error::ErrBufferTooSmall) => {
                // At info, as other refused input: an operator running `serve -v` sees it.
                tracing::info!(%peer, "a DTLS record above {MAX_RECORD} bytes dropped");
                continue;
            }
            Err(error) => {
                if !is_close_notify(&error) {
                    tracing::debug!(%peer, %error, "DTLS receive failed");
                }
                Record::Closed
            }
        };
        let closed = matches!(record, Record::Closed);
        if records.send((peer, id, record)).await.is_err() || closed {
            return;
        }
    }
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
