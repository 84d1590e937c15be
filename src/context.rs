//! `Context`: the keepalive setting, the session table, the handlers, and the endpoints and
//! connections it runs.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::KeepaliveConfig;
use crate::error::{Error, NackReason, Result};
use crate::events::Events;
use crate::handler::{
    EventHandler, Handlers, NackHandler, PeerPing, PingDecision, PingHandler, PongHandler,
    SessionEvent,
};
use crate::keepalive::{PingTransmit, Stats};
use crate::message::Response;
use crate::protocol::exchange::RequestError;
use crate::protocol::{IncomingRequest, ProtocolEvent};
use crate::resource::{Resource, Routed, Router};
use crate::rng::Rng;
use crate::session::{lock, Command, Session, SessionState, Transport};
use crate::uri::CoapUri;

pub use crate::settings::{ContextBuilder, ContextSettings};

/// A CoAP context: holds the keepalive setting, the handlers and the table of sessions, and
/// runs the endpoints (`listen_*`) and connections (`connect*`) created from it.
///
/// Cloning is cheap; every clone is the same context.
///
/// # Keepalive settings
///
/// The context holds one [`KeepaliveConfig`], set with [`Context::builder`] and changed with
/// [`Context::set_keepalive`], [`Context::set_keepalive_interval`] or
/// [`Context::set_keepalive_config`]. A change reaches every live session and every new one
/// alike, setting by setting: a session that has its own interval
/// ([`Session::set_keepalive_interval`]), pong timeout ([`Session::set_pong_timeout`]) or
/// `max_unanswered` ([`Session::set_max_unanswered`]) keeps that one, and takes every other
/// setting from the context. A ping already out finishes under the settings it was sent with.
///
/// ```
/// use std::time::Duration;
/// use coap_keepalive::Context;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> coap_keepalive::Result<()> {
/// # let server = Context::new();
/// # let endpoint = server.listen_tcp("127.0.0.1:0".parse().unwrap()).await?;
/// let ctx = Context::builder().keepalive(Duration::from_secs(30)).build()?;
/// let session = ctx.connect_tcp(endpoint.local_addr).await?;
/// session.set_pong_timeout(Duration::from_secs(5))?; // this session only
/// ctx.set_keepalive(10); // every session, this one too: it pings after 10 idle seconds
/// # ctx.shutdown().await;
/// # server.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Context {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    /// Shared with the sessions created from it (replaced, not mutated, once shared).
    keepalive: Mutex<Arc<KeepaliveConfig>>,
    pub(crate) settings: ContextSettings,
    pub(crate) handlers: Handlers,
    pub(crate) router: Router,
    sessions: Mutex<HashMap<crate::session::SessionId, Session>>,
    ended: Mutex<Stats>,
    /// Sessions registered, and those that ended closed or failed (see [`SessionCounts`]).
    opened: AtomicU64,
    closed: AtomicU64,
    failed: AtomicU64,
    /// The latest RTT sample of any session, in nanoseconds (0: none yet).
    last_rtt_nanos: AtomicU64,
    next_id: AtomicU64,
    rng: Mutex<Rng>,
    shutdown: watch::Sender<bool>,
    /// Until when sessions with requests in flight may finish after shutdown began.
    drain_until: Mutex<Option<Instant>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// How many sessions a context has had, and how they ended: `opened == live + closed + failed`
/// at every instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionCounts {
    /// Sessions created, on every endpoint and connection (a (D)TLS handshake that failed
    /// counts as a session that failed at once, as the nack handler sees it).
    pub opened: u64,
    /// Sessions in the table now ([`Context::sessions`]).
    pub live: u64,
    /// Sessions that ended normally: closed by us, by the peer with nothing of ours
    /// outstanding (a 7.04 Release or the end of its connection), or forgotten when idle.
    pub closed: u64,
    /// Sessions that failed: the nack handler ran for each, with its reason.
    pub failed: u64,
}

/// A listening endpoint of a context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    /// The transport it serves.
    pub transport: Transport,
    /// The address it is bound to (with the real port when port 0 was asked for).
    pub local_addr: SocketAddr,
}

/// What a driver must do after the context handled a protocol event.
#[derive(Debug)]
pub(crate) enum Reaction {
    /// Nothing.
    None,
    /// Send these bytes (the answer to a ping).
    Send(Vec<u8>),
    /// Answer the request with this response through the session protocol.
    Respond(Box<(IncomingRequest, Response)>),
    /// The handler answers later: acknowledge the request now (separate response).
    RespondLater(Box<IncomingRequest>),
    /// Hand this outcome to whoever waits for the request with this token.
    Deliver(Vec<u8>, Result<Response>),
    /// The session ended: fail its waiters with this error and drop it.
    Ended(Error),
}

