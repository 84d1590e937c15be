//! The application's handle on one session: identity, state, statistics and per-session
//! settings. The protocol itself runs in the session's driver; this handle only observes it and
//! sends it commands.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use futures_core::Stream;
use once_cell::race::OnceBox;
use tokio::sync::{mpsc, oneshot, Notify};

use crate::proto::error::{Error, NackReason, Result};
use crate::proto::keepalive::{Counters, PingStyle, Stats};
use crate::proto::message::{Request, Response};

/// How long a request waits for its response unless told otherwise.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

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

/// Where the response to a request of ours goes.
#[derive(Debug)]
pub(crate) enum Waiter {
    /// One response.
    Once(oneshot::Sender<Result<Response>>),
    /// The first response, then every notification.
    Observe {
        first: Option<oneshot::Sender<Result<Response>>>,
        notifications: mpsc::UnboundedSender<Response>,
    },
}

/// What an application can ask of a running session.
#[derive(Debug)]
pub(crate) enum Command {
    /// Override the keepalive interval of this session (`None`: off).
    SetKeepaliveInterval(Option<Duration>),
    /// Override the pong timeout of this session.
    SetPongTimeout(Duration),
    /// Override the consecutive unanswered pings that fail this session.
    SetMaxUnanswered(u32),
    /// The context's keepalive configuration is now this one: take every setting this session
    /// has not overridden from it (sent to every live session).
    InheritKeepalive(Arc<crate::proto::config::KeepaliveConfig>),
    /// Evidence of life from elsewhere.
    MarkActive,
    /// Send a ping now. `counted`: [`Session::ping`] already counts it in the published
    /// statistics (the driver settles that when it has handled the command).
    PingNow { counted: bool },
    /// Close gracefully (Release over TCP / TLS).
    Close,
    /// Send a request; the response goes to `waiter`.
    Request {
        id: u64,
        request: Request,
        timeout: Duration,
        waiter: Waiter,
    },
    /// Stop waiting for request `id` (an observation the application dropped); with
    /// `deregister`, send that request (GET, Observe = 1) under the observation's token.
    Cancel {
        id: u64,
        deregister: Option<(Request, Waiter)>,
    },
    /// Send a notification to the observer whose registration carried `token`.
    Notify { token: Vec<u8>, response: Response },
    /// Send the separate response to the `method` request that carried `token`.
    SeparateResponse {
        method: crate::proto::message::Method,
        token: Vec<u8>,
        confirmable: bool,
        response: Response,
    },
}

/// A handle on one session. Cheap to clone; it stays valid (and readable) after the session
/// ended.
#[derive(Clone)]
pub struct Session {
    pub(crate) shared: Arc<Shared>,
}

/// What a session's handle holds: one allocation per session, 136 bytes, so that a server
/// holding a hundred thousand idle sessions spends little on them (152 with the `Arc`'s
/// counts, one 160-byte heap chunk). What the session's endpoint has once for all of its
/// sessions (its command channel, its address) is shared through `link`; what few sessions use
/// is in `rare`. `a_handle_is_small` keeps the size.
pub(crate) struct Shared {
    pub(crate) id: SessionId,
    pub(crate) peer: SocketAddr,
    /// The endpoint serving the session.
    link: Arc<EndpointLink>,
    /// The session's place in the endpoint's table (`proto::table::Key::index`): the driver
    /// finds the session without a map of its own, and checks the id, as a slot may hold a
    /// later session by the time a command arrives.
    slot: u32,
    pub(crate) transport: Transport,
    pub(crate) role: Role,
    /// Set when the session's end is published ([`Session::set_state`] with a terminal state),
    /// which may be after the state already holds it (see `Runtime::unregister`).
    ended: AtomicBool,
    /// Set when the session became established (see [`Session::was_established`]).
    established: AtomicBool,
    /// The creation, in microseconds after [`epoch`] (8 bytes, an `Instant`'s 16).
    created_micros: u64,
    /// Microseconds after the creation of the last receipt.
    pub(crate) last_rx_micros: AtomicU64,
    /// The state and the published statistics, under one lock: `ping` decides whether a ping
    /// counts from both at once.
    published: Mutex<Published>,
    /// What few sessions use, allocated by the first use (one word here).
    rare: OnceBox<Rare>,
}

