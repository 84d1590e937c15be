//! The datagram driver: one socket and one task serve every session of an endpoint.
//!
//! It moves datagrams and time in and out of each session's [`DatagramSession`] and hands its
//! events to the runtime's dispatch; it decides nothing about the protocol. It runs over anything that sends
//! and receives datagrams (`DatagramIo`): a UDP socket serving many peers, every DTLS connection
//! of a server endpoint, or a client's one DTLS connection.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};

use crate::proto::datagram::{DatagramSession, Stranger};
use crate::proto::error::{NackReason, Result};
use crate::proto::table::{Addressed, Key, SessionTable, Timed};
use crate::proto::ProtocolEvent;
use crate::runtime::dispatch::{apply_command, publish_stats, react};
use crate::runtime::metrics::AtLimit;
use crate::runtime::session::{
    Command, EndpointCommand, EndpointLink, Role, Session, SessionId, SessionState, Transport,
};
use crate::runtime::waiters::Waiters;
use crate::runtime::Runtime;
use crate::transport::{sleep_until_earlier, Endpoint};

/// Largest datagram we read (the UDP maximum).
const MAX_DATAGRAM: usize = 65_536;

/// What a [`DatagramIo`] received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Received {
    /// A datagram of this many bytes (in the buffer) from this peer.
    Datagram(usize, SocketAddr),
    /// A connection with this peer is ready for a server session (a DTLS handshake
    /// completed).
    Connected(SocketAddr),
    /// The connection with this peer is over (its DTLS close_notify or fatal alert).
    Closed(SocketAddr),
}

/// A source and sink of datagrams the driver runs over.
pub(crate) trait DatagramIo: Send + Sync + 'static {
    /// Receives one datagram, or news of a connection. Cancel-safe: the driver polls it in a
    /// `select!`.
    fn recv<'a>(
        &'a self,
        buf: &'a mut [u8],
    ) -> impl std::future::Future<Output = io::Result<Received>> + Send + 'a;
    /// Sends one datagram to `peer`.
    fn send_to<'a>(
        &'a self,
        buf: &'a [u8],
        peer: SocketAddr,
    ) -> impl std::future::Future<Output = io::Result<()>> + Send + 'a;
    /// Our address.
    fn local_addr(&self) -> io::Result<SocketAddr>;
    /// The one peer this socket is connected to, to whom its errors (an ICMP unreachable
    /// reported as `ECONNREFUSED` and the like) can be attributed; `None` for a socket serving
    /// many peers, which learns no peer from such an error.
    fn connected_peer(&self) -> Option<SocketAddr> {
        None
    }
    /// Whether a datagram from a peer without a session may open one (a UDP server); else
    /// sessions come only from [`Received::Connected`] and `add_session`.
    fn strangers_open_sessions(&self) -> bool {
        true
    }
    /// The session with `peer` left the endpoint: its connection, if it has one of its own,
    /// is closed (DTLS sends close_notify).
    fn release(&self, peer: SocketAddr) -> impl std::future::Future<Output = ()> + Send {
        let _ = peer;
        async {}
    }
    /// Closes the underlying connections, if any (DTLS sends close_notify).
    fn close(&self) -> impl std::future::Future<Output = ()> + Send {
        async {}
    }
}

impl DatagramIo for UdpSocket {
    async fn recv<'a>(&'a self, buf: &'a mut [u8]) -> io::Result<Received> {
        let (len, peer) = UdpSocket::recv_from(self, buf).await?;
        Ok(Received::Datagram(len, peer))
    }

    async fn send_to<'a>(&'a self, buf: &'a [u8], peer: SocketAddr) -> io::Result<()> {
        UdpSocket::send_to(self, buf, peer).await.map(|_| ())
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        UdpSocket::local_addr(self)
    }
}

/// A UDP socket connected to a client session's one peer: the kernel delivers only that peer's
/// datagrams, and reports an ICMP error for it on the next receive or send, so it is attributed
/// without doubt (an unconnected socket hears of none without `IP_RECVERR` on Linux).
struct ConnectedUdp {
    socket: UdpSocket,
    peer: SocketAddr,
}

