//! DTLS over UDP primitives (webrtc-dtls): connect with a handshake deadline, a listener that
//! runs server handshakes concurrently, and reading with a peer's close seen as end of stream.
//!
//! webrtc-dtls has no handshake timeout of its own, and its stock listener runs each handshake
//! before accepting the next peer, so one silent peer blocks all others. webrtc-util's UDP
//! listener, which it builds on, never forgets a peer either: its table of peers only grows, and
//! a peer that comes back from the same address and port is routed to its dead connection.
//! [`DtlsListener`] therefore demultiplexes the UDP socket itself: a datagram from an unknown
//! address that opens with a ClientHello starts a server handshake in a task of its own, under a
//! deadline and a bound on the handshakes in progress, and a peer is forgotten as soon as its
//! connection is closed or dropped.
//!
//! The listener also reads each new peer's ClientHello itself (`proto::wire::dtls`): its cipher
//! suites choose the configuration (PSK or certificate, [`DtlsServerConfigs`]), and a hello
//! that cannot be served is refused at once with a fatal alert naming why. Every failed
//! handshake, on either side, is reported with its cause (`Diagnosis`).

use std::collections::HashMap;
use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};
use webrtc_dtls::config::Config;
use webrtc_dtls::conn::DTLSConn;
use webrtc_util::conn::Conn;

use crate::credentials::dtls::{serves, DtlsServerConfigs, IdentityLookup};
use crate::proto::error::{Error, Result};
use crate::proto::wire::dtls::{
    self as wire, is_client_hello, parse_client_hello, Alert, ClientHello, HelloError, SuiteKind,
};

/// Datagrams queued for one peer's connection before more are dropped, as a full socket buffer
/// would.
const PEER_QUEUE_DATAGRAMS: usize = 64;
/// Handshake outcomes queued for [`DtlsListener::accept`].
const ACCEPT_QUEUE: usize = 32;
/// Large enough for any UDP datagram.
const MAX_DATAGRAM: usize = 65_535;
/// Refusals (a ClientHello answered with a fatal alert) reported per second at most; beyond,
/// they are refused all the same but only counted in the log.
const REFUSALS_REPORTED_PER_SEC: u32 = 64;

/// Connects to a DTLS server at `peer` from an ephemeral UDP port and runs the client handshake
/// within `timeout`.
///
/// When `config.server_name` is empty it is set to the peer's IP address (what webrtc-dtls
/// would pick itself if it knew the address). Every failure, the deadline included, is an
/// [`Error::Tls`] that names its cause (`handshake with PEER failed: CAUSE`), read from what
/// the server sent: a plaintext alert, nothing at all, something that is not DTLS, or silence
/// after our Finished.
pub async fn dtls_connect(
    peer: SocketAddr,
    mut config: Config,
    timeout: Duration,
) -> Result<Arc<DTLSConn>> {
    let local: SocketAddr = if peer.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(peer).await?;
    if config.server_name.is_empty() {
        config.server_name = peer.ip().to_string();
    }
    let mode = if config.psk.is_some() {
        Mode::Psk
    } else {
        Mode::Certificate {
            presents: !config.certificates.is_empty(),
        }
    };
    let socket = Arc::new(ClientConn {
        socket,
        seen: Mutex::new(ClientSeen::default()),
    });
    let conn: Arc<dyn Conn + Send + Sync> = socket.clone();
    let outcome = tokio::time::timeout(timeout, DTLSConn::new(conn, config, true, None)).await;
    let seen = socket.seen().clone();
    match outcome {
        Ok(Ok(conn)) => Ok(Arc::new(conn)),
        Ok(Err(e)) => Err(Error::Tls(format!(
            "handshake with {peer} failed: {}",
            seen.diagnose(mode, Some(&e.to_string()), timeout)
        ))),
        Err(_) => Err(Error::Tls(format!(
            "handshake with {peer} failed: {}",
            seen.diagnose(mode, None, timeout)
        ))),
    }
}

/// What a handshake authenticates with, as far as its diagnosis goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Psk,
    Certificate {
        /// Whether we have a certificate of our own to present.
        presents: bool,
    },
}

/// What a client saw of its handshake on the wire, for the diagnosis of a failure.
#[derive(Debug, Clone, Default)]
struct ClientSeen {
    /// Datagrams that were DTLS records.
    dtls: u64,
    /// Datagrams that were not; and whether the first of them looked like CoAP (version 1).
    not_dtls: u64,
    coap: bool,
    /// An ICMP port (or host) unreachable came back.
    unreachable: bool,
    /// The first plaintext alert the server sent.
    alert: Option<Alert>,
    /// The server's ServerHelloDone arrived: its first flight was whole.
    server_hello_done: bool,
    /// The server asked for our certificate (a CertificateRequest).
    certificate_requested: bool,
    /// We sent an encrypted record (our Finished).
    sent_finished: bool,
}

impl ClientSeen {
    /// The cause of a failed handshake: `error` is webrtc-dtls's (none for our deadline).
    fn diagnose(&self, mode: Mode, error: Option<&str>, timeout: Duration) -> String {
        let detail = error.map(|e| format!(" ({e})")).unwrap_or_default();
        // Our own verification of the server's certificate comes first: it is what we know for
        // sure, and an alert of the server's may only answer ours (or race it, when the
        // server also refuses something of ours).
        if let Some(e) = error {
            if e.contains("not valid for name") {
                return format!("the server's certificate does not name this host ({e})");
            }
            if e.contains("invalid peer certificate") {
                return format!("untrusted server certificate (not signed by the CA given) ({e})");
            }
        }
        if let Some(alert) = self.alert.filter(|a| a.is_fatal()) {
            return format!("{}{detail}", alert_cause(alert, mode, self));
        }
        let waited = format!("timed out after {timeout:?}");
        if self.dtls == 0 && self.not_dtls > 0 {
            let what = if self.coap {
                "a plain CoAP (UDP) endpoint answered: this port does not speak DTLS (use coap://)"
            } else {
                "the server answered with datagrams that are not DTLS"
            };
            return format!("not a DTLS server: {what}{detail}");
        }
        if self.dtls == 0 && self.unreachable {
            return format!(
                "nothing listens there: the server's host reported the port unreachable (ICMP){detail}"
            );
        }
        if self.dtls == 0 {
            return format!(
                "handshake timeout: no answer from the server ({waited}; nothing listens there, \
                 or it is not a DTLS server){detail}"
            );
        }
        if self.sent_finished && mode == Mode::Psk && error.is_none() {
            // DTLS servers drop records they cannot decrypt (RFC 6347 §4.1.2.7): with a wrong
            // PSK, libcoap's OpenSSL server answers the ClientHello, then ignores our Finished.
            return format!(
                "wrong PSK, most likely: the server answered, then ignored our Finished (it \
                 could not decrypt it) and {waited}"
            );
        }
        match error {
            Some(e) => format!("cause unknown: {e}"),
            None => format!(
                "handshake timeout: the server answered, then fell silent mid-handshake ({waited})"
            ),
        }
    }
}

/// What a fatal alert from the server means for a client in `mode`.
fn alert_cause(alert: Alert, mode: Mode, seen: &ClientSeen) -> String {
    let psk = mode == Mode::Psk;
    let presents = matches!(mode, Mode::Certificate { presents: true });
    let server_hello_done = seen.server_hello_done;
    // A certificate-mode server that asked for our certificate and then failed the handshake
    // (OpenSSL sends handshake_failure for a missing one, RFC 5246 §7.4.6).
    if !psk && seen.certificate_requested && alert.description != wire::ALERT_INTERNAL_ERROR {
        let cause = if presents {
            "client certificate rejected by the server"
        } else {
            "missing client certificate (the server requires one: --cert and --key)"
        };
        return format!("{cause}: the server sent alert {alert}");
    }
    let offered = if psk {
        "PSK"
    } else {
        "certificate (ECDHE-ECDSA)"
    };
    let cause = match alert.description {
        wire::ALERT_HANDSHAKE_FAILURE | 71 if !server_hello_done => format!(
            "no shared cipher suite: the server does not serve {offered} clients on this port"
        ),
        wire::ALERT_UNKNOWN_PSK_IDENTITY => {
            "unknown PSK identity (the server does not know it)".into()
        }
        wire::ALERT_BAD_RECORD_MAC | 51 if psk => {
            "wrong PSK (the server could not decrypt our Finished)".into()
        }
        41 | 116 => "missing client certificate (the server requires one: --cert and --key)".into(),
        42..=46 | 48 if presents => "client certificate rejected by the server".into(),
        42..=46 | 48 => {
            "missing client certificate (the server requires one: --cert and --key)".into()
        }
        wire::ALERT_DECODE_ERROR => "the server could not decode our handshake".into(),
        wire::ALERT_INTERNAL_ERROR => {
            "the server failed the handshake on its side (internal_error)".into()
        }
        _ => "the server refused the handshake".into(),
    };
    format!("{cause}: the server sent alert {alert}")
}