/// What every session of an endpoint with the same address of ours shares: where their
/// commands go, and that address. A listener on a wildcard address has one link per address
/// its connections arrived at (`StreamDriver::link_for`), a handful, not one per session.
#[derive(Debug)]
pub(crate) struct EndpointLink {
    tx: mpsc::UnboundedSender<EndpointCommand>,
    local: SocketAddr,
}

impl EndpointLink {
    /// The link of sessions at `local` whose driver reads `tx`'s commands.
    pub(crate) fn new(tx: mpsc::UnboundedSender<EndpointCommand>, local: SocketAddr) -> Arc<Self> {
        Arc::new(EndpointLink { tx, local })
    }

    /// Our address for the sessions of this link.
    pub(crate) fn local(&self) -> SocketAddr {
        self.local
    }

    /// Another link to the same driver, for sessions at `local`.
    pub(crate) fn at(&self, local: SocketAddr) -> Arc<Self> {
        EndpointLink::new(self.tx.clone(), local)
    }

    /// The link of a session nobody serves (one that failed before it started): its commands
    /// go nowhere.
    pub(crate) fn unserved(local: SocketAddr) -> Arc<Self> {
        let (tx, _) = mpsc::unbounded_channel();
        EndpointLink::new(tx, local)
    }
}

/// The parts of a session's handle that few sessions use.
struct Rare {
    /// The adaptive keepalive's state and findings, once one runs for this session.
    adaptive: Mutex<Option<crate::proto::adaptive::AdaptiveStats>>,
    /// Why a session failed before it started (a handshake's cause), when known.
    failure_cause: std::sync::OnceLock<Box<str>>,
    /// Wakes [`Session::closed`] when `ended` is set (a `watch` channel cost about 340 bytes
    /// of heap per session; a `Notify` 32 bytes in every handle).
    ended_notify: Notify,
    /// The [`Ping`] futures waiting for the next pong (or for the session's end). Locked
    /// after `Shared::published` when both are.
    ping_waiters: Mutex<Vec<oneshot::Sender<Result<Duration>>>>,
    /// The timeout of [`Session::request`], in milliseconds.
    request_timeout_ms: AtomicU64,
    /// The id of the next request.
    next_request: AtomicU64,
}

impl Default for Rare {
    fn default() -> Rare {
        Rare {
            adaptive: Mutex::default(),
            failure_cause: std::sync::OnceLock::new(),
            ended_notify: Notify::new(),
            ping_waiters: Mutex::default(),
            request_timeout_ms: AtomicU64::new(DEFAULT_REQUEST_TIMEOUT.as_millis() as u64),
            next_request: AtomicU64::new(1),
        }
    }
}

/// The session's state, what the driver last published of its keepalive machine, and the
/// pings asked for that it has not handled yet.
#[derive(Debug)]
pub(crate) struct Published {
    /// The counters, as the machine keeps them.
    stats: Counters,
    /// The machine failed (its failure counts even while the state is not yet `Failed`).
    failed: bool,
    state: SessionState,
    /// A ping of ours is out (so [`Session::ping`] adds none).
    awaiting_pong: bool,
    /// `Session::ping` calls counted but not yet handled by the driver.
    requested_pings: u32,
}

/// A command to one session of an endpoint: its table slot, its id (checked against the
/// slot's session: a slot reused by a later session is not that session), the command.
pub(crate) type EndpointCommand = (u32, SessionId, Command);

/// The instant creation times count from: a day before the first session (a session made
/// with an instant from before that counts from the epoch).
fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(|| {
        let now = Instant::now();
        now.checked_sub(Duration::from_secs(24 * 3600))
            .unwrap_or(now)
    })
}