impl DatagramIo for ConnectedUdp {
    async fn recv<'a>(&'a self, buf: &'a mut [u8]) -> io::Result<Received> {
        let len = self.socket.recv(buf).await?;
        Ok(Received::Datagram(len, self.peer))
    }

    async fn send_to<'a>(&'a self, buf: &'a [u8], _peer: SocketAddr) -> io::Result<()> {
        // The only peer this driver has a session with.
        self.socket.send(buf).await.map(|_| ())
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    fn connected_peer(&self) -> Option<SocketAddr> {
        Some(self.peer)
    }
}

/// Binds `addr` and serves every peer that writes to it.
pub(crate) async fn listen(rt: &Arc<Runtime>, addr: SocketAddr) -> Result<Endpoint> {
    let socket = UdpSocket::bind(addr).await?;
    let local_addr = socket.local_addr()?;
    let driver = DatagramDriver::new(rt, socket, Transport::Udp, true);
    rt.spawn(driver.run());
    tracing::info!(%local_addr, "listening on udp");
    Ok(Endpoint {
        transport: Transport::Udp,
        local_addr,
    })
}

/// Opens a session to `peer` from a fresh port of the matching address family, on a socket
/// connected to it (so that an ICMP error for it reaches the session).
pub(crate) async fn connect(rt: &Arc<Runtime>, peer: SocketAddr) -> Result<Session> {
    let bind: SocketAddr = if peer.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(bind).await?;
    socket.connect(peer).await?;
    let socket = ConnectedUdp { socket, peer };
    let mut driver = DatagramDriver::new(rt, socket, Transport::Udp, false);
    let session = driver.add_session(peer, Role::Client, Instant::now());
    rt.spawn(driver.run());
    Ok(session)
}

/// One session as the endpoint task holds it.
struct Peer {
    core: DatagramSession,
    handle: Session,
    waiters: Waiters,
}

impl Timed for Peer {
    fn poll_timeout(&self) -> Option<Instant> {
        self.core.poll_timeout()
    }
}

impl Addressed for Peer {
    fn peer(&self) -> SocketAddr {
        self.handle.peer()
    }
}

/// The task serving every session of one datagram socket.
pub(crate) struct DatagramDriver<IO> {
    rt: Arc<Runtime>,
    socket: Arc<IO>,
    transport: Transport,
    accept: bool,
    table: SessionTable<Peer>,
    /// What the endpoint's sessions share: its command channel and address.
    link: Arc<EndpointLink>,
    /// Server sessions in creation order, the candidates for eviction from a full table.
    unproven: std::collections::VecDeque<Key>,
    commands: mpsc::UnboundedReceiver<EndpointCommand>,
    shutdown: watch::Receiver<bool>,
}

impl<IO: DatagramIo> DatagramDriver<IO> {
    /// A driver over `socket`. With `accept`, a datagram from an unknown peer opens a server
    /// session; without, only sessions added with [`DatagramDriver::add_session`] are served and
    /// the task ends with the last of them.
    pub(crate) fn new(rt: &Arc<Runtime>, socket: IO, transport: Transport, accept: bool) -> Self {
        let local = socket
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let (commands_tx, commands) = mpsc::unbounded_channel();
        DatagramDriver {
            rt: Arc::clone(rt),
            socket: Arc::new(socket),
            transport,
            accept,
            table: SessionTable::new(),
            link: EndpointLink::new(commands_tx, local),
            unproven: std::collections::VecDeque::new(),
            commands,
            shutdown: rt.shutdown_signal(),
        }
    }