/// Reads one datagram's worth of application data; `Ok(None)` when the peer has closed the
/// connection (a close_notify, or a fatal alert) or it was closed locally.
pub async fn dtls_recv(conn: &DTLSConn, buf: &mut [u8]) -> Result<Option<usize>> {
    match conn.read(buf, None).await {
        Ok(n) => Ok(Some(n)),
        Err(e) if is_close_notify(&e) => Ok(None),
        Err(e) => Err(Error::Tls(format!("DTLS receive failed: {e}"))),
    }
}

/// Sends `data` as one DTLS record.
pub async fn dtls_send(conn: &DTLSConn, data: &[u8]) -> Result<()> {
    match conn.write(data, None).await {
        Ok(_) => Ok(()),
        Err(webrtc_dtls::Error::Util(webrtc_util::Error::Io(e))) => Err(Error::Io(e.0)),
        Err(e) => Err(Error::Tls(format!("DTLS send failed: {e}"))),
    }
}

/// True when a webrtc-dtls read error means the connection is over rather than broken: the
/// peer sent a close_notify (or a fatal alert, which webrtc-dtls does not tell apart) or the
/// connection was closed locally.
pub fn is_close_notify(error: &webrtc_dtls::Error) -> bool {
    matches!(
        error,
        webrtc_dtls::Error::ErrAlertFatalOrClose | webrtc_dtls::Error::ErrConnClosed
    )
}

/// The outcome of one server-side handshake.
#[non_exhaustive]
pub enum DtlsAccept {
    /// The handshake completed: the connection and the peer's address.
    Established(Arc<DTLSConn>, SocketAddr),
    /// The handshake failed or timed out; `error` is an [`Error::Tls`].
    Failed {
        /// The peer's address.
        peer: SocketAddr,
        /// Why the handshake failed.
        error: Error,
    },
}

impl std::fmt::Debug for DtlsAccept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DtlsAccept::Established(_, peer) => f.debug_tuple("Established").field(peer).finish(),
            DtlsAccept::Failed { peer, error } => f
                .debug_struct("Failed")
                .field("peer", peer)
                .field("error", error)
                .finish(),
        }
    }
}

/// A DTLS server socket whose handshakes run concurrently.
///
/// A datagram from a new address is taken as a connection attempt only when it opens with a
/// ClientHello; anything else from an unknown address is dropped. Each handshake runs in its
/// own task within the handshake deadline; when `max_handshakes_in_progress` are already
/// running, a new peer's ClientHello is dropped (the peer will retransmit it).
///
/// Dropping the listener starts no new handshakes (those in progress are closed as they
/// complete); the socket stays open for the connections it accepted until the last of them is
/// closed or dropped.
///
/// A datagram from an address with a live connection goes to that connection, even a new
/// ClientHello: a peer that restarts on the same port is served only once its old connection
/// has been closed.
pub struct DtlsListener {
    local_addr: SocketAddr,
    peers: Arc<PeerTable>,
    accepted: tokio::sync::Mutex<mpsc::Receiver<Result<DtlsAccept>>>,
}

impl DtlsListener {
    /// Binds a UDP socket to `addr` and starts serving DTLS handshakes with `configs`, the one
    /// each client's ClientHello chooses. `max_handshakes_in_progress` is at least 1.
    pub async fn bind(
        addr: SocketAddr,
        configs: DtlsServerConfigs,
        handshake_timeout: Duration,
        max_handshakes_in_progress: usize,
    ) -> Result<DtlsListener> {
        let socket = Arc::new(UdpSocket::bind(addr).await?);
        let local_addr = socket.local_addr()?;
        let peers = Arc::new(PeerTable::default());
        let (accepted_tx, accepted_rx) = mpsc::channel(ACCEPT_QUEUE);
        let demux = Demux {
            socket,
            peers: Arc::clone(&peers),
            configs,
            handshake_timeout,
            refusals: RefusalBudget::default(),
            handshakes: Arc::new(Semaphore::new(max_handshakes_in_progress.max(1))),
            accepted: accepted_tx,
        };
        tokio::spawn(demux.run());
        Ok(DtlsListener {
            local_addr,
            peers,
            accepted: tokio::sync::Mutex::new(accepted_rx),
        })
    }

    /// The address the socket is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Waits for the next handshake to complete or fail.
    ///
    /// An error means the socket itself failed; the listener then accepts nothing more.
    pub async fn accept(&self) -> Result<DtlsAccept> {
        match self.accepted.lock().await.recv().await {
            Some(outcome) => outcome,
            None => Err(Error::Closed),
        }
    }

    /// How many peers datagrams are currently routed to: handshakes in progress and
    /// connections not yet closed or dropped.
    #[cfg(test)]
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }
}

impl Drop for DtlsListener {
    fn drop(&mut self) {
        self.peers.close();
    }
}

impl std::fmt::Debug for DtlsListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DtlsListener")
            .field("local_addr", &self.local_addr)
            .field("peers", &self.peers.len())
            .finish_non_exhaustive()
    }
}

/// The task that reads the listener's socket and hands each datagram to its peer.
struct Demux {
    socket: Arc<UdpSocket>,
    peers: Arc<PeerTable>,
    configs: DtlsServerConfigs,
    handshake_timeout: Duration,
    refusals: RefusalBudget,
    handshakes: Arc<Semaphore>,
    accepted: mpsc::Sender<Result<DtlsAccept>>,
}