impl Session {
    /// A session of the endpoint behind `link` (our address for it is the link's), in its
    /// table's slot `slot`.
    pub(crate) fn new(
        id: SessionId,
        peer: SocketAddr,
        transport: Transport,
        role: Role,
        link: Arc<EndpointLink>,
        slot: u32,
        now: Instant,
    ) -> Session {
        let created_micros = now.saturating_duration_since(epoch()).as_micros() as u64;
        Session {
            shared: Arc::new(Shared {
                id,
                peer,
                slot,
                transport,
                role,
                created_micros,
                published: Mutex::new(Published {
                    stats: Counters::default(),
                    failed: false,
                    state: SessionState::Connecting,
                    awaiting_pong: false,
                    requested_pings: 0,
                }),
                last_rx_micros: AtomicU64::new(0),
                ended: AtomicBool::new(false),
                established: AtomicBool::new(false),
                rare: OnceBox::new(),
                link,
            }),
        }
    }

    /// When the session was created.
    pub(crate) fn created(&self) -> Instant {
        epoch() + Duration::from_micros(self.shared.created_micros)
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
        self.shared.link.local
    }

    /// The transport.
    pub fn transport(&self) -> Transport {
        self.shared.transport
    }

    /// Why the session failed before it became one, when that is known: the cause of a failed
    /// (D)TLS handshake, such as `unknown PSK identity "x"` or `no shared cipher suite: ...`,
    /// set before the nack handler runs. `None` for every other session.
    pub fn failure_cause(&self) -> Option<&str> {
        self.shared.rare.get()?.failure_cause.get().map(|c| &**c)
    }

    /// Client (we connected) or server (the peer did).
    pub fn role(&self) -> Role {
        self.shared.role
    }

    /// The current state.
    pub fn state(&self) -> SessionState {
        lock(&self.shared.published).state
    }

    /// The session's counters and RTTs, live: the driver publishes them at every transmission,
    /// retransmission, pong and ping received, before any handler runs, so a handler or any
    /// other task reads them up to date.
    ///
    /// `pings_sent` also counts the pings [`Session::ping`] asked for that the driver is about to
    /// send: a ping counts from the moment `ping()` returns, not from when the driver got to it.
    pub fn stats(&self) -> Stats {
        let published = lock(&self.shared.published);
        let mut stats = published.stats.snapshot(u64::from(published.failed));
        stats.pings_sent += u64::from(published.requested_pings);
        stats
    }

    /// The state and findings of the adaptive keepalive interval running for this session
    /// ([`AdaptiveKeepalive`](crate::AdaptiveKeepalive)), as live as [`Session::stats`]:
    /// searching, settled or fallback, the bounds on the NAT binding's lifetime, the probes
    /// spent and the interval in use. `None` when none was started.
    pub fn adaptive(&self) -> Option<crate::proto::adaptive::AdaptiveStats> {
        *lock(&self.shared.rare.get()?.adaptive)
    }

    pub(crate) fn publish_adaptive(&self, stats: crate::proto::adaptive::AdaptiveStats) {
        *lock(&self.rare().adaptive) = Some(stats);
    }

    /// Records why the session failed before it started (see [`Session::failure_cause`]).
    pub(crate) fn set_failure_cause(&self, cause: String) {
        let _ = self.rare().failure_cause.set(cause.into_boxed_str());
    }

    fn rare(&self) -> &Rare {
        self.shared.rare.get_or_init(Box::default)
    }

    /// Sends a command to the session's driver; an error when the driver is gone (the session
    /// ended).
    fn send(&self, command: Command) -> std::result::Result<(), ()> {
        let shared = &self.shared;
        shared
            .link
            .tx
            .send((shared.slot, shared.id, command))
            .map_err(|_| ())
    }

    /// How long nothing has been received from the peer.
    pub fn idle(&self) -> Duration {
        Instant::now().saturating_duration_since(self.last_receipt())
    }

    /// When the peer was last heard from (the session's creation before that).
    pub(crate) fn last_receipt(&self) -> Instant {
        self.created() + Duration::from_micros(self.shared.last_rx_micros.load(Ordering::Relaxed))
    }

    /// Overrides the keepalive interval of this session only, in seconds (0 turns its pings
    /// off; libcoap's per-session `-K`). Default: the context's interval.
    ///
    /// Like every per-session keepalive setting, it applies to this session alone and stays
    /// when the context's settings change later ([`Context::set_keepalive`],
    /// [`Context::set_keepalive_config`]); the session still follows the context's changes of
    /// the settings it has not overridden.
    ///
    /// [`Context::set_keepalive`]: crate::Context::set_keepalive
    /// [`Context::set_keepalive_config`]: crate::Context::set_keepalive_config
    pub fn set_keepalive(&self, secs: u64) {
        self.set_keepalive_interval((secs > 0).then(|| Duration::from_secs(secs)));
    }