    /// Opens a session with `peer`, registered in the context and established at once.
    pub(crate) fn add_session(&mut self, peer: SocketAddr, role: Role, now: Instant) -> Session {
        let id = self.rt.next_session_id();
        let slot = self.table.next_key();
        let handle = Session::new(
            id,
            peer,
            self.transport,
            role,
            Arc::clone(&self.link),
            slot.index(),
            now,
        );
        handle.set_state(SessionState::Established);
        // Registered before the configuration is read: a context-wide keepalive change made
        // meanwhile is either in it or sent to the session as a command.
        self.rt.register(&handle);
        let mut core = DatagramSession::new(self.rt.keepalive_config(), self.rt.session_rng(), now);
        core.set_blockwise(Arc::clone(&self.rt.blockwise));
        if role == Role::Server {
            core.set_idle_timeout(Some(self.rt.settings.idle_timeout));
        }
        let key = self.table.insert(Peer {
            core,
            handle: handle.clone(),
            waiters: Waiters::default(),
        });
        debug_assert_eq!(key, slot, "the handle carries the session's key");
        if role == Role::Server {
            self.unproven.push_back(key);
            if self.unproven.len() > 2 * self.table.len() + 64 {
                let table = &self.table;
                self.unproven
                    .retain(|k| table.get(*k).is_some_and(|p| !p.core.is_proven()));
            }
        }
        tracing::debug!(session = %handle, "datagram session created");
        // Through the one dispatch of every protocol event, as the stream drivers report theirs.
        if let Some(p) = self.table.get_mut(key) {
            let established = ProtocolEvent::Established;
            let ended = react(
                &self.rt,
                &mut p.core,
                &mut p.waiters,
                &handle,
                now,
                established,
            );
            debug_assert!(ended.is_none(), "Established ends no session");
        }
        handle
    }

    /// Serves until shutdown, a fatal socket error, or (without `accept`) the last session's end.
    pub(crate) async fn run(mut self) {
        let span = tracing::debug_span!("endpoint", transport = %self.transport, local = %self.link.local());
        tracing::Instrument::instrument(self.serve(), span).await;
        self.socket.close().await;
    }

    async fn serve(&mut self) {
        // One buffer per endpoint (a DTLS server's one driver serves all its connections):
        // webrtc-dtls never hands up more than 8 KiB, a UDP socket the full 64 KiB.
        let size = match self.transport {
            Transport::Dtls => 16 * 1024,
            _ => MAX_DATAGRAM,
        };
        let mut buf = vec![0u8; size];
        // Set once shutdown began: sessions with requests in flight may finish until then.
        let mut draining: Option<Instant> = None;
        loop {
            let sleep = sleep_until_earlier(self.table.next_deadline(), draining);
            tokio::select! {
                received = self.socket.recv(&mut buf) => match received {
                    Ok(Received::Datagram(len, peer)) => self.on_datagram(peer, &buf[..len]).await,
                    Ok(Received::Connected(peer)) => self.on_connected(peer).await,
                    Ok(Received::Closed(peer)) => self.peer_closed(peer).await,
                    Err(error) if is_unreachable(&error) => self.on_unreachable(&error).await,
                    Err(error) if is_transient(&error) => {
                        tracing::trace!(%error, "udp receive error ignored");
                    }
                    Err(error) => {
                        tracing::warn!(%error, local = %self.link.local(), "datagram endpoint failed");
                        self.fail_all(NackReason::NotDeliverable).await;
                        return;
                    }
                },
                _ = sleep => self.on_timers().await,
                Some((slot, id, command)) = self.commands.recv() => self.on_command(slot, id, command).await,
                _ = self.shutdown.changed(), if draining.is_none() => {
                    draining = Some(self.rt.drain_deadline());
                    self.accept = false;
                }
            }
            if let Some(until) = draining {
                // Close what has nothing in flight; everything once the deadline passed.
                self.close_idle(Instant::now() >= until).await;
                if self.table.is_empty() {
                    return;
                }
            }
            if !self.accept && self.table.is_empty() {
                // A client endpoint whose session ended has nothing left to do.
                return;
            }
        }
    }

    async fn on_datagram(&mut self, peer: SocketAddr, bytes: &[u8]) {
        let now = Instant::now();
        self.rt.counters.received(self.transport, bytes.len());
        if let Some(key) = self.table.key_of(&peer) {
            if let Some(p) = self.table.get_mut(key) {
                p.core.handle_datagram(now, bytes);
            }
            self.flush(key, now).await;
        } else if self.accept && self.socket.strangers_open_sessions() {
            self.on_stranger(peer, bytes, now).await;
        }
    }