impl Demux {
    async fn run(mut self) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            if self.peers.is_closed() && self.peers.len() == 0 {
                tracing::trace!(addr = ?self.socket.local_addr(), "DTLS listener socket closed");
                return;
            }
            let received = tokio::select! {
                received = self.socket.recv_from(&mut buf) => received,
                () = self.peers.changed.notified() => continue,
            };
            let (n, peer) = match received {
                Ok(received) => received,
                // An ICMP error for an earlier send, reported on some platforms: not fatal.
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset
                    ) =>
                {
                    continue
                }
                Err(e) => {
                    tracing::warn!(error = %e, "DTLS listener socket failed");
                    let _ = self.accepted.send(Err(Error::Io(e))).await;
                    return;
                }
            };
            let datagram = &buf[..n];
            if self.peers.deliver(peer, datagram) {
                continue;
            }
            if self.peers.is_closed() || !is_client_hello(datagram) {
                tracing::trace!(%peer, len = n, "dropping a datagram from an unknown peer");
                continue;
            }
            let (config, notes) = match self.choose(datagram) {
                Ok(chosen) => chosen,
                Err(refusal) => {
                    self.refuse(peer, refusal).await;
                    continue;
                }
            };
            let Ok(permit) = Arc::clone(&self.handshakes).try_acquire_owned() else {
                tracing::debug!(%peer, "too many DTLS handshakes in progress; dropping a ClientHello");
                continue;
            };
            let conn = self
                .peers
                .insert(&self.socket, peer, datagram, Arc::clone(&notes));
            tokio::spawn(handshake(
                conn,
                config,
                notes,
                self.handshake_timeout,
                permit,
                self.accepted.clone(),
            ));
        }
    }

    /// The configuration for a new peer whose first datagram is the ClientHello `datagram`,
    /// chosen by the first cipher suite in the client's list that one of ours serves; or why
    /// the hello cannot be served.
    fn choose(&self, datagram: &[u8]) -> std::result::Result<(Config, Arc<Notes>), Refusal> {
        let hello = match parse_client_hello(datagram) {
            Ok(hello) => Some(hello),
            // Its suites are in a later fragment: webrtc-dtls reassembles it, in the mode we
            // have (PSK when both: the common case on constrained networks).
            Err(HelloError::Fragmented) => None,
            Err(error) => return Err(Refusal::Malformed(error)),
        };
        if let Some(hello) = &hello {
            if !hello.has_extensions {
                return Err(Refusal::NoExtensions);
            }
        }
        let psk_first = match &hello {
            Some(hello) => {
                let psk = self.configs.psk.as_ref();
                let cert = self.configs.certificate.as_ref();
                let first = hello.cipher_suites.iter().find_map(|&suite| {
                    if psk.is_some_and(|p| p.serves(suite)) {
                        Some(true)
                    } else if cert.is_some_and(|c| serves(c, suite)) {
                        Some(false)
                    } else {
                        None
                    }
                });
                match first {
                    Some(psk_first) => psk_first,
                    None => return Err(Refusal::NoSharedSuite(hello.clone())),
                }
            }
            None => self.configs.psk.is_some(),
        };
        let notes = Arc::new(Notes {
            psk: psk_first,
            lookup: Mutex::new(None),
            datagrams_in: AtomicU64::new(0),
        });
        let config = match (psk_first, &self.configs.psk, &self.configs.certificate) {
            (true, Some(psk), _) => {
                let seen = Arc::clone(&notes);
                psk.config(move |found| {
                    *seen.lookup.lock().unwrap_or_else(PoisonError::into_inner) = Some(found);
                })
            }
            (_, _, Some(certificate)) => certificate.clone(),
            // DtlsServerConfigs always holds one; a PSK-only endpoint chose PSK above.
            (_, Some(psk), None) => psk.config(|_| {}),
            (_, None, None) => {
                return Err(Refusal::NoSharedSuite(ClientHello {
                    cipher_suites: Vec::new(),
                    has_extensions: true,
                    has_cookie: false,
                }))
            }
        };
        Ok((config, notes))
    }

    /// Answers a ClientHello that cannot be served with a fatal alert naming why, and reports
    /// the failed handshake (at most `REFUSALS_REPORTED_PER_SEC` a second).
    async fn refuse(&mut self, peer: SocketAddr, refusal: Refusal) {
        let (alert, cause) = match &refusal {
            Refusal::Malformed(error) => (wire::ALERT_DECODE_ERROR, error.to_string()),
            Refusal::NoExtensions => (
                wire::ALERT_INTERNAL_ERROR,
                "ClientHello without extensions (RFC 5246 §7.4.1.2 allows it; node-coap-client \
                 sends it): webrtc-dtls 0.12 cannot parse it (failed to fill whole buffer), a \
                 limitation of the DTLS library"
                    .to_string(),
            ),
            Refusal::NoSharedSuite(hello) => {
                let serves = match (&self.configs.psk, &self.configs.certificate) {
                    (Some(_), Some(_)) => "PSK and certificate (ECDHE-ECDSA) suites",
                    (Some(_), None) => "PSK suites only",
                    _ => "certificate (ECDHE-ECDSA) suites only",
                };
                let offered =
                    if hello.offers(SuiteKind::EcdheEcdsa) && !hello.offers(SuiteKind::Psk) {
                        "certificate (ECDHE-ECDSA) suites"
                    } else if hello.offers(SuiteKind::Psk) {
                        "PSK suites we do not serve"
                    } else {
                        "neither PSK nor ECDHE-ECDSA suites"
                    };
                (
                    wire::ALERT_HANDSHAKE_FAILURE,
                    format!(
                        "no shared cipher suite: the client offered {offered} ({}), this endpoint \
                         serves {serves}",
                        hello.suites_hex()
                    ),
                )
            }
        };
        if let Err(error) = self.socket.send_to(&wire::fatal_alert(alert), peer).await {
            tracing::debug!(%peer, %error, "DTLS alert not sent");
        }
        if !self.refusals.take() {
            tracing::debug!(%peer, %cause, "DTLS ClientHello refused (not reported: too many)");
            return;
        }
        tracing::debug!(%peer, %cause, "DTLS ClientHello refused");
        let failed = DtlsAccept::Failed {
            peer,
            error: Error::Tls(format!("handshake with {peer} failed: {cause}")),
        };
        // Never waits: a flood of bad hellos must not stall the socket.
        let _ = self.accepted.try_send(Ok(failed));
    }
}

/// Why a ClientHello is refused before any handshake starts.
enum Refusal {
    /// It could not be read.
    Malformed(HelloError),
    /// It has no extensions block, which webrtc-dtls cannot parse.
    NoExtensions,
    /// None of its cipher suites is one we serve.
    NoSharedSuite(ClientHello),
}

/// A budget of refusal reports, refilled each second.
#[derive(Default)]
struct RefusalBudget {
    second: Option<tokio::time::Instant>,
    used: u32,
}

impl RefusalBudget {
    fn take(&mut self) -> bool {
        let now = tokio::time::Instant::now();
        if self
            .second
            .is_none_or(|start| now.duration_since(start) >= Duration::from_secs(1))
        {
            self.second = Some(now);
            self.used = 0;
        }
        self.used += 1;
        self.used <= REFUSALS_REPORTED_PER_SEC
    }
}

/// What the listener notes of one server handshake, for its diagnosis.
struct Notes {
    /// PSK mode (else certificate mode).
    psk: bool,
    /// What the lookup of the client's PSK identity found.
    lookup: Mutex<Option<IdentityLookup>>,
    /// Datagrams from the client handed to webrtc-dtls, its first (the ClientHello) included.
    datagrams_in: AtomicU64,
}