    /// Like [`Session::set_keepalive`] with any duration (`None` or zero turns this session's
    /// pings off). Default: the context's interval. A ping already out is left to finish; the
    /// next one follows the new interval.
    pub fn set_keepalive_interval(&self, interval: Option<Duration>) {
        self.command(Command::SetKeepaliveInterval(interval));
    }

    /// Overrides how long a TCP / TLS ping of this session waits for its Pong before it counts
    /// as unanswered (must be positive). Default: the context's
    /// [`pong_timeout`](crate::ContextBuilder::pong_timeout), which is the keepalive interval
    /// unless set. One session only, kept across context-wide changes (see
    /// [`Session::set_keepalive`]); a ping already out keeps the timeout it was sent with.
    pub fn set_pong_timeout(&self, timeout: Duration) -> Result<()> {
        if timeout.is_zero() {
            return Err(Error::Config(
                "pong_timeout must be positive, got 0 s".into(),
            ));
        }
        self.command(Command::SetPongTimeout(timeout));
        Ok(())
    }

    /// Overrides how many consecutive unanswered pings fail this session (at least 1).
    /// Default: the context's [`max_unanswered`](crate::ContextBuilder::max_unanswered), 1
    /// unless set. One session only, kept across context-wide changes (see
    /// [`Session::set_keepalive`]).
    pub fn set_max_unanswered(&self, max_unanswered: u32) -> Result<()> {
        if max_unanswered == 0 {
            return Err(Error::Config(
                "max_unanswered must be at least 1, got 0".into(),
            ));
        }
        self.command(Command::SetMaxUnanswered(max_unanswered));
        Ok(())
    }

    /// Reports evidence that the peer is alive, received some other way: postpones the next ping.
    pub fn mark_active(&self) {
        self.command(Command::MarkActive);
    }

    /// Sends a ping now (if none is outstanding and the session is established), and returns a
    /// future of its round-trip time.
    ///
    /// The ping goes out whether or not the returned [`Ping`] is awaited: `session.ping();`
    /// alone is the fire-and-forget form. Awaited, it resolves with the RTT of the next pong of
    /// this session (the answer to this ping, or to the one already out that it merged into),
    /// or fails: with [`Error::SessionFailed`] and the nack reason (`TooManyRetries`,
    /// `NotDeliverable`, `IcmpError`...) when the session fails first, [`Error::Closed`] when it
    /// closes first or had ended already, and [`Error::Timeout`] when the ping went unanswered
    /// and no other is out (`max_unanswered` above 1 with keepalive off). With keepalive on, a
    /// ping that goes unanswered below `max_unanswered` is followed at once by a fresh one, and
    /// the future waits for that one's pong.
    ///
    /// The ping is counted in [`Session::stats`] (`pings_sent`) as soon as this returns, while
    /// its driver sends it: when the session is established and, as last published, no ping of
    /// ours is out. A ping asked for while one is out (or asked for and not yet sent) is merged
    /// into that one and not counted again; so is one that meets a ping the session sent by
    /// itself in the same instant (the count then settles back by one when the driver handles
    /// it). A ping asked for on a session that has ended is not counted, and the count of one
    /// that ends first is dropped.
    pub fn ping(&self) -> Ping {
        let (tx, rx) = oneshot::channel();
        let rare = self.rare();
        let mut published = lock(&self.shared.published);
        // The state is read under the statistics' lock: a session that ends records its state
        // before it drops the pings asked for (`Runtime::unregister`), so none is counted after
        // (and no waiter is left behind).
        let state = published.state;
        if state.is_terminal() {
            drop(published);
            return Ping::ready(Err(self.ended_error()));
        }
        let counted = state == SessionState::Established && !published.awaiting_pong;
        if self.send(Command::PingNow { counted }).is_err() {
            drop(published);
            return Ping::ready(Err(self.ended_error()));
        }
        if counted {
            published.requested_pings += 1;
            // Out as far as the next `ping()` is concerned: it merges instead of counting twice.
            published.awaiting_pong = true;
        }
        // Futures dropped unawaited leave closed senders: shed them so a loop of `ping();`
        // holds none.
        let mut waiters = lock(&rare.ping_waiters);
        waiters.retain(|waiter| !waiter.is_closed());
        waiters.push(tx);
        Ping {
            outcome: PingOutcome::Waiting(rx),
        }
    }