    /// A connection with `peer` is ready (its DTLS handshake completed): a server session
    /// opens on it, unless the table is full (then the connection is closed at once, and the
    /// peer learns from its close_notify rather than by its keepalive).
    async fn on_connected(&mut self, peer: SocketAddr) {
        let now = Instant::now();
        if let Some(key) = self.table.key_of(&peer) {
            // Its old connection is gone, or the listener would not have run a new handshake.
            if let Some(p) = self.table.get_mut(key) {
                p.core.handle_peer_closed(now);
            }
            self.flush(key, now).await;
        }
        if !self.accept || self.table.len() >= self.rt.settings.max_sessions {
            tracing::debug!(%peer, "session limit reached (or shutting down): connection closed");
            if self.accept {
                self.rt.counters.at_limit(self.transport, AtLimit::Refused);
            }
            self.socket.release(peer).await;
            return;
        }
        let session = self.add_session(peer, Role::Server, now);
        tracing::debug!(session = %session, "connection established");
        if let Some(key) = self.table.key_of(&peer) {
            self.flush(key, now).await;
        }
    }

    /// A datagram from a peer without a session: the protocol says whether it opens one.
    async fn on_stranger(&mut self, peer: SocketAddr, bytes: &[u8], now: Instant) {
        let first = match DatagramSession::screen(bytes) {
            Stranger::Open(first) => first,
            Stranger::Reject { rst, why } => {
                tracing::debug!(%peer, %why, "rejected without a session");
                self.rt.counters.rejected_input(self.transport);
                match self.socket.send_to(&rst, peer).await {
                    Ok(()) => self.rt.counters.sent(self.transport, rst.len()),
                    Err(error) => tracing::debug!(%error, %peer, "udp send failed"),
                }
                return;
            }
            Stranger::Ignore { why } => {
                tracing::trace!(%peer, %why, "ignored without a session");
                return;
            }
        };
        if self.table.len() >= self.rt.settings.max_sessions && !self.evict_unproven(now).await {
            tracing::debug!(%peer, "session table full: datagram dropped");
            self.rt.counters.at_limit(self.transport, AtLimit::Refused);
            return;
        }
        self.add_session(peer, Role::Server, now);
        let Some(key) = self.table.key_of(&peer) else {
            return;
        };
        if let Some(p) = self.table.get_mut(key) {
            p.core.handle_first(now, first);
        }
        self.flush(key, now).await;
    }

    /// The socket reported an ICMP error (on a receive): the session's protocol decides what
    /// it means when the socket can say whose it is.
    async fn on_unreachable(&mut self, error: &io::Error) {
        let Some(peer) = self.socket.connected_peer() else {
            // An unconnected socket serving many peers cannot tell which one: the
            // retransmission schedules decide, and nobody else is harmed.
            tracing::trace!(%error, local = %self.link.local(), "ICMP error not attributable to a peer");
            return;
        };
        let Some(key) = self.table.key_of(&peer) else {
            return;
        };
        let now = Instant::now();
        tracing::debug!(%error, %peer, "peer reported unreachable");
        if let Some(p) = self.table.get_mut(key) {
            p.core.handle_unreachable(now, &error.to_string());
        }
        self.flush(key, now).await;
    }

    /// Makes room in a full table by closing the oldest session that never proved its peer
    /// real. False when every session is established: the newcomer is refused instead.
    async fn evict_unproven(&mut self, now: Instant) -> bool {
        while let Some(key) = self.unproven.pop_front() {
            let Some(p) = self.table.get_mut(key) else {
                continue;
            };
            if p.core.is_proven() {
                continue;
            }
            tracing::debug!(session = %p.handle, "evicted from a full session table");
            self.rt.counters.at_limit(self.transport, AtLimit::Evicted);
            p.core.close();
            self.flush(key, now).await;
            return true;
        }
        false
    }