impl Notes {
    fn lookup(&self) -> Option<IdentityLookup> {
        self.lookup
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The cause of a failed server handshake: `error` is webrtc-dtls's (none for our
    /// deadline).
    fn diagnose(&self, error: Option<&str>, timeout: Duration) -> String {
        let shown = |id: &[u8]| String::from_utf8_lossy(id).into_owned();
        match (self.lookup(), error) {
            (Some(IdentityLookup::Unknown(id)), _) => {
                return format!("unknown PSK identity {:?}", shown(&id))
            }
            (Some(IdentityLookup::Known(id)), None) => {
                return format!(
                    "bad PSK, most likely: identity {:?} is known, but the client fell silent \
                     after its key exchange (timed out after {timeout:?})",
                    shown(&id)
                )
            }
            (Some(IdentityLookup::Known(id)), Some(e)) if e.contains("Alert") => {
                return format!(
                    "bad PSK for identity {:?}: the client's Finished could not be decrypted \
                     ({e})",
                    shown(&id)
                )
            }
            _ => {}
        }
        match error {
            Some(e)
                if !self.psk
                    && (e.contains("ClientCertificate")
                        || e.contains("required client verification")) =>
            {
                format!("missing client certificate (this endpoint requires one) ({e})")
            }
            Some(e) if !self.psk && (e.contains("certificate") || e.contains("Certificate")) => {
                format!("bad client certificate ({e})")
            }
            Some(e) if e.contains("Alert") => {
                format!("the client aborted the handshake with a fatal alert ({e})")
            }
            Some(e) => format!("cause unknown ({e})"),
            None if self.datagrams_in.load(Ordering::Relaxed) <= 1 => format!(
                "handshake timeout: the client sent its ClientHello, then nothing more (timed \
                 out after {timeout:?})"
            ),
            None => format!(
                "handshake timeout: the client fell silent mid-handshake (timed out after \
                 {timeout:?})"
            ),
        }
    }
}

/// Runs one server handshake and reports its outcome.
async fn handshake(
    conn: Arc<PeerConn>,
    config: Config,
    notes: Arc<Notes>,
    timeout: Duration,
    permit: OwnedSemaphorePermit,
    accepted: mpsc::Sender<Result<DtlsAccept>>,
) {
    let peer = conn.peer;
    let outcome = tokio::time::timeout(timeout, DTLSConn::new(conn, config, false, None)).await;
    drop(permit);
    let event = match outcome {
        Ok(Ok(conn)) => {
            tracing::debug!(%peer, "DTLS handshake completed");
            DtlsAccept::Established(Arc::new(conn), peer)
        }
        Ok(Err(e)) => DtlsAccept::Failed {
            peer,
            error: Error::Tls(format!(
                "handshake with {peer} failed: {}",
                notes.diagnose(Some(&e.to_string()), timeout)
            )),
        },
        Err(_) => DtlsAccept::Failed {
            peer,
            error: Error::Tls(format!(
                "handshake with {peer} failed: {}",
                notes.diagnose(None, timeout)
            )),
        },
    };
    if let DtlsAccept::Failed { error, .. } = &event {
        tracing::debug!(%peer, %error, "DTLS handshake failed");
    }
    if let Err(mpsc::error::SendError(Ok(DtlsAccept::Established(conn, _)))) =
        accepted.send(Ok(event)).await
    {
        // The listener is gone: nobody will use this connection.
        let _ = conn.close().await;
    }
}

/// The peers a listener routes datagrams to, by address.
#[derive(Default)]
struct PeerTable {
    routes: Mutex<HashMap<SocketAddr, Route>>,
    next_id: AtomicU64,
    /// Set when the listener is dropped: no new peers, and the socket closes with the last route.
    closed: AtomicBool,
    /// Wakes the demultiplexer when a route is removed or the listener closed.
    changed: Notify,
}

/// Where one peer's datagrams go.
struct Route {
    /// Tells this route from a later one for the same address.
    id: u64,
    /// Gone once the peer's connection is dropped.
    queue: std::sync::Weak<PeerQueue>,
}

/// The datagrams waiting for one peer's connection. Unlike a tokio channel, which allocates 32
/// slots at its first message, it holds only as much as it was ever used for: a live
/// connection costs its few bytes for as long as it lives.
#[derive(Default)]
struct PeerQueue {
    datagrams: Mutex<std::collections::VecDeque<Vec<u8>>>,
    ready: Notify,
}

impl PeerQueue {
    fn datagrams(&self) -> std::sync::MutexGuard<'_, std::collections::VecDeque<Vec<u8>>> {
        self.datagrams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl PeerTable {
    fn routes(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Route>> {
        // The map stays consistent even if a holder panicked: every update is one call.
        self.routes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn len(&self) -> usize {
        self.routes().len()
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.changed.notify_one();
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Queues `datagram` for `peer`'s connection; false when `peer` has none.
    fn deliver(&self, peer: SocketAddr, datagram: &[u8]) -> bool {
        let mut routes = self.routes();
        let Some(route) = routes.get(&peer) else {
            return false;
        };
        let Some(queue) = route.queue.upgrade() else {
            routes.remove(&peer);
            return false;
        };
        drop(routes);
        let mut datagrams = queue.datagrams();
        if datagrams.len() >= PEER_QUEUE_DATAGRAMS {
            tracing::trace!(%peer, "DTLS peer queue full; dropping a datagram");
        } else {
            datagrams.push_back(datagram.to_vec());
            drop(datagrams);
            queue.ready.notify_one();
        }
        true
    }

    /// Adds a route for a new peer, with `first` already queued.
    fn insert(
        self: &Arc<Self>,
        socket: &Arc<UdpSocket>,
        peer: SocketAddr,
        first: &[u8],
        notes: Arc<Notes>,
    ) -> Arc<PeerConn> {
        let queue = Arc::new(PeerQueue::default());
        queue.datagrams().push_back(first.to_vec());
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let route = Route {
            id,
            queue: Arc::downgrade(&queue),
        };
        self.routes().insert(peer, route);
        Arc::new(PeerConn {
            socket: Arc::clone(socket),
            peer,
            id,
            queue,
            table: Arc::clone(self),
            notes,
        })
    }

    /// Removes `peer`'s route if it is still the one numbered `id`.
    fn remove(&self, peer: SocketAddr, id: u64) {
        let mut routes = self.routes();
        if routes.get(&peer).is_some_and(|route| route.id == id) {
            routes.remove(&peer);
            self.changed.notify_one();
        }
    }
}

/// One peer's side of the listener's socket, as webrtc-dtls's transport.
struct PeerConn {
    socket: Arc<UdpSocket>,
    peer: SocketAddr,
    id: u64,
    queue: Arc<PeerQueue>,
    table: Arc<PeerTable>,
    notes: Arc<Notes>,
}

impl PeerConn {
    /// The next datagram for this peer. Once its route is gone nothing more comes: the wait
    /// never ends (webrtc-dtls's reader retries failed reads at once, so an error here would
    /// make it spin until the DTLS connection stops it).
    async fn recv_datagram(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        loop {
            let next = self.queue.datagrams().pop_front();
            if let Some(datagram) = next {
                self.notes.datagrams_in.fetch_add(1, Ordering::Relaxed);
                // Like a UDP socket: a datagram longer than the buffer is truncated.
                let n = datagram.len().min(buf.len());
                buf[..n].copy_from_slice(&datagram[..n]);
                return Ok(n);
            }
            // A notify_one with nobody waiting leaves a permit: no datagram is missed.
            self.queue.ready.notified().await;
        }
    }
}

impl PeerConn {
    /// Sends a datagram of webrtc-dtls's to the peer. A fatal alert it sends alone in the
    /// clear for a PSK handshake gets the description RFC 4279 §2 and RFC 5246 §7.2.2 give the
    /// cause, known from the identity lookup: webrtc-dtls sends internal_error for an unknown
    /// identity and unknown_psk_identity for a wrong key.
    async fn send_datagram(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        if self.notes.psk && wire::plaintext_alert(buf).is_some_and(Alert::is_fatal) {
            let description = match self.notes.lookup() {
                Some(IdentityLookup::Unknown(_)) => Some(wire::ALERT_UNKNOWN_PSK_IDENTITY),
                Some(IdentityLookup::Known(_)) => Some(wire::ALERT_BAD_RECORD_MAC),
                None => None,
            };
            if let Some(description) = description {
                let mut alert = buf.to_vec();
                if wire::rewrite_lone_alert(&mut alert, description) {
                    return Ok(self.socket.send_to(&alert, self.peer).await?);
                }
            }
        }
        Ok(self.socket.send_to(buf, self.peer).await?)
    }
}

impl Drop for PeerConn {
    fn drop(&mut self) {
        self.table.remove(self.peer, self.id);
    }
}

/// The boxed future an `async_trait` method returns.
type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

// `Conn` is an `async_trait`; these are the signatures that macro gives its methods.
impl Conn for PeerConn {
    fn connect<'life0, 'async_trait>(
        &'life0 self,
        _addr: SocketAddr,
    ) -> BoxFuture<'async_trait, webrtc_util::Result<()>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async { Err(webrtc_util::Error::Other("already connected".into())) })
    }

    fn recv<'life0, 'life1, 'async_trait>(
        &'life0 self,
        buf: &'life1 mut [u8],
    ) -> BoxFuture<'async_trait, webrtc_util::Result<usize>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(self.recv_datagram(buf))
    }

    fn recv_from<'life0, 'life1, 'async_trait>(
        &'life0 self,
        buf: &'life1 mut [u8],
    ) -> BoxFuture<'async_trait, webrtc_util::Result<(usize, SocketAddr)>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move { Ok((self.recv_datagram(buf).await?, self.peer)) })
    }

    fn send<'life0, 'life1, 'async_trait>(
        &'life0 self,
        buf: &'life1 [u8],
    ) -> BoxFuture<'async_trait, webrtc_util::Result<usize>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(self.send_datagram(buf))
    }

    fn send_to<'life0, 'life1, 'async_trait>(
        &'life0 self,
        buf: &'life1 [u8],
        target: SocketAddr,
    ) -> BoxFuture<'async_trait, webrtc_util::Result<usize>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move { Ok(self.socket.send_to(buf, target).await?) })
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.socket.local_addr()?)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        Some(self.peer)
    }

    fn close<'life0, 'async_trait>(&'life0 self) -> BoxFuture<'async_trait, webrtc_util::Result<()>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            self.table.remove(self.peer, self.id);
            Ok(())
        })
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