    /// Closes the session gracefully: a 7.04 Release over TCP / TLS, close_notify over DTLS.
    pub fn close(&self) {
        self.command(Command::Close);
    }

    /// Waits until the session has ended and returns how.
    pub async fn closed(&self) -> SessionState {
        let rare = self.rare();
        loop {
            // Registered before the check, so an end published in between still wakes it. The
            // fence pairs with `set_state`'s: either this load sees the end, or that side sees
            // `rare` (made above) and notifies.
            let notified = rare.ended_notify.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            std::sync::atomic::fence(Ordering::SeqCst);
            if self.shared.ended.load(Ordering::SeqCst) {
                return self.state();
            }
            notified.await;
        }
    }

    /// How long [`Session::request`] waits for a response. Default 30 s.
    pub fn request_timeout(&self) -> Duration {
        self.shared
            .rare
            .get()
            .map_or(DEFAULT_REQUEST_TIMEOUT, |rare| {
                Duration::from_millis(rare.request_timeout_ms.load(Ordering::Relaxed))
            })
    }

    /// Changes how long [`Session::request`] waits for a response.
    pub fn set_request_timeout(&self, timeout: Duration) {
        self.rare()
            .request_timeout_ms
            .store(timeout.as_millis() as u64, Ordering::Relaxed);
    }

    /// Sends `request` and waits for its response (the session's request timeout applies).
    ///
    /// Over UDP / DTLS a Confirmable request is retransmitted per RFC 7252 until acknowledged;
    /// if it never is, the session fails with `TooManyRetries` and this returns that error.
    /// A request whose options fail [`Request::check_options`] is not sent:
    /// [`Error::InvalidOption`](crate::Error::InvalidOption).
    pub async fn request(&self, request: Request) -> Result<Response> {
        self.request_with_timeout(request, self.request_timeout())
            .await
    }

    /// Like [`Session::request`] with its own timeout.
    pub async fn request_with_timeout(
        &self,
        request: Request,
        timeout: Duration,
    ) -> Result<Response> {
        let (tx, rx) = oneshot::channel();
        self.send_request(request, timeout, Waiter::Once(tx))?;
        rx.await.unwrap_or(Err(Error::Closed))
    }

    /// GET `path`.
    pub async fn get(&self, path: &str) -> Result<Response> {
        self.request(Request::get(path)).await
    }

    /// PUT `payload` to `path`.
    pub async fn put(&self, path: &str, payload: impl Into<Vec<u8>>) -> Result<Response> {
        self.request(Request::put(path, payload)).await
    }

    /// POST `payload` to `path`.
    pub async fn post(&self, path: &str, payload: impl Into<Vec<u8>>) -> Result<Response> {
        self.request(Request::post(path, payload)).await
    }

    /// DELETE `path`.
    pub async fn delete(&self, path: &str) -> Result<Response> {
        self.request(Request::delete(path)).await
    }

    /// Observes `path` (RFC 7641): returns the first response and a stream of notifications.
    /// When the server does not accept the observation, the stream simply ends.
    pub async fn observe(&self, path: &str) -> Result<Observation> {
        let request = Request::get(path).observing();
        let (first_tx, first_rx) = oneshot::channel();
        let (notifications, rx) = mpsc::unbounded_channel();
        let id = self.send_request(
            request.clone(),
            self.request_timeout(),
            Waiter::Observe {
                first: Some(first_tx),
                notifications,
            },
        )?;
        let first = first_rx.await.unwrap_or(Err(Error::Closed))?;
        Ok(Observation {
            session: self.clone(),
            id,
            request,
            first,
            notifications: rx,
        })
    }

    fn send_request(&self, request: Request, timeout: Duration, waiter: Waiter) -> Result<u64> {
        request.check_options()?;
        let id = self.rare().next_request.fetch_add(1, Ordering::Relaxed);
        let command = Command::Request {
            id,
            request,
            timeout,
            waiter,
        };
        self.send(command).map_err(|_| self.ended_error())?;
        Ok(id)
    }

