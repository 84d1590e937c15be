//! The runtime under the [`Context`](crate::Context) facade, private to the crate: what every
//! driver shares with the others and with the application — settings, the handlers and event
//! receivers, the resources, the registry of live sessions, session ids and random sources,
//! shutdown and the tasks it waits for — and [`dispatch`], the one place where a protocol event
//! becomes action.
//!
//! It imports the sans-IO [`proto`](crate::proto) layer and nothing above it: the drivers in
//! `transport` take a [`Runtime`], never the `Context`.

pub(crate) mod dispatch;
pub(crate) mod events;
pub(crate) mod handlers;
pub(crate) mod metrics;
pub(crate) mod probe_resource;
mod registry;
pub(crate) mod resource;
pub(crate) mod session;
pub(crate) mod settings;
pub(crate) mod waiters;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::proto::config::KeepaliveConfig;
use crate::proto::rng::Rng;
use handlers::Handlers;
pub(crate) use registry::Registry;
pub use registry::{SessionCounts, SessionInfo, RECENTLY_ENDED};
use resource::Router;
use session::{lock, Command, Session, SessionId, SessionState};
use settings::ContextSettings;

/// The shared state of one context, behind an `Arc` that the context and every driver hold.
pub(crate) struct Runtime {
    /// Shared with the sessions created from it (replaced, not mutated, once shared).
    keepalive: Mutex<Arc<KeepaliveConfig>>,
    pub(crate) settings: ContextSettings,
    /// Block-wise settings and the memory budget every session of the context shares.
    pub(crate) blockwise: Arc<crate::proto::blockwise::BlockwiseConfig>,
    pub(crate) handlers: Handlers,
    pub(crate) router: Router,
    pub(crate) registry: Registry,
    /// The operational counters (see [`metrics`]).
    pub(crate) counters: metrics::Counters,
    next_id: AtomicU64,
    rng: Mutex<Rng>,
    shutdown: watch::Sender<bool>,
    /// Until when sessions with requests in flight may finish after shutdown began.
    drain_until: Mutex<Option<Instant>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("keepalive", &*lock(&self.keepalive))
            .field("settings", &self.settings)
            .field("sessions", &self.registry.len())
            .finish_non_exhaustive()
    }
}

impl Runtime {
    /// A runtime with settings the builder has checked.
    pub(crate) fn new(settings: ContextSettings, keepalive: KeepaliveConfig) -> Runtime {
        let rng = settings.seed.map_or_else(Rng::from_entropy, Rng::seeded);
        let (shutdown, _) = watch::channel(false);
        Runtime {
            keepalive: Mutex::new(Arc::new(keepalive)),
            blockwise: Arc::new(settings.blockwise()),
            settings,
            handlers: Handlers::default(),
            router: Router::default(),
            registry: Registry::default(),
            counters: metrics::Counters::default(),
            next_id: AtomicU64::new(1),
            rng: Mutex::new(rng),
            shutdown,
            drain_until: Mutex::new(None),
            tasks: Mutex::new(Vec::new()),
        }
    }

    // ---- keepalive settings ----

    /// Changes the context's keepalive configuration and tells every live session.
    ///
    /// The new configuration is a new `Arc`, which every session without an override then
    /// shares: at a million sessions a change costs a command each, never a copy each.
    pub(crate) fn change_keepalive(&self, change: impl FnOnce(&mut KeepaliveConfig)) {
        let new = {
            let mut shared = lock(&self.keepalive);
            let mut config = **shared;
            change(&mut config);
            *shared = Arc::new(config);
            Arc::clone(&shared)
        };
        // Sessions register before they read the configuration (see the drivers), so one that
        // starts meanwhile either has the new configuration already or is told here.
        self.registry
            .for_each(|session| session.command(Command::InheritKeepalive(Arc::clone(&new))));
    }

    /// The context's keepalive configuration, shared: new sessions hold this `Arc`, not a copy
    /// each.
    pub(crate) fn keepalive_config(&self) -> Arc<KeepaliveConfig> {
        Arc::clone(&lock(&self.keepalive))
    }

    // ---- ids and randomness ----

    pub(crate) fn next_session_id(&self) -> SessionId {
        SessionId(self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    /// A random source for a new session, forked from the context's.
    pub(crate) fn session_rng(&self) -> Rng {
        lock(&self.rng).fork()
    }

    // ---- tasks and shutdown ----

    /// Runs `task` until it ends; shutdown waits for it.
    pub(crate) fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let handle = tokio::spawn(task);
        let mut tasks = lock(&self.tasks);
        tasks.retain(|t| !t.is_finished());
        tasks.push(handle);
    }

    /// Flips to `true` when shutdown begins.
    pub(crate) fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Until when draining sessions may keep their requests in flight.
    pub(crate) fn drain_deadline(&self) -> Instant {
        lock(&self.drain_until).unwrap_or_else(Instant::now)
    }

    /// Tells every driver to close its sessions and waits for their tasks, at most `deadline`;
    /// sessions with requests in flight get most of that time to finish them.
    pub(crate) async fn shutdown_within(&self, deadline: Duration) {
        *lock(&self.drain_until) = Some(Instant::now() + deadline.mul_f64(0.8));
        self.shutdown.send_replace(true);
        let tasks: Vec<JoinHandle<()>> = std::mem::take(&mut *lock(&self.tasks));
        let all = async {
            for task in tasks {
                let _ = task.await;
            }
        };
        if tokio::time::timeout(deadline, all).await.is_err() {
            tracing::warn!("shutdown deadline passed; remaining tasks abandoned");
        }
        self.handlers.finish();
    }
}

impl Runtime {
    // ---- figures ----

    /// A snapshot of the context's figures.
    pub(crate) fn metrics(&self) -> metrics::Metrics {
        let mut transports: Vec<metrics::TransportMetrics> = metrics::TRANSPORTS
            .iter()
            .map(|t| self.counters.snapshot(*t))
            .collect();
        let sessions = self.registry.fill_metrics(&mut transports);
        metrics::Metrics {
            sessions,
            transports,
        }
    }

    /// The live sessions, then the ones that ended recently.
    pub(crate) fn session_listing(&self) -> Vec<SessionInfo> {
        self.registry.listing(&self.router.observation_counts())
    }

    // ---- the session registry ----

    /// Adds a new session to the registry.
    pub(crate) fn register(&self, session: &Session) {
        self.registry.insert(session);
    }

    /// Removes an ended session from the registry (and its observations), keeping its counters
    /// in the context's totals.
    ///
    /// The terminal state is published (waking [`Session::closed`]) only after the session left
    /// the registry, so whoever awaits it never sees a zombie in `Context::sessions`.
    pub(crate) fn unregister(&self, session: &Session, state: SessionState) {
        self.remove(session, state);
        session.settle_pings(|| Err(session.ended_error()));
        session.set_state(state);
    }

    /// [`Runtime::unregister`] up to the point where the session's end is published: its
    /// terminal event goes out between the two, then its waiters learn, then `closed()` wakes.
    pub(crate) fn remove(&self, session: &Session, state: SessionState) {
        self.registry.remove(session, state);
        self.router.forget_session(session.id());
    }
}