/// A client's connected UDP socket as webrtc-dtls's transport, noting what crosses it (as far
/// as plaintext records say) so that a failed handshake can be diagnosed.
struct ClientConn {
    socket: UdpSocket,
    seen: Mutex<ClientSeen>,
}

impl ClientConn {
    fn seen(&self) -> std::sync::MutexGuard<'_, ClientSeen> {
        self.seen.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn recv_counted(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        let n = match self.socket.recv(buf).await {
            Ok(n) => n,
            Err(e) => {
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::HostUnreachable
                ) {
                    self.seen().unreachable = true;
                }
                return Err(e.into());
            }
        };
        let datagram = &buf[..n];
        let mut seen = self.seen();
        if wire::record_header(datagram).is_some() {
            seen.dtls += 1;
            if seen.alert.is_none() {
                seen.alert = wire::plaintext_alert(datagram);
            }
            for message in wire::plaintext_handshake_types(datagram) {
                match message {
                    wire::HANDSHAKE_SERVER_HELLO_DONE => seen.server_hello_done = true,
                    wire::HANDSHAKE_CERTIFICATE_REQUEST => seen.certificate_requested = true,
                    _ => {}
                }
            }
        } else {
            if seen.not_dtls == 0 {
                seen.coap = datagram.first().is_some_and(|b| b >> 6 == 1);
            }
            seen.not_dtls += 1;
        }
        Ok(n)
    }

    async fn send_noted(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        if wire::has_encrypted_record(buf) {
            self.seen().sent_finished = true;
        }
        Ok(self.socket.send(buf).await?)
    }
}

