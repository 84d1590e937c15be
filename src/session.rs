//! The application's handle on one session: identity, state, statistics and per-session
//! settings. The protocol itself runs in the session's driver; this handle only observes it and
//! sends it commands.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::error::NackReason;
use crate::keepalive::{PingStyle, Stats};

/// A context-unique session number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// The transport a session runs over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Transport {
    /// CoAP over UDP (RFC 7252), `coap://`.
    Udp,
    /// CoAP over DTLS (RFC 7252 §9), `coaps://`.
    Dtls,
    /// CoAP over TCP (RFC 8323), `coap+tcp://`.
    Tcp,
    /// CoAP over TLS (RFC 8323), `coaps+tcp://`.
    Tls,
}

impl Transport {
    /// The ping this transport uses: empty CON for datagrams, 7.02 for streams.
    pub fn ping_style(self) -> PingStyle {
        match self {
            Transport::Udp | Transport::Dtls => PingStyle::Datagram,
            Transport::Tcp | Transport::Tls => PingStyle::Stream,
        }
    }

    /// True for DTLS and TLS.
    pub fn is_secure(self) -> bool {
        matches!(self, Transport::Dtls | Transport::Tls)
    }

    /// The URI scheme of this transport.
    pub fn scheme(self) -> &'static str {
        match self {
            Transport::Udp => "coap",
            Transport::Dtls => "coaps",
            Transport::Tcp => "coap+tcp",
            Transport::Tls => "coaps+tcp",
        }
    }

    /// A short name for logs and tables.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Dtls => "dtls",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which side opened the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// We connected to the peer.
    Client,
    /// The peer connected to one of our endpoints.
    Server,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Client => "client",
            Role::Server => "server",
        })
    }
}

/// Where a session is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionState {
    /// Handshake or CSM exchange in progress.
    Connecting,
    /// Ready: pings and requests flow.
    Established,
    /// Closed gracefully (by us or the peer).
    Closed,
    /// Failed; the nack handler was told why.
    Failed(NackReason),
}

impl SessionState {
    /// True once the session has ended, one way or the other.
    pub fn is_terminal(self) -> bool {
        matches!(self, SessionState::Closed | SessionState::Failed(_))
    }
}

/// What an application can ask of a running session.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Command {
    /// Override the keepalive interval of this session (`None`: off).
    SetKeepalive(Option<Duration>),
    /// Follow the context's keepalive setting again (sent to sessions without an override).
    InheritKeepalive(Option<Duration>),
    /// Evidence of life from elsewhere.
    MarkActive,
    /// Send a ping now.
    PingNow,
    /// Close gracefully (Release over TCP / TLS).
    Close,
}

/// A handle on one session. Cheap to clone; it stays valid (and readable) after the session
/// ended.
#[derive(Clone)]
pub struct Session {
    pub(crate) shared: Arc<Shared>,
}

pub(crate) struct Shared {
    pub(crate) id: SessionId,
    pub(crate) peer: SocketAddr,
    pub(crate) local: SocketAddr,
    pub(crate) transport: Transport,
    pub(crate) role: Role,
    pub(crate) created: Instant,
    pub(crate) state: Mutex<SessionState>,
    pub(crate) stats: Mutex<Stats>,
    /// Microseconds after `created` of the last receipt.
    pub(crate) last_rx_micros: AtomicU64,
    pub(crate) keepalive_overridden: AtomicBool,
    pub(crate) commands: CommandSender,
    pub(crate) ended: tokio::sync::watch::Sender<Option<SessionState>>,
}

/// Where a session's commands go: its own task, or the endpoint task that serves it.
#[derive(Clone)]
pub(crate) enum CommandSender {
    Own(mpsc::UnboundedSender<Command>),
    Endpoint(mpsc::UnboundedSender<(SessionId, Command)>),
}

impl CommandSender {
    fn send(&self, id: SessionId, command: Command) {
        // A send fails only when the session's task is gone: the session has ended already.
        let _ = match self {
            CommandSender::Own(tx) => tx.send(command).map_err(|_| ()),
            CommandSender::Endpoint(tx) => tx.send((id, command)).map_err(|_| ()),
        };
    }
}