impl Default for Context {
    fn default() -> Self {
        Context::new()
    }
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("keepalive", &*lock(&self.inner.keepalive))
            .field("settings", &self.inner.settings)
            .field("sessions", &lock(&self.inner.sessions).len())
            .finish_non_exhaustive()
    }
}

impl Context {
    /// A context with default settings and keepalive off: `Context::builder().build()`.
    pub fn new() -> Context {
        Context::from_settings(ContextSettings::default(), KeepaliveConfig::default())
    }

    /// A builder for a context with settings of its own, each checked once when it builds.
    pub fn builder() -> ContextBuilder {
        ContextBuilder::new()
    }

    /// A context with settings [`ContextBuilder::build`] has checked.
    pub(crate) fn from_settings(settings: ContextSettings, keepalive: KeepaliveConfig) -> Context {
        let rng = settings.seed.map_or_else(Rng::from_entropy, Rng::seeded);
        let (shutdown, _) = watch::channel(false);
        Context {
            inner: Arc::new(Inner {
                keepalive: Mutex::new(Arc::new(keepalive)),
                settings,
                handlers: Handlers::default(),
                router: Router::default(),
                sessions: Mutex::new(HashMap::new()),
                ended: Mutex::new(Stats::default()),
                opened: AtomicU64::new(0),
                closed: AtomicU64::new(0),
                failed: AtomicU64::new(0),
                last_rtt_nanos: AtomicU64::new(0),
                next_id: AtomicU64::new(1),
                rng: Mutex::new(rng),
                shutdown,
                drain_until: Mutex::new(None),
                tasks: Mutex::new(Vec::new()),
            }),
        }
    }

    /// The context's settings.
    pub fn settings(&self) -> &ContextSettings {
        &self.inner.settings
    }

    /// Sets the keepalive interval in seconds for every session of this context, live or new,
    /// that has no interval of its own; 0 disables (libcoap's `-K`). Default: off.
    pub fn set_keepalive(&self, secs: u64) {
        let interval = (secs > 0).then(|| Duration::from_secs(secs));
        self.set_keepalive_interval(interval);
    }

    /// Like [`Context::set_keepalive`] with any duration (`None` or zero disables).
    pub fn set_keepalive_interval(&self, interval: Option<Duration>) {
        self.change_keepalive(|config| *config = config.with_interval(interval));
    }

    /// Replaces the whole keepalive configuration, for every session of this context, live or
    /// new: each takes every setting it has not overridden (see [`Context`]). An invalid
    /// configuration is an error naming the field, and changes nothing.
    pub fn set_keepalive_config(&self, config: KeepaliveConfig) -> Result<()> {
        config.validate()?;
        self.change_keepalive(|current| *current = config);
        Ok(())
    }

    /// Changes the context's keepalive configuration and tells every live session.
    ///
    /// The new configuration is a new `Arc`, which every session without an override then
    /// shares: at a million sessions a change costs a command each, never a copy each.
    fn change_keepalive(&self, change: impl FnOnce(&mut KeepaliveConfig)) {
        let new = {
            let mut shared = lock(&self.inner.keepalive);
            let mut config = **shared;
            change(&mut config);
            *shared = Arc::new(config);
            Arc::clone(&shared)
        };
        // Sessions register before they read the configuration (see the drivers), so one that
        // starts meanwhile either has the new configuration already or is told here.
        for session in lock(&self.inner.sessions).values() {
            session.command(Command::InheritKeepalive(Arc::clone(&new)));
        }
    }

    /// The context's keepalive configuration: what every session follows except the settings
    /// it overrides.
    pub fn keepalive_config(&self) -> KeepaliveConfig {
        **lock(&self.inner.keepalive)
    }

    /// The same configuration, shared: new sessions hold this `Arc`, not a copy each.
    pub(crate) fn shared_keepalive_config(&self) -> Arc<KeepaliveConfig> {
        Arc::clone(&lock(&self.inner.keepalive))
    }

    /// Registers the handler called for each ping from a peer, before the automatic answer.
    pub fn register_ping_handler<F>(&self, handler: F)
    where
        F: Fn(&Session, &PeerPing) -> PingDecision + Send + Sync + 'static,
    {
        self.inner
            .handlers
            .set_ping(Arc::new(handler) as PingHandler);
    }