    async fn on_timers(&mut self) {
        let now = Instant::now();
        while let Some(key) = self.table.pop_due(now) {
            if let Some(p) = self.table.get_mut(key) {
                p.core.handle_timeout(now);
            }
            self.flush(key, now).await;
        }
    }

    async fn on_command(&mut self, slot: u32, id: SessionId, command: Command) {
        // A slot whose session ended holds none, or a later one.
        let Some(key) = self.table.key_at(slot) else {
            return;
        };
        if self.table.get(key).is_none_or(|p| p.handle.id() != id) {
            return;
        }
        let now = Instant::now();
        if let Some(p) = self.table.get_mut(key) {
            apply_command(
                &self.rt,
                &mut p.core,
                &mut p.waiters,
                &p.handle,
                now,
                command,
            );
        }
        self.flush(key, now).await;
    }

    /// Sends what the session queued, hands its events to the dispatch, and reschedules or
    /// removes it.
    async fn flush(&mut self, key: Key, now: Instant) {
        let Some(peer) = self.table.peer(key) else {
            return;
        };
        let mut ended = None;
        loop {
            let Some(p) = self.table.get_mut(key) else {
                return;
            };
            if let Some(bytes) = p.core.poll_transmit() {
                let sent = self.socket.send_to(&bytes, peer).await;
                if sent.is_ok() {
                    self.rt.counters.sent(self.transport, bytes.len());
                }
                if let Err(error) = sent {
                    if is_unreachable(&error) && self.socket.connected_peer() == Some(peer) {
                        // A connected socket reports an earlier datagram's ICMP error here too.
                        p.core.handle_unreachable(now, &error.to_string());
                    } else if !is_transient(&error) {
                        tracing::debug!(%error, %peer, "udp send failed");
                        p.core.fail(NackReason::NotDeliverable);
                    }
                }
                continue;
            }
            publish_stats(&mut p.core, &p.handle);
            let Some(event) = p.core.poll_event() else {
                break;
            };
            if let Some(error) = react(&self.rt, &mut p.core, &mut p.waiters, &p.handle, now, event)
            {
                ended = Some(error);
            }
        }
        if ended.is_some() {
            // The waiters were told in the dispatch; the session leaves the endpoint.
            self.table.remove(key);
            self.socket.release(peer).await;
        } else {
            self.table.reschedule(key);
        }
    }

    /// Closes the sessions with no request in flight, or all of them with `all`.
    async fn close_idle(&mut self, all: bool) {
        let now = Instant::now();
        for key in self.table.keys() {
            if let Some(p) = self.table.get_mut(key) {
                if all || p.core.pending_requests() == 0 {
                    p.core.close();
                }
            }
            self.flush(key, now).await;
        }
    }

    /// The connection under `peer`'s session closed (its DTLS close_notify or fatal alert).
    async fn peer_closed(&mut self, peer: SocketAddr) {
        let Some(key) = self.table.key_of(&peer) else {
            return;
        };
        let now = Instant::now();
        if let Some(p) = self.table.get_mut(key) {
            p.core.handle_peer_closed(now);
        }
        self.flush(key, now).await;
    }

    async fn fail_all(&mut self, reason: NackReason) {
        let now = Instant::now();
        for key in self.table.keys() {
            if let Some(p) = self.table.get_mut(key) {
                p.core.fail(reason);
            }
            self.flush(key, now).await;
        }
    }
}

/// Errors a UDP socket reports for earlier datagrams (ICMP unreachable and the like), which say
/// nothing about the socket itself.
fn is_transient(error: &io::Error) -> bool {
    is_unreachable(error)
        || matches!(
            error.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
        )
}

/// An ICMP error for an earlier datagram: port unreachable (`ECONNREFUSED`; `ECONNRESET` on
/// Windows), host or network unreachable.
fn is_unreachable(error: &io::Error) -> bool {
    // By kind, not errno: the numbers differ between platforms (EHOSTUNREACH is 113 on Linux,
    // 65 on the BSDs).
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
    )
}