// `Conn` is an `async_trait`; these are the signatures that macro gives its methods.
impl Conn for ClientConn {
    fn connect<'life0, 'async_trait>(
        &'life0 self,
        addr: SocketAddr,
    ) -> BoxFuture<'async_trait, webrtc_util::Result<()>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move { Ok(self.socket.connect(addr).await?) })
    }

    fn recv<'life0, 'life1, 'async_trait>(
        &'life0 self,
        buf: &'life1 mut [u8],
    ) -> BoxFuture<'async_trait, webrtc_util::Result<usize>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(self.recv_counted(buf))
    }

    fn recv_from<'life0, 'life1, 'async_trait>(
        &'life0 self,
        buf: &'life1 mut [u8],
    ) -> BoxFuture<'async_trait, webrtc_util::Result<(usize, SocketAddr)>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            let n = self.recv_counted(buf).await?;
            Ok((n, self.socket.peer_addr()?))
        })
    }

    fn send<'life0, 'life1, 'async_trait>(
        &'life0 self,
        buf: &'life1 [u8],
    ) -> BoxFuture<'async_trait, webrtc_util::Result<usize>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(self.send_noted(buf))
    }

    fn send_to<'life0, 'life1, 'async_trait>(
        &'life0 self,
        buf: &'life1 [u8],
        target: SocketAddr,
    ) -> BoxFuture<'async_trait, webrtc_util::Result<usize>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move { Ok(self.socket.send_to(buf, target).await?) })
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.socket.local_addr()?)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        self.socket.peer_addr().ok()
    }

    fn close<'life0, 'async_trait>(&'life0 self) -> BoxFuture<'async_trait, webrtc_util::Result<()>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        // The socket closes when the connection drops it, as webrtc-util's UDP `Conn` does.
        Box::pin(async { Ok(()) })
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::time::Duration;

    use tokio::net::UdpSocket;
    use tokio::task::JoinHandle;

    use super::*;
    use crate::credentials::dtls::{
        dtls_cert_client_config, dtls_cert_server_config, dtls_psk_client_config,
    };
    use crate::credentials::{CertificateSet, PskCredentials};

    /// Deadline of the handshakes that should succeed.
    const TIMEOUT: Duration = Duration::from_secs(5);
    /// An empty CoAP Confirmable message (a ping).
    const PING: [u8; 4] = [0x40, 0x00, 0x12, 0x34];

    fn loopback() -> SocketAddr {
        (Ipv4Addr::LOCALHOST, 0).into()
    }

    fn expect_err<T>(result: Result<T>) -> Error {
        match result {
            Ok(_) => panic!("expected an error"),
            Err(e) => e,
        }
    }

    fn psk(key: &str) -> PskCredentials {
        PskCredentials::new("id", key)
    }

    /// Fails the test if `future` takes longer than `secs` seconds.
    async fn within<T>(secs: u64, future: impl Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(secs), future)
            .await
            .expect("test step timed out")
    }

    /// Accepts one handshake and echoes every record on the connection until the peer closes;
    /// the handle yields the peer's address, or the handshake's error.
    fn echo_server(listener: Arc<DtlsListener>) -> JoinHandle<Result<SocketAddr>> {
        tokio::spawn(async move {
            let accepted = listener.accept().await?;
            drop(listener);
            let (conn, peer) = match accepted {
                DtlsAccept::Established(conn, peer) => (conn, peer),
                DtlsAccept::Failed { error, .. } => return Err(error),
            };
            let mut buf = [0u8; 1500];
            while let Some(n) = dtls_recv(&conn, &mut buf).await? {
                dtls_send(&conn, &buf[..n]).await?;
            }
            conn.close().await.ok();
            Ok(peer)
        })
    }

    async fn ping(conn: &DTLSConn) -> Vec<u8> {
        dtls_send(conn, &PING).await.unwrap();
        let mut buf = [0u8; 64];
        let n = within(5, dtls_recv(conn, &mut buf)).await.unwrap().unwrap();
        buf[..n].to_vec()
    }

    async fn wait_for_no_peers(listener: &DtlsListener) {
        within(5, async {
            while listener.peer_count() != 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
    }

    #[tokio::test]
    async fn psk_handshake_echo_and_close() {
        let config = DtlsServerConfigs::psk_only(&psk("secret"));
        let listener = Arc::new(
            DtlsListener::bind(loopback(), config, TIMEOUT, 8)
                .await
                .unwrap(),
        );
        let server = echo_server(Arc::clone(&listener));
        let client = dtls_connect(
            listener.local_addr(),
            dtls_psk_client_config(&psk("secret")),
            TIMEOUT,
        )
        .await
        .unwrap();
        // webrtc-dtls keeps the server's identity hint.
        assert_eq!(client.connection_state().await.identity_hint, b"CoAP");
        assert_eq!(ping(&client).await, PING);
        assert_eq!(listener.peer_count(), 1);

        // The server sees our close_notify as the end of the stream, and forgets the peer.
        let client_addr = client.local_addr().unwrap();
        client.close().await.unwrap();
        let peer = within(5, server).await.unwrap().unwrap();
        assert_eq!(peer.port(), client_addr.port());
        wait_for_no_peers(&listener).await;
    }

    #[tokio::test]
    async fn local_close_reads_as_end_of_stream() {
        let config = DtlsServerConfigs::psk_only(&psk("secret"));
        let listener = DtlsListener::bind(loopback(), config, TIMEOUT, 8)
            .await
            .unwrap();
        let connect = dtls_connect(
            listener.local_addr(),
            dtls_psk_client_config(&psk("secret")),
            TIMEOUT,
        );
        let (client, accepted) = tokio::join!(connect, within(5, listener.accept()));
        let client = client.unwrap();
        let DtlsAccept::Established(server, _) = accepted.unwrap() else {
            panic!("handshake failed");
        };
        // The server closes; the client reads the end of the stream.
        server.close().await.unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(within(5, dtls_recv(&client, &mut buf)).await.unwrap(), None);
        wait_for_no_peers(&listener).await;
        // Reading a connection closed here is the end of the stream too.
        assert_eq!(within(5, dtls_recv(&server, &mut buf)).await.unwrap(), None);
    }

    #[tokio::test]
    async fn dropped_connection_is_forgotten() {
        let config = DtlsServerConfigs::psk_only(&psk("secret"));
        let listener = DtlsListener::bind(loopback(), config, TIMEOUT, 8)
            .await
            .unwrap();
        let connect = dtls_connect(
            listener.local_addr(),
            dtls_psk_client_config(&psk("secret")),
            TIMEOUT,
        );
        let (client, accepted) = tokio::join!(connect, within(5, listener.accept()));
        client.unwrap();
        assert!(matches!(accepted.unwrap(), DtlsAccept::Established(..)));
        wait_for_no_peers(&listener).await;
    }

    #[tokio::test]
    async fn dropped_listener_serves_its_connections_then_closes_the_socket() {
        let config = DtlsServerConfigs::psk_only(&psk("secret"));
        let listener = Arc::new(
            DtlsListener::bind(loopback(), config, TIMEOUT, 8)
                .await
                .unwrap(),
        );
        let addr = listener.local_addr();
        let server = echo_server(Arc::clone(&listener));
        let client = dtls_connect(addr, dtls_psk_client_config(&psk("secret")), TIMEOUT)
            .await
            .unwrap();
        drop(listener);
        assert_eq!(ping(&client).await, PING);

        // No new handshakes.
        let error = expect_err(
            dtls_connect(
                addr,
                dtls_psk_client_config(&psk("secret")),
                Duration::from_millis(300),
            )
            .await,
        );
        assert!(error.to_string().contains("timed out"), "{error}");

        // With its last connection gone, the socket is released.
        client.close().await.unwrap();
        within(5, server).await.unwrap().unwrap();
        within(5, async {
            while UdpSocket::bind(addr).await.is_err() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
    }

    #[tokio::test]
    async fn wrong_psk_fails_on_both_sides() {
        let config = DtlsServerConfigs::psk_only(&psk("secret"));
        let listener = DtlsListener::bind(loopback(), config, TIMEOUT, 8)
            .await
            .unwrap();
        let timeout = Duration::from_secs(3);
        let connect = dtls_connect(
            listener.local_addr(),
            dtls_psk_client_config(&psk("wrong")),
            timeout,
        );
        let (client, accepted) =
            within(5, async { tokio::join!(connect, listener.accept()) }).await;
        let client_error = expect_err(client);
        assert!(matches!(client_error, Error::Tls(_)), "{client_error}");
        match accepted.unwrap() {
            DtlsAccept::Failed { error, .. } => {
                assert!(matches!(error, Error::Tls(_)), "{error}");
            }
            DtlsAccept::Established(..) => panic!("handshake with a wrong key succeeded"),
        }
        wait_for_no_peers(&listener).await;
    }

    /// A datagram that passes for a ClientHello at a glance: an epoch-0 handshake record whose
    /// first message type is ClientHello, truncated.
    const TRUNCATED_CLIENT_HELLO: [u8; 14] = [
        0x16, 0xfe, 0xfd, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x01,
    ];

    #[tokio::test]
    async fn silent_peers_do_not_block_other_handshakes() {
        let config = DtlsServerConfigs::psk_only(&psk("secret"));
        let listener = Arc::new(
            DtlsListener::bind(loopback(), config, Duration::from_secs(30), 8)
                .await
                .unwrap(),
        );
        // One peer sends garbage, another starts a handshake; neither says anything more.
        let garbage = UdpSocket::bind(loopback()).await.unwrap();
        garbage
            .send_to(b"\x00garbage", listener.local_addr())
            .await
            .unwrap();
        let silent = UdpSocket::bind(loopback()).await.unwrap();
        silent
            .send_to(&client_hello().await, listener.local_addr())
            .await
            .unwrap();
        within(5, async {
            while listener.peer_count() != 1 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;

        let server = echo_server(Arc::clone(&listener));
        let client = dtls_connect(
            listener.local_addr(),
            dtls_psk_client_config(&psk("secret")),
            Duration::from_secs(3),
        )
        .await
        .unwrap();
        assert_eq!(ping(&client).await, PING);
        client.close().await.unwrap();
        within(5, server).await.unwrap().unwrap();
        // Only the silent peer is left, until its handshake deadline.
        assert_eq!(listener.peer_count(), 1);
    }

    #[tokio::test]
    async fn handshakes_beyond_the_bound_are_dropped_and_deadline_frees_them() {
        let config = DtlsServerConfigs::psk_only(&psk("secret"));
        let listener = Arc::new(
            DtlsListener::bind(loopback(), config, Duration::from_millis(1500), 1)
                .await
                .unwrap(),
        );
        let silent = UdpSocket::bind(loopback()).await.unwrap();
        silent
            .send_to(&client_hello().await, listener.local_addr())
            .await
            .unwrap();
        // The silent peer's handshake takes the only slot, so this one is not even started.
        let error = expect_err(
            dtls_connect(
                listener.local_addr(),
                dtls_psk_client_config(&psk("secret")),
                Duration::from_millis(500),
            )
            .await,
        );
        assert!(
            error.to_string().contains("timed out after 500ms"),
            "{error}"
        );

        // The silent peer's handshake is given up at its deadline and reported.
        match within(5, listener.accept()).await.unwrap() {
            DtlsAccept::Failed { peer, error } => {
                assert_eq!(peer, silent.local_addr().unwrap());
                assert!(
                    error.to_string().contains(
                        "handshake timeout: the client sent its ClientHello, then nothing more \
                         (timed out after 1.5s)"
                    ),
                    "{error}"
                );
            }
            DtlsAccept::Established(..) => panic!("silent peer established"),
        }
        wait_for_no_peers(&listener).await;

        // Now there is room.
        let server = echo_server(Arc::clone(&listener));
        let client = dtls_connect(
            listener.local_addr(),
            dtls_psk_client_config(&psk("secret")),
            TIMEOUT,
        )
        .await
        .unwrap();
        assert_eq!(ping(&client).await, PING);
        client.close().await.unwrap();
        within(5, server).await.unwrap().unwrap();
    }

    /// A real ClientHello (webrtc-dtls's first flight, no cookie yet), caught on a socket that
    /// never answers it.
    async fn client_hello() -> Vec<u8> {
        let catcher = UdpSocket::bind(loopback()).await.unwrap();
        let target = catcher.local_addr().unwrap();
        let client = tokio::spawn(dtls_connect(
            target,
            dtls_psk_client_config(&psk("secret")),
            Duration::from_millis(500),
        ));
        let mut buf = vec![0u8; 2048];
        let (n, _) = within(10, catcher.recv_from(&mut buf)).await.unwrap();
        client.abort();
        buf.truncate(n);
        assert!(is_client_hello(&buf), "a ClientHello: {buf:02x?}");
        buf
    }

    /// `n` peers, each on its own port, send the ClientHello and then nothing more: each
    /// handshake the listener starts is left half-done until its deadline.
    async fn half_done_handshakes(server: SocketAddr, hello: &[u8], n: usize) -> Vec<UdpSocket> {
        let mut peers = Vec::with_capacity(n);
        for _ in 0..n {
            let socket = UdpSocket::bind(loopback()).await.unwrap();
            socket.send_to(hello, server).await.unwrap();
            peers.push(socket);
        }
        peers
    }

    /// How many of `peers` got an answer (the listener's HelloVerifyRequest) within `wait`.
    async fn answered(peers: &[UdpSocket], wait: Duration) -> usize {
        let mut count = 0;
        let deadline = tokio::time::Instant::now() + wait;
        for socket in peers {
            let mut buf = [0u8; 2048];
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if tokio::time::timeout(left, socket.recv(&mut buf))
                .await
                .is_ok_and(|r| r.is_ok())
            {
                count += 1;
            }
        }
        count
    }

    /// The listener's own count of peers (handshakes in progress plus live connections) never
    /// exceeds its bound while 100 peers start handshakes, and a good client gets in once the
    /// half-done ones reach their deadline.
    #[tokio::test]
    async fn listener_never_holds_more_handshakes_than_its_bound() {
        const BOUND: usize = 16;
        let hello = client_hello().await;
        let listener = Arc::new(
            DtlsListener::bind(
                loopback(),
                DtlsServerConfigs::psk_only(&psk("secret")),
                Duration::from_millis(700),
                BOUND,
            )
            .await
            .unwrap(),
        );
        let server = listener.local_addr();
        let sampler = {
            let listener = Arc::clone(&listener);
            tokio::spawn(async move {
                let mut most = 0;
                for _ in 0..150 {
                    most = most.max(listener.peer_count());
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                most
            })
        };
        let peers = half_done_handshakes(server, &hello, 100).await;
        let started = answered(&peers, Duration::from_millis(300)).await;
        assert!(
            (1..=BOUND).contains(&started),
            "{started} handshakes started"
        );

        let good = tokio::spawn(dtls_connect(
            server,
            dtls_psk_client_config(&psk("secret")),
            Duration::from_secs(5),
        ));
        let accepted = within(10, async {
            loop {
                if let DtlsAccept::Established(conn, peer) = listener.accept().await.unwrap() {
                    return (conn, peer);
                }
            }
        })
        .await;
        let client = good.await.unwrap().expect("the good client connects");
        assert_eq!(accepted.1.port(), client.local_addr().unwrap().port());
        let most = sampler.await.unwrap();
        assert!(most <= BOUND, "{most} peers at once, bound {BOUND}");
        drop(peers);
    }

    #[tokio::test]
    async fn connect_times_out_on_a_silent_server() {
        let silent = UdpSocket::bind(loopback()).await.unwrap();
        let error = expect_err(
            dtls_connect(
                silent.local_addr().unwrap(),
                dtls_psk_client_config(&psk("secret")),
                Duration::from_millis(300),
            )
            .await,
        );
        assert!(matches!(error, Error::Tls(_)), "{error}");
        assert!(error.to_string().contains("handshake with"), "{error}");
        assert!(
            error.to_string().contains("timed out after 300ms"),
            "{error}"
        );
    }

    /// Runs one certificate-mode handshake; returns the client's and the server's outcome.
    async fn cert_handshake(
        server_config: Config,
        client_config: Config,
    ) -> (Result<Arc<DTLSConn>>, DtlsAccept) {
        let configs = DtlsServerConfigs::certificate_only(server_config);
        let listener = DtlsListener::bind(loopback(), configs, TIMEOUT, 8)
            .await
            .unwrap();
        let connect = dtls_connect(listener.local_addr(), client_config, Duration::from_secs(3));
        let (client, accepted) =
            within(5, async { tokio::join!(connect, listener.accept()) }).await;
        (client, accepted.unwrap())
    }

    #[tokio::test]
    async fn certificate_handshake_verifies_the_server() {
        let set = CertificateSet::generate().unwrap();
        for name in ["127.0.0.1", "localhost"] {
            let server = dtls_cert_server_config(&set.server_identity(), None).unwrap();
            let client =
                dtls_cert_client_config(Some(&set.ca_cert_pem), None, false, name).unwrap();
            let (client, accepted) = cert_handshake(server, client).await;
            let client = client.unwrap();
            let DtlsAccept::Established(server, _) = accepted else {
                panic!("server handshake failed: {accepted:?}");
            };
            let state = client.connection_state().await;
            assert_eq!(state.peer_certificates.len(), 1);
            dtls_send(&client, &PING).await.unwrap();
            let mut buf = [0u8; 16];
            assert_eq!(
                within(5, dtls_recv(&server, &mut buf)).await.unwrap(),
                Some(4)
            );
            assert_eq!(buf[..4], PING);
        }
    }

    #[tokio::test]
    async fn certificate_handshake_with_client_certificate() {
        let set = CertificateSet::generate().unwrap();
        let server =
            dtls_cert_server_config(&set.server_identity(), Some(&set.ca_cert_pem)).unwrap();
        let client = dtls_cert_client_config(
            Some(&set.ca_cert_pem),
            Some(&set.client_identity()),
            false,
            "127.0.0.1",
        )
        .unwrap();
        let (client, accepted) = cert_handshake(server, client).await;
        client.unwrap();
        let DtlsAccept::Established(server, _) = accepted else {
            panic!("server handshake failed: {accepted:?}");
        };
        assert_eq!(server.connection_state().await.peer_certificates.len(), 1);
    }

    #[tokio::test]
    async fn missing_client_certificate_is_rejected() {
        let set = CertificateSet::generate().unwrap();
        let server =
            dtls_cert_server_config(&set.server_identity(), Some(&set.ca_cert_pem)).unwrap();
        let client =
            dtls_cert_client_config(Some(&set.ca_cert_pem), None, false, "127.0.0.1").unwrap();
        let (client, accepted) = cert_handshake(server, client).await;
        assert!(matches!(client, Err(Error::Tls(_))));
        let DtlsAccept::Failed { error, .. } = accepted else {
            panic!("handshake without a client certificate succeeded");
        };
        assert!(
            error.to_string().contains("missing client certificate"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn client_certificate_from_another_ca_is_rejected() {
        let set = CertificateSet::generate().unwrap();
        let other = CertificateSet::generate().unwrap();
        let server =
            dtls_cert_server_config(&set.server_identity(), Some(&set.ca_cert_pem)).unwrap();
        let client = dtls_cert_client_config(
            Some(&set.ca_cert_pem),
            Some(&other.client_identity()),
            false,
            "127.0.0.1",
        )
        .unwrap();
        let (client, accepted) = cert_handshake(server, client).await;
        assert!(matches!(client, Err(Error::Tls(_))));
        assert!(
            matches!(accepted, DtlsAccept::Failed { .. }),
            "{accepted:?}"
        );
    }

    #[tokio::test]
    async fn untrusted_server_certificate_is_rejected() {
        let set = CertificateSet::generate().unwrap();
        let other = CertificateSet::generate().unwrap();
        let server = dtls_cert_server_config(&set.server_identity(), None).unwrap();
        let client =
            dtls_cert_client_config(Some(&other.ca_cert_pem), None, false, "127.0.0.1").unwrap();
        let (client, accepted) = cert_handshake(server, client).await;
        let error = expect_err(client);
        assert!(
            error.to_string().contains("invalid peer certificate"),
            "{error}"
        );
        assert!(
            matches!(accepted, DtlsAccept::Failed { .. }),
            "{accepted:?}"
        );
    }

    #[tokio::test]
    async fn wrong_server_name_is_rejected() {
        let set = CertificateSet::generate().unwrap();
        let server = dtls_cert_server_config(&set.server_identity(), None).unwrap();
        let client =
            dtls_cert_client_config(Some(&set.ca_cert_pem), None, false, "example.com").unwrap();
        let (client, _) = cert_handshake(server, client).await;
        let error = expect_err(client);
        assert!(error.to_string().contains("not valid for name"), "{error}");
    }

    #[tokio::test]
    async fn insecure_mode_accepts_an_untrusted_server() {
        let set = CertificateSet::generate().unwrap();
        let server = dtls_cert_server_config(&set.server_identity(), None).unwrap();
        let client = dtls_cert_client_config(None, None, true, "example.com").unwrap();
        let (client, accepted) = cert_handshake(server, client).await;
        client.unwrap();
        assert!(matches!(accepted, DtlsAccept::Established(..)));
    }

    /// The failure a listener reports for its next handshake.
    async fn next_failure(listener: &DtlsListener) -> String {
        match within(10, listener.accept()).await.unwrap() {
            DtlsAccept::Failed { error, .. } => error.to_string(),
            DtlsAccept::Established(_, peer) => panic!("{peer} established"),
        }
    }

    /// Sends `datagram` from a fresh socket; returns the listener's answer, if one comes.
    async fn answer_to(listener: &DtlsListener, datagram: &[u8]) -> Option<Vec<u8>> {
        let socket = UdpSocket::bind(loopback()).await.unwrap();
        socket
            .send_to(datagram, listener.local_addr())
            .await
            .unwrap();
        let mut buf = [0u8; 2048];
        let n = tokio::time::timeout(Duration::from_secs(2), socket.recv(&mut buf))
            .await
            .ok()?
            .ok()?;
        Some(buf[..n].to_vec())
    }

    #[tokio::test]
    async fn unservable_hellos_are_refused_with_an_alert_and_a_cause() {
        let listener = Arc::new(
            DtlsListener::bind(
                loopback(),
                DtlsServerConfigs::psk_only(&psk("secret")),
                TIMEOUT,
                8,
            )
            .await
            .unwrap(),
        );
        // Truncated: decode_error.
        let answer = answer_to(&listener, &TRUNCATED_CLIENT_HELLO).await.unwrap();
        assert_eq!(wire::plaintext_alert(&answer).unwrap().description, 50);
        let cause = next_failure(&listener).await;
        assert!(cause.contains("malformed ClientHello"), "{cause}");

        // node-coap-client's: no extensions block. internal_error: the limitation is ours.
        let bare = wire::test_client_hello(&[0xc0a8], None);
        let answer = answer_to(&listener, &bare).await.unwrap();
        assert_eq!(wire::plaintext_alert(&answer).unwrap().description, 80);
        let cause = next_failure(&listener).await;
        assert!(
            cause.contains(
                "ClientHello without extensions (RFC 5246 §7.4.1.2 allows it; node-coap-client \
                 sends it): webrtc-dtls 0.12 cannot parse it (failed to fill whole buffer)"
            ),
            "{cause}"
        );

        // Only RSA suites: handshake_failure.
        let rsa = wire::test_client_hello(&[0x002f, 0x009c], Some(&[]));
        let answer = answer_to(&listener, &rsa).await.unwrap();
        assert_eq!(wire::plaintext_alert(&answer).unwrap().description, 40);
        let cause = next_failure(&listener).await;
        assert!(cause.contains("no shared cipher suite"), "{cause}");
        assert_eq!(listener.peer_count(), 0);

        // And the listener serves a good client all the same.
        let server = echo_server(Arc::clone(&listener));
        let client = dtls_connect(
            listener.local_addr(),
            dtls_psk_client_config(&psk("secret")),
            TIMEOUT,
        )
        .await
        .unwrap();
        assert_eq!(ping(&client).await, PING);
        client.close().await.unwrap();
        within(5, server).await.unwrap().unwrap();
    }

    /// Runs one handshake against `configs`; the client's error and the server's cause.
    async fn failed_handshake(configs: DtlsServerConfigs, client: Config) -> (String, String) {
        let listener = DtlsListener::bind(loopback(), configs, TIMEOUT, 8)
            .await
            .unwrap();
        let connect = dtls_connect(listener.local_addr(), client, Duration::from_secs(3));
        let (client, accepted) =
            within(10, async { tokio::join!(connect, listener.accept()) }).await;
        let server = match accepted.unwrap() {
            DtlsAccept::Failed { error, .. } => error.to_string(),
            DtlsAccept::Established(..) => panic!("established"),
        };
        (expect_err(client).to_string(), server)
    }

    #[tokio::test]
    async fn certificate_client_at_a_psk_only_endpoint() {
        let set = CertificateSet::generate().unwrap();
        let client =
            dtls_cert_client_config(Some(&set.ca_cert_pem), None, false, "127.0.0.1").unwrap();
        let (client, server) =
            failed_handshake(DtlsServerConfigs::psk_only(&psk("secret")), client).await;
        assert!(
            client.contains(
                "no shared cipher suite: the server does not serve certificate (ECDHE-ECDSA) \
                 clients on this port"
            ),
            "{client}"
        );
        assert!(
            server.contains(
                "no shared cipher suite: the client offered certificate (ECDHE-ECDSA) suites"
            ),
            "{server}"
        );
        assert!(
            server.contains("this endpoint serves PSK suites only"),
            "{server}"
        );
    }

    #[tokio::test]
    async fn psk_client_at_a_certificate_only_endpoint() {
        let set = CertificateSet::generate().unwrap();
        let configs = DtlsServerConfigs::certificate_only(
            dtls_cert_server_config(&set.server_identity(), None).unwrap(),
        );
        let (client, server) =
            failed_handshake(configs, dtls_psk_client_config(&psk("secret"))).await;
        assert!(
            client.contains("the server does not serve PSK clients on this port"),
            "{client}"
        );
        assert!(
            server.contains("serves certificate (ECDHE-ECDSA) suites only"),
            "{server}"
        );
    }

    fn identities() -> DtlsServerConfigs {
        let keys = crate::credentials::ServerPsk::from_pairs([("alpha", "ka"), ("beta", "kb")]);
        crate::credentials::ServerCredentials::PskIdentities(keys)
            .dtls_configs()
            .unwrap()
    }

    #[tokio::test]
    async fn unknown_identity_named_on_both_sides() {
        let client = dtls_psk_client_config(&PskCredentials::new("nobody", "ka"));
        let (client, server) = failed_handshake(identities(), client).await;
        assert!(client.contains("unknown PSK identity"), "{client}");
        assert!(client.contains("unknown_psk_identity (115)"), "{client}");
        assert!(
            server.contains(r#"unknown PSK identity "nobody""#),
            "{server}"
        );
    }

    #[tokio::test]
    async fn bad_psk_named_on_both_sides() {
        let client = dtls_psk_client_config(&PskCredentials::new("beta", "ka"));
        let (client, server) = failed_handshake(identities(), client).await;
        assert!(client.contains("wrong PSK"), "{client}");
        assert!(client.contains("bad_record_mac (20)"), "{client}");
        assert!(server.contains(r#"bad PSK"#), "{server}");
        assert!(server.contains(r#""beta""#), "{server}");
        assert!(!server.contains("kb") && !client.contains("kb"));
    }

    #[tokio::test]
    async fn psk_and_certificate_clients_on_one_endpoint() {
        let set = CertificateSet::generate().unwrap();
        let keys = crate::credentials::ServerPsk::from_pairs([("alpha", "ka")]);
        let configs = crate::credentials::ServerCredentials::PskAndCertificate {
            psk: keys,
            identity: set.server_identity(),
            client_ca_pem: None,
        }
        .dtls_configs()
        .unwrap();
        let listener = DtlsListener::bind(loopback(), configs, TIMEOUT, 8)
            .await
            .unwrap();
        let psk_client = dtls_psk_client_config(&PskCredentials::new("alpha", "ka"));
        let cert_client =
            dtls_cert_client_config(Some(&set.ca_cert_pem), None, false, "127.0.0.1").unwrap();
        for client in [psk_client, cert_client] {
            let connect = dtls_connect(listener.local_addr(), client, TIMEOUT);
            let (client, accepted) =
                within(10, async { tokio::join!(connect, listener.accept()) }).await;
            client.unwrap();
            assert!(
                matches!(accepted.unwrap(), DtlsAccept::Established(..)),
                "established"
            );
        }
    }

    #[tokio::test]
    async fn dtls_to_a_plain_coap_port_is_named() {
        // A CoAP-over-UDP endpoint answers what it cannot parse with a Reset (or nothing).
        let plain = UdpSocket::bind(loopback()).await.unwrap();
        let addr = plain.local_addr().unwrap();
        let answerer = tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            loop {
                let (_, from) = plain.recv_from(&mut buf).await.unwrap();
                plain
                    .send_to(&[0x70, 0x00, 0x00, 0x01], from)
                    .await
                    .unwrap();
            }
        });
        let error = expect_err(
            dtls_connect(
                addr,
                dtls_psk_client_config(&psk("secret")),
                Duration::from_millis(700),
            )
            .await,
        );
        answerer.abort();
        let error = error.to_string();
        assert!(
            error.contains("not a DTLS server: a plain CoAP (UDP) endpoint answered"),
            "{error}"
        );
        assert!(!error.contains("PSK"), "{error}");

        // Nothing listening: the ICMP port unreachable says so.
        let closed = UdpSocket::bind(loopback()).await.unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let error = expect_err(
            dtls_connect(
                addr,
                dtls_psk_client_config(&psk("secret")),
                Duration::from_millis(700),
            )
            .await,
        )
        .to_string();
        assert!(error.contains("nothing listens there"), "{error}");
    }

    #[test]
    fn client_hello_detection() {
        assert!(is_client_hello(&TRUNCATED_CLIENT_HELLO));
        assert!(!is_client_hello(&TRUNCATED_CLIENT_HELLO[..13]));
        let mut epoch_1 = TRUNCATED_CLIENT_HELLO;
        epoch_1[4] = 1;
        assert!(!is_client_hello(&epoch_1));
        let mut application_data = TRUNCATED_CLIENT_HELLO;
        application_data[0] = 23;
        assert!(!is_client_hello(&application_data));
        assert!(!is_client_hello(&PING));
    }
}