    /// Registers the handler called when one of our pings is answered, with its round-trip time.
    pub fn register_pong_handler<F>(&self, handler: F)
    where
        F: Fn(&Session, Duration) + Send + Sync + 'static,
    {
        self.inner
            .handlers
            .set_pong(Arc::new(handler) as PongHandler);
    }

    /// Registers the handler called once when a session fails, with the reason.
    pub fn register_nack_handler<F>(&self, handler: F)
    where
        F: Fn(&Session, NackReason) + Send + Sync + 'static,
    {
        self.inner
            .handlers
            .set_nack(Arc::new(handler) as NackHandler);
    }

    /// Registers the handler called for other session events (established, closed, a ping
    /// unanswered).
    pub fn register_event_handler<F>(&self, handler: F)
    where
        F: Fn(&Session, SessionEvent) + Send + Sync + 'static,
    {
        self.inner
            .handlers
            .set_event(Arc::new(handler) as EventHandler);
    }

    /// A receiver of every session event of this context from now on: established, pings
    /// received (and whether they were answered), pings sent and retransmitted, pongs with
    /// their RTT, pings unanswered, closed, failed with the nack reason. Call it as often as
    /// needed: every receiver sees every event, in the order the handlers above see them.
    /// See [`Events`] for what a receiver that falls behind gets, and when the stream ends.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> coap_keepalive::Result<()> {
    /// use coap_keepalive::{Context, EventKind};
    ///
    /// let server = Context::new();
    /// let endpoint = server.listen_udp("127.0.0.1:0".parse().unwrap()).await?;
    /// let mut events = server.events();
    /// let client = Context::new();
    /// let session = client.connect_udp(endpoint.local_addr).await?;
    /// session.ping().await?;
    /// while let Some(item) = events.recv().await {
    ///     let event = item.expect("a few events, no lag");
    ///     println!("{event}"); // "#1 udp server 127.0.0.1:40001: established", ...
    ///     if matches!(event.kind, EventKind::PingReceived { answered: true, .. }) {
    ///         break;
    ///     }
    /// }
    /// # client.shutdown().await;
    /// # server.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub fn events(&self) -> Events {
        self.inner.handlers.subscribe()
    }

    /// Adds (or replaces) a resource served to every session of this context.
    pub fn add_resource(&self, resource: Resource) {
        self.inner.router.add(resource);
    }

    /// Sends every observer of the observable resource at `path` its current representation
    /// (the GET handler's answer). Returns the number of notifications sent.
    pub fn notify(&self, path: &str) -> usize {
        self.inner.router.notify(path)
    }

    /// Number of sessions observing `path`.
    pub fn observer_count(&self, path: &str) -> usize {
        self.inner.router.observer_count(path)
    }

    /// The live sessions, ordered by id.
    pub fn sessions(&self) -> Vec<Session> {
        let mut sessions: Vec<Session> = lock(&self.inner.sessions).values().cloned().collect();
        sessions.sort_by_key(Session::id);
        sessions
    }

    /// Counters summed over every session this context has had, live or ended, as live as
    /// [`Session::stats`]: `failures` counts the sessions that failed (as
    /// [`SessionCounts::failed`] does), `rtt.smoothed` is the mean of every session's smoothed
    /// RTT weighted by its pongs, `rtt.last` the latest sample of any session, `rtt.min` and
    /// `rtt.max` the extremes over all.
    pub fn stats(&self) -> Stats {
        // The table's lock is held while `ended` is read: `unregister` moves a session's
        // counters from the one to the other under it, so none is missed or counted twice.
        let sessions = lock(&self.inner.sessions);
        let mut total = *lock(&self.inner.ended);
        for session in sessions.values() {
            total.accumulate(&session.stats());
        }
        drop(sessions);
        let last = self.inner.last_rtt_nanos.load(Ordering::Relaxed);
        if last != 0 {
            total.rtt.last = Some(Duration::from_nanos(last));
        }
        total
    }

    /// How many sessions this context has had and how they ended.
    pub fn session_counts(&self) -> SessionCounts {
        // Ended ones first: every one of them was opened before, so `live` never goes negative.
        let closed = self.inner.closed.load(Ordering::Acquire);
        let failed = self.inner.failed.load(Ordering::Acquire);
        let opened = self.inner.opened.load(Ordering::Acquire);
        SessionCounts {
            opened,
            live: opened.saturating_sub(closed + failed),
            closed,
            failed,
        }
    }

    /// Serves CoAP over UDP on `addr`: all of its sessions from one socket and one task.
    pub async fn listen_udp(&self, addr: SocketAddr) -> Result<Endpoint> {
        crate::transport::udp::listen(self, addr).await
    }

    /// Serves CoAP over TCP on `addr`: a task per connection.
    pub async fn listen_tcp(&self, addr: SocketAddr) -> Result<Endpoint> {
        crate::transport::tcp::listen(self, addr).await
    }

    /// Opens a UDP session to `peer` from a fresh local port.
    pub async fn connect_udp(&self, peer: SocketAddr) -> Result<Session> {
        crate::transport::udp::connect(self, peer).await
    }

    /// Opens a TCP session to `peer`; returns once the peer's CSM arrived.
    pub async fn connect_tcp(&self, peer: SocketAddr) -> Result<Session> {
        crate::transport::tcp::connect(self, peer).await
    }

    /// Opens a session to the host of `uri` over the transport its scheme names. Secured
    /// schemes need credentials: use the transport-specific calls for them.
    pub async fn connect(&self, uri: &str) -> Result<Session> {
        let uri = CoapUri::parse(uri)?;
        let peer = uri.resolve().await?;
        match uri.transport {
            Transport::Udp => self.connect_udp(peer).await,
            Transport::Tcp => self.connect_tcp(peer).await,
            other => Err(Error::Config(format!(
                "{}:// needs credentials: use the {} connect call with a PSK or certificates",
                other.scheme(),
                other.name()
            ))),
        }
    }

    /// Closes every session gracefully and stops every endpoint, waiting at most `deadline`.
    /// Sessions with requests in flight get most of that time to finish them; then each session
    /// closes (7.04 Release over TCP / TLS) and whatever still waits fails with
    /// [`Error::Closed`] — never silently.
    pub async fn shutdown_within(&self, deadline: Duration) {
        *lock(&self.inner.drain_until) = Some(Instant::now() + deadline.mul_f64(0.8));
        self.inner.shutdown.send_replace(true);
        let tasks: Vec<JoinHandle<()>> = std::mem::take(&mut *lock(&self.inner.tasks));
        let all = async {
            for task in tasks {
                let _ = task.await;
            }
        };
        if tokio::time::timeout(deadline, all).await.is_err() {
            tracing::warn!("shutdown deadline passed; remaining tasks abandoned");
        }
        self.inner.handlers.finish();
    }

    /// [`Context::shutdown_within`] with a 5 s deadline.
    pub async fn shutdown(&self) {
        self.shutdown_within(Duration::from_secs(5)).await
    }

    // ---- for the drivers ----

    /// Until when draining sessions may keep their requests in flight.
    pub(crate) fn drain_deadline(&self) -> Instant {
        lock(&self.inner.drain_until).unwrap_or_else(Instant::now)
    }

    pub(crate) fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.inner.shutdown.subscribe()
    }

    pub(crate) fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let handle = tokio::spawn(task);
        let mut tasks = lock(&self.inner.tasks);
        tasks.retain(|t| !t.is_finished());
        tasks.push(handle);
    }

    pub(crate) fn next_session_id(&self) -> crate::session::SessionId {
        crate::session::SessionId(self.inner.next_id.fetch_add(1, Ordering::Relaxed))
    }

    /// A random source for a new session, forked from the context's.
    pub(crate) fn session_rng(&self) -> Rng {
        lock(&self.inner.rng).fork()
    }

    pub(crate) fn register(&self, session: &Session) {
        if lock(&self.inner.sessions)
            .insert(session.id(), session.clone())
            .is_none()
        {
            self.inner.opened.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Removes an ended session from the table (and its observations), keeping its counters in
    /// the context's totals.
    ///
    /// The terminal state is published (waking [`Session::closed`]) only after the session left
    /// the table, so whoever awaits it never sees a zombie in [`Context::sessions`].
    pub(crate) fn unregister(&self, session: &Session, state: SessionState) {
        self.remove(session, state);
        session.settle_pings(|| Err(session.ended_error()));
        session.set_state(state);
    }

    /// [`Context::unregister`] up to the point where the session's end is published: its
    /// terminal event goes out between the two, then its waiters learn, then `closed()` wakes.
    fn remove(&self, session: &Session, state: SessionState) {
        let mut sessions = lock(&self.inner.sessions);
        if sessions.remove(&session.id()).is_some() {
            // Recorded before the pings asked for are dropped, so that `Session::ping` counts
            // none after that.
            session.record_state(state);
            session.drop_requested_pings();
            let mut stats = session.stats();
            // A session fails once or not at all, whichever path ended it.
            stats.failures = u64::from(matches!(state, SessionState::Failed(_)));
            // Still under the table's lock (see `stats`).
            lock(&self.inner.ended).accumulate(&stats);
            let ended = match state {
                SessionState::Failed(_) => &self.inner.failed,
                _ => &self.inner.closed,
            };
            ended.fetch_add(1, Ordering::AcqRel);
        }
        drop(sessions);
        self.inner.router.forget_session(session.id());
    }

    /// Runs the handlers for one protocol event and says what the driver must do.
    ///
    /// The driver has published the session's statistics before (see
    /// `dispatch::publish_stats`), so the handlers read them up to date.
    pub(crate) fn on_event(
        &self,
        session: &Session,
        now: Instant,
        event: ProtocolEvent,
    ) -> Reaction {
        let handlers = &self.inner.handlers;
        match event {
            ProtocolEvent::PeerPing(ping) => {
                session.note_receipt(now);
                match handlers.ping(session, &ping) {
                    PingDecision::Answer => Reaction::Send(ping.answer()),
                    PingDecision::Suppress => Reaction::None,
                }
            }
            ProtocolEvent::Pong { rtt } => {
                session.note_receipt(now);
                let nanos = rtt.as_nanos().clamp(1, u128::from(u64::MAX)) as u64;
                self.inner.last_rtt_nanos.store(nanos, Ordering::Relaxed);
                handlers.pong(session, rtt);
                session.settle_pings(|| Ok(rtt));
                Reaction::None
            }
            ProtocolEvent::PingSent(ping) => {
                // The driver published the session's statistics before this event's handlers.
                let retransmission = matches!(
                    ping,
                    PingTransmit::Datagram {
                        retransmission: true,
                        ..
                    }
                );
                handlers.event(session, SessionEvent::PingSent { retransmission }, || {});
                Reaction::None
            }
            ProtocolEvent::PingUnanswered { count } => {
                handlers.event(session, SessionEvent::PingUnanswered { count }, || {});
                session.settle_unanswered_pings(count);
                Reaction::None
            }
            ProtocolEvent::Established => {
                session.set_state(SessionState::Established);
                handlers.event(session, SessionEvent::Established, || {});
                Reaction::None
            }
            ProtocolEvent::Request(incoming) => {
                session.note_receipt(now);
                let request = incoming.request();
                tracing::debug!(session = %session, method = ?request.method, path = %request.path_str(), "request");
                match self.inner.router.route(request, session) {
                    Routed::Now(response) => Reaction::Respond(Box::new((*incoming, response))),
                    Routed::Later => Reaction::RespondLater(incoming),
                }
            }
            ProtocolEvent::Response { token, response } => {
                session.note_receipt(now);
                Reaction::Deliver(token, Ok(*response))
            }
            ProtocolEvent::RequestFailed { token, error } => {
                let error = match error {
                    RequestError::TimedOut => {
                        Error::Timeout(format!("no response from {}", session.peer()))
                    }
                    RequestError::Reset => Error::Reset,
                    RequestError::SessionEnded => session.ended_error(),
                    RequestError::UnrecognisedOption { number } => {
                        Error::UnrecognisedOption { number }
                    }
                };
                Reaction::Deliver(token, Err(error))
            }
            ProtocolEvent::ObserverGone { token } => {
                self.inner.router.forget(session.id(), &token);
                Reaction::None
            }
            ProtocolEvent::Closed => {
                let state = SessionState::Closed;
                handlers.event(session, SessionEvent::Closed, || {
                    self.remove(session, state)
                });
                session.settle_pings(|| Err(Error::Closed));
                session.set_state(state);
                Reaction::Ended(Error::Closed)
            }
            ProtocolEvent::Failed(reason) => {
                // The nack handler sees the failure; `closed()` wakes once the session is gone.
                let state = SessionState::Failed(reason);
                session.record_state(state);
                handlers.failed(session, reason, || self.remove(session, state));
                session.settle_pings(|| Err(Error::SessionFailed(reason)));
                session.set_state(state);
                Reaction::Ended(Error::SessionFailed(reason))
            }
            ProtocolEvent::Rejected(why) => {
                // At info: what a peer was refused (4.02, an Abort, an RST) is what an operator
                // running `serve -v` needs to see.
                tracing::info!(session = %session, %why, "input rejected");
                Reaction::None
            }
        }
    }
}