    /// The error for an operation on a session that has ended.
    pub(crate) fn ended_error(&self) -> Error {
        match self.state() {
            SessionState::Failed(reason) => Error::SessionFailed(reason),
            _ => Error::Closed,
        }
    }

    pub(crate) fn command(&self, command: Command) {
        // A command to a session that ended has nothing left to act on.
        let _ = self.send(command);
    }

    pub(crate) fn set_state(&self, state: SessionState) {
        self.record_state(state);
        if state.is_terminal() {
            self.shared.ended.store(true, Ordering::SeqCst);
            // Pairs with the fence in `closed`: a waiter that missed the end made `rare`.
            std::sync::atomic::fence(Ordering::SeqCst);
            if let Some(rare) = self.shared.rare.get() {
                rare.ended_notify.notify_waiters();
            }
        }
    }

    /// Sets the state without waking [`Session::closed`] (see `Runtime::unregister`).
    pub(crate) fn record_state(&self, state: SessionState) {
        lock(&self.shared.published).state = state;
        if state == SessionState::Established {
            self.shared.established.store(true, Ordering::Release);
        }
    }

    /// Whether the session ever was established, whatever its state now: false for one that
    /// ended before, such as a (D)TLS handshake that failed or a TCP peer whose first message
    /// was not a CSM. An application that counts its sessions tells with it a session that
    /// ended from a connection that never became one, without a set of its own.
    pub fn was_established(&self) -> bool {
        self.shared.established.load(Ordering::Acquire)
    }

    /// Publishes the machine's counters; `fulfilled` settles one ping counted by
    /// [`Session::ping`] (the driver has handled its command).
    pub(crate) fn publish_stats(
        &self,
        (stats, failed): (&Counters, bool),
        awaiting_pong: bool,
        fulfilled: bool,
    ) {
        let mut published = lock(&self.shared.published);
        published.stats.clone_from(stats);
        published.failed = failed;
        if fulfilled {
            published.requested_pings = published.requested_pings.saturating_sub(1);
        }
        // A ping asked for and not yet handled by the driver is out as far as `ping()` is
        // concerned, whatever the machine says: a publish in between must not let a second
        // `ping()` count itself too.
        published.awaiting_pong = awaiting_pong || published.requested_pings > 0;
    }

    /// The session ended: pings asked for and never handled were never sent.
    pub(crate) fn drop_requested_pings(&self) {
        lock(&self.shared.published).requested_pings = 0;
    }

    /// Resolves every waiting [`Ping`] with `outcome()`.
    pub(crate) fn settle_pings(&self, outcome: impl Fn() -> Result<Duration>) {
        let Some(rare) = self.shared.rare.get() else {
            return;
        };
        let waiters = std::mem::take(&mut *lock(&rare.ping_waiters));
        for waiter in waiters {
            let _ = waiter.send(outcome());
        }
    }

    /// A ping went unanswered: its waiters fail, unless the session pings again at once (they
    /// wait for that one's pong) or is failing (they get its reason). The driver published the
    /// machine's state after the timeout, before this event, so both are known here.
    pub(crate) fn settle_unanswered_pings(&self, count: u32) {
        let Some(rare) = self.shared.rare.get() else {
            return;
        };
        let waiters = {
            let published = lock(&self.shared.published);
            if published.awaiting_pong || published.failed {
                return;
            }
            std::mem::take(&mut *lock(&rare.ping_waiters))
        };
        for waiter in waiters {
            let _ = waiter.send(Err(Error::Timeout(format!(
                "ping unanswered ({count} in a row)"
            ))));
        }
    }

    /// The driver handled a [`Command::PingNow`] and no ping is out (the session is not
    /// established, or no longer): whoever waits for a pong would wait for nothing.
    pub(crate) fn settle_unsent_pings(&self) {
        self.settle_pings(|| match self.state() {
            state if state.is_terminal() => Err(self.ended_error()),
            _ => Err(Error::Protocol(
                "the session is not established: no ping was sent".into(),
            )),
        });
    }

