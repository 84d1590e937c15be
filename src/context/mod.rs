//! `Context`: the facade of the crate — the keepalive setting, the handlers and event
//! receivers, the resources, the session table, and the endpoints and connections it runs
//! (every `listen_*` / `connect*` is in `connect.rs`, the builder in `builder.rs`). What it
//! does is done by the runtime below it; this layer only gives it a public shape.

mod adaptive;
mod builder;
mod connect;
mod prometheus;
mod reconnect;

use std::sync::Arc;
use std::time::Duration;

use crate::proto::config::KeepaliveConfig;
use crate::proto::error::{NackReason, Result};
use crate::proto::keepalive::Stats;
use crate::proto::PeerPing;
use crate::runtime::events::Events;
use crate::runtime::handlers::{
    EventHandler, NackHandler, PingDecision, PingHandler, PongHandler, SessionEvent,
};
use crate::runtime::metrics::Metrics;
use crate::runtime::probe_resource::ProbeLimits;
use crate::runtime::resource::Resource;
use crate::runtime::session::Session;
use crate::runtime::settings::ContextSettings;
use crate::runtime::{Runtime, SessionCounts, SessionInfo};

pub use adaptive::AdaptiveKeepalive;
pub use builder::ContextBuilder;
pub use prometheus::{MetricsCollector, OPENMETRICS_CONTENT_TYPE};
pub use reconnect::{ReconnectingObservation, ReconnectingSession};

/// Bytes a context holds for peers' block-wise transfers ([`Context::body_memory`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct BodyMemory {
    /// Held now.
    pub held: usize,
    /// The most held at once since the context was built.
    pub peak: usize,
    /// The most it will hold: beyond it a block is answered 5.03 Service Unavailable.
    pub limit: usize,
}

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
    pub(crate) rt: Arc<Runtime>,
}