impl Session {
    pub(crate) fn new(
        id: SessionId,
        peer: SocketAddr,
        local: SocketAddr,
        transport: Transport,
        role: Role,
        commands: CommandSender,
        now: Instant,
    ) -> Session {
        let (ended, _) = tokio::sync::watch::channel(None);
        Session {
            shared: Arc::new(Shared {
                id,
                peer,
                local,
                transport,
                role,
                created: now,
                state: Mutex::new(SessionState::Connecting),
                stats: Mutex::new(Stats::default()),
                last_rx_micros: AtomicU64::new(0),
                keepalive_overridden: AtomicBool::new(false),
                commands,
                ended,
            }),
        }
    }

    /// The context-unique id.
    pub fn id(&self) -> SessionId {
        self.shared.id
    }

    /// The peer's address.
    pub fn peer(&self) -> SocketAddr {
        self.shared.peer
    }

    /// Our address for this session.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local
    }

    /// The transport.
    pub fn transport(&self) -> Transport {
        self.shared.transport
    }

    /// Client (we connected) or server (the peer did).
    pub fn role(&self) -> Role {
        self.shared.role
    }

    /// The current state.
    pub fn state(&self) -> SessionState {
        *lock(&self.shared.state)
    }

    /// A copy of the session's counters and RTTs.
    pub fn stats(&self) -> Stats {
        *lock(&self.shared.stats)
    }

    /// How long nothing has been received from the peer.
    pub fn idle(&self) -> Duration {
        let last = self.shared.created
            + Duration::from_micros(self.shared.last_rx_micros.load(Ordering::Relaxed));
        Instant::now().saturating_duration_since(last)
    }

    /// Overrides the keepalive interval of this session only (0 turns its pings off). The
    /// context's later `set_keepalive` calls no longer change it.
    pub fn set_keepalive(&self, secs: u64) {
        self.set_keepalive_interval((secs > 0).then(|| Duration::from_secs(secs)));
    }

    /// Like [`Session::set_keepalive`] with any duration (`None` turns pings off).
    pub fn set_keepalive_interval(&self, interval: Option<Duration>) {
        self.shared
            .keepalive_overridden
            .store(true, Ordering::Relaxed);
        self.command(Command::SetKeepalive(interval));
    }

    /// Reports evidence that the peer is alive, received some other way: postpones the next ping.
    pub fn mark_active(&self) {
        self.command(Command::MarkActive);
    }

    /// Sends a ping now (if none is outstanding and the session is established).
    pub fn ping(&self) {
        self.command(Command::PingNow);
    }

    /// Closes the session gracefully: a 7.04 Release over TCP / TLS, close_notify over DTLS.
    pub fn close(&self) {
        self.command(Command::Close);
    }

    /// Waits until the session has ended and returns how.
    pub async fn closed(&self) -> SessionState {
        let mut rx = self.shared.ended.subscribe();
        loop {
            if let Some(state) = *rx.borrow_and_update() {
                return state;
            }
            if rx.changed().await.is_err() {
                return self.state();
            }
        }
    }

    pub(crate) fn command(&self, command: Command) {
        self.shared.commands.send(self.shared.id, command);
    }

    pub(crate) fn set_state(&self, state: SessionState) {
        self.record_state(state);
        if state.is_terminal() {
            self.shared.ended.send_replace(Some(state));
        }
    }

    /// Sets the state without waking [`Session::closed`] (see `Context::unregister`).
    pub(crate) fn record_state(&self, state: SessionState) {
        *lock(&self.shared.state) = state;
    }

    pub(crate) fn set_stats(&self, stats: &Stats) {
        *lock(&self.shared.stats) = *stats;
    }

    pub(crate) fn note_receipt(&self, now: Instant) {
        let micros = now
            .saturating_duration_since(self.shared.created)
            .as_micros() as u64;
        self.shared.last_rx_micros.store(micros, Ordering::Relaxed);
    }

    pub(crate) fn keepalive_overridden(&self) -> bool {
        self.shared.keepalive_overridden.load(Ordering::Relaxed)
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id())
            .field("peer", &self.peer())
            .field("transport", &self.transport())
            .field("role", &self.role())
            .field("state", &self.state())
            .finish()
    }
}

impl fmt::Display for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} {}",
            self.id(),
            self.transport(),
            self.role(),
            self.peer()
        )
    }
}

/// Locks a mutex, recovering the data if a handler panicked while holding it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