    pub(crate) fn note_receipt(&self, now: Instant) {
        let micros = now.saturating_duration_since(self.created()).as_micros() as u64;
        self.shared.last_rx_micros.store(micros, Ordering::Relaxed);
    }
}

/// An observation of a resource: its first representation and the notifications that follow.
/// Dropping it stops delivery and ends the observation at the server: over UDP and DTLS the
/// next notification is rejected with an RST, over TCP and TLS a deregistration (GET with
/// Observe = 1) goes at once. [`Observation::cancel`] deregisters on every transport and
/// returns the server's answer.
#[derive(Debug)]
pub struct Observation {
    session: Session,
    id: u64,
    request: Request,
    first: Response,
    notifications: mpsc::UnboundedReceiver<Response>,
}

impl Observation {
    /// The response to the registration.
    pub fn first(&self) -> &Response {
        &self.first
    }

    /// The next fresh notification; `None` once the observation or the session ended. The
    /// same as the [`Stream`] implementation's next item.
    pub async fn next(&mut self) -> Option<Response> {
        self.notifications.recv().await
    }

    /// Deregisters (GET with Observe = 1 and the registration's token, RFC 7641 §3.6) and
    /// stops delivery; returns the server's answer.
    pub async fn cancel(mut self) -> Result<Response> {
        self.notifications.close();
        let mut request = self.request.clone();
        request.observe = Some(crate::proto::message::OBSERVE_DEREGISTER);
        let (tx, rx) = oneshot::channel();
        let command = Command::Cancel {
            id: self.id,
            deregister: Some((request, Waiter::Once(tx))),
        };
        self.id = 0;
        self.session
            .send(command)
            .map_err(|_| self.session.ended_error())?;
        rx.await.unwrap_or(Err(Error::Closed))
    }
}

/// The notifications, as a stream (`StreamExt` adapters apply); it ends with the observation.
impl Stream for Observation {
    type Item = Response;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Response>> {
        self.notifications.poll_recv(cx)
    }
}

/// The round-trip time of a ping asked for with [`Session::ping`]: resolves on the next pong,
/// or fails when the session ends first. Dropping it does not cancel the ping.
#[derive(Debug)]
pub struct Ping {
    outcome: PingOutcome,
}

#[derive(Debug)]
enum PingOutcome {
    Waiting(oneshot::Receiver<Result<Duration>>),
    Ready(Option<Result<Duration>>),
}

impl Ping {
    fn ready(outcome: Result<Duration>) -> Ping {
        Ping {
            outcome: PingOutcome::Ready(Some(outcome)),
        }
    }
}

impl Future for Ping {
    type Output = Result<Duration>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Result<Duration>> {
        match &mut self.outcome {
            // The session's state (and with it the sender) gone without an answer: it ended.
            PingOutcome::Waiting(rx) => Pin::new(rx)
                .poll(cx)
                .map(|r| r.unwrap_or(Err(Error::Closed))),
            PingOutcome::Ready(outcome) => {
                Poll::Ready(outcome.take().unwrap_or(Err(Error::Closed)))
            }
        }
    }
}

impl Drop for Observation {
    fn drop(&mut self) {
        if self.id == 0 {
            return;
        }
        // Over UDP / DTLS the next notification is answered with an RST, which ends the
        // observation at the server (RFC 7641 §3.6). A stream has no RST: there the client
        // must deregister (RFC 8323 §7, updating RFC 7641 §3.6), with a GET whose answer
        // nobody waits for.
        let deregister =
            matches!(self.session.transport(), Transport::Tcp | Transport::Tls).then(|| {
                let mut request = self.request.clone();
                request.observe = Some(crate::proto::message::OBSERVE_DEREGISTER);
                let (tx, _) = oneshot::channel();
                (request, Waiter::Once(tx))
            });
        self.session.command(Command::Cancel {
            id: self.id,
            deregister,
        });
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every session, idle or not, holds one handle for its life: what few sessions use lives
    /// behind `rare`, allocated by its first use.
    #[test]
    fn a_handle_is_small() {
        let shared = std::mem::size_of::<Shared>();
        println!(
            "Shared {shared} bytes (Rare {})",
            std::mem::size_of::<Rare>()
        );
        assert!(shared <= 136, "Shared is {shared} bytes");
    }
}