impl Default for Context {
    fn default() -> Self {
        Context::new()
    }
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("keepalive", &self.keepalive_config())
            .field("settings", &self.rt.settings)
            .field("sessions", &self.rt.registry.len())
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
        Context {
            rt: Arc::new(Runtime::new(settings, keepalive)),
        }
    }

    /// The context's settings.
    pub fn settings(&self) -> &ContextSettings {
        &self.rt.settings
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

    fn change_keepalive(&self, change: impl FnOnce(&mut KeepaliveConfig)) {
        self.rt.change_keepalive(change);
    }

    /// The context's keepalive configuration: what every session follows except the settings
    /// it overrides.
    pub fn keepalive_config(&self) -> KeepaliveConfig {
        *self.rt.keepalive_config()
    }

    /// Registers the handler called for each ping from a peer, before the automatic answer.
    pub fn register_ping_handler<F>(&self, handler: F)
    where
        F: Fn(&Session, &PeerPing) -> PingDecision + Send + Sync + 'static,
    {
        self.rt.handlers.set_ping(Arc::new(handler) as PingHandler);
    }

    /// Registers the handler called when one of our pings is answered, with its round-trip time.
    pub fn register_pong_handler<F>(&self, handler: F)
    where
        F: Fn(&Session, Duration) + Send + Sync + 'static,
    {
        self.rt.handlers.set_pong(Arc::new(handler) as PongHandler);
    }

    /// Registers the handler called once when a session fails, with the reason.
    pub fn register_nack_handler<F>(&self, handler: F)
    where
        F: Fn(&Session, NackReason) + Send + Sync + 'static,
    {
        self.rt.handlers.set_nack(Arc::new(handler) as NackHandler);
    }

    /// Registers the handler called for other session events (established, closed, a ping
    /// unanswered).
    pub fn register_event_handler<F>(&self, handler: F)
    where
        F: Fn(&Session, SessionEvent) + Send + Sync + 'static,
    {
        self.rt
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
        self.rt.handlers.subscribe()
    }

    /// Adds (or replaces) a resource served to every session of this context.
    pub fn add_resource(&self, resource: Resource) {
        self.rt.router.add(resource);
    }

    /// Serves the keepalive probe resource, `POST /.well-known/keepalive-probe`, within
    /// `limits`: a client measuring how long its NAT keeps a binding (the adaptive keepalive,
    /// [`crate::proto::adaptive`]) asks for one Non-confirmable 2.04 back after an idle delay
    /// of its choosing. Off unless called; the resource is bounded and sends back, only to the
    /// requesting address, less than it received (see [`crate::proto::keepalive_probe`]).
    ///
    /// ```
    /// use coap_keepalive::{Context, ProbeLimits};
    /// use std::time::Duration;
    ///
    /// let ctx = Context::new();
    /// ctx.serve_keepalive_probes(ProbeLimits::default().with_max_delay(Duration::from_secs(180)))?;
    /// # Ok::<(), coap_keepalive::Error>(())
    /// ```
    pub fn serve_keepalive_probes(&self, limits: ProbeLimits) -> Result<()> {
        limits.validate()?;
        let idle_timeout = self.rt.settings.idle_timeout;
        self.add_resource(crate::runtime::probe_resource::resource(
            limits,
            idle_timeout,
        ));
        Ok(())
    }

    /// Sends every observer of the observable resource at `path` its current representation
    /// (the GET handler's answer). Returns the number of notifications sent.
    pub fn notify(&self, path: &str) -> usize {
        self.rt.router.notify(path)
    }

    /// Number of sessions observing `path`.
    pub fn observer_count(&self, path: &str) -> usize {
        self.rt.router.observer_count(path)
    }

    /// The live sessions, ordered by id.
    pub fn sessions(&self) -> Vec<Session> {
        self.rt.registry.sessions()
    }

    /// Counters summed over every session this context has had, live or ended, as live as
    /// [`Session::stats`]: `failures` counts the sessions that failed (as
    /// [`SessionCounts::failed`] does), `rtt.smoothed` is the mean of every session's smoothed
    /// RTT weighted by its pongs, `rtt.last` the latest sample of any session, `rtt.min` and
    /// `rtt.max` the extremes over all.
    pub fn stats(&self) -> Stats {
        self.rt.registry.stats()
    }

    /// What the sessions of this context hold for peers' block-wise transfers (partial uploads
    /// and stored representations, RFC 7959), against the context's budget of 16 maximum-size
    /// bodies ([`ContextBuilder::max_body_size`]).
    pub fn body_memory(&self) -> BodyMemory {
        let budget = self.rt.blockwise.budget();
        BodyMemory {
            held: budget.used(),
            peak: budget.peak(),
            limit: budget.limit(),
        }
    }

    /// How many sessions this context has had and how they ended.
    pub fn session_counts(&self) -> SessionCounts {
        self.rt.registry.counts()
    }

    /// A snapshot of the context's operational figures: live sessions by transport, role and
    /// state, and per transport the ping, pong, RTT, nack, handshake, request, session-limit
    /// and byte counters. The ping counters are the sums of [`Context::stats`], per transport.
    pub fn metrics(&self) -> Metrics {
        self.rt.metrics()
    }

    /// The same figures as Prometheus metrics, in the OpenMetrics text format (serve it with
    /// the Content-Type [`OPENMETRICS_CONTENT_TYPE`]): `coap_sessions`, `coap_pings_sent_total`,
    /// `coap_ping_rtt_seconds`... README's *Metrics* section lists every family.
    ///
    /// ```
    /// # #[tokio::main] async fn main() {
    /// let ctx = coap_keepalive::Context::new();
    /// let text = ctx.metrics_text();
    /// assert!(text.contains("coap_pings_sent_total{transport=\"udp\"} 0"));
    /// assert!(text.ends_with("# EOF\n"));
    /// # }
    /// ```
    pub fn metrics_text(&self) -> String {
        prometheus::text(&self.rt)
    }

    /// The context's metrics for an application's own `prometheus_client` registry
    /// (re-exported as [`coap_keepalive::prometheus_client`](crate::prometheus_client)).
    ///
    /// ```
    /// use coap_keepalive::prometheus_client::registry::Registry;
    ///
    /// # #[tokio::main] async fn main() {
    /// let ctx = coap_keepalive::Context::new();
    /// let mut registry = Registry::default();
    /// registry.register_collector(Box::new(ctx.metrics_collector()));
    /// let mut text = String::new();
    /// coap_keepalive::prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    /// assert!(text.contains("# TYPE coap_sessions gauge"));
    /// # }
    /// ```
    pub fn metrics_collector(&self) -> MetricsCollector {
        MetricsCollector::new(Arc::clone(&self.rt))
    }

    /// What an operator's session listing shows: every live session by id, then the
    /// [`RECENTLY_ENDED`](crate::RECENTLY_ENDED) sessions that ended last, newest first, with
    /// their final state (a failed one with its nack reason).
    pub fn session_listing(&self) -> Vec<SessionInfo> {
        self.rt.session_listing()
    }

    /// Closes every session gracefully and stops every endpoint, waiting at most `deadline`.
    /// Sessions with requests in flight get most of that time to finish them; then each session
    /// closes (7.04 Release over TCP / TLS) and whatever still waits fails with
    /// [`Error::Closed`](crate::Error::Closed) — never silently.
    pub async fn shutdown_within(&self, deadline: Duration) {
        self.rt.shutdown_within(deadline).await
    }

    /// [`Context::shutdown_within`] with a 5 s deadline.
    pub async fn shutdown(&self) {
        self.shutdown_within(Duration::from_secs(5)).await
    }
}
