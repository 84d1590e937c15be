//! `AdaptiveKeepalive`: runs the adaptive search ([`crate::proto::adaptive`]) for one UDP
//! session — its probes on a socket of their own, the interval it finds applied to the
//! session, its state published in the session's statistics and its events on the context's
//! event bus.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::context::Context;
use crate::proto::adaptive::{
    AdaptiveConfig, AdaptiveState, AdaptiveStats, IntervalSearch, ProbeOutcome,
};
use crate::proto::error::{Error, Result};
use crate::proto::keepalive_probe::{classify_probe_response, probe_request, ProbeAnswer};
use crate::runtime::events::{EventKind, Events};
use crate::runtime::session::{Session, Transport};

/// How often the route to the server is looked at for a new local address (a change of
/// network). A look is a system call on an unconnected socket, with no traffic.
const ROUTE_CHECK_EVERY: Duration = Duration::from_secs(5);

/// What the application can tell a running adaptive keepalive.
enum Notice {
    NetworkChanged,
    KeepaliveFailed,
}

/// The adaptive keepalive interval of one UDP client session: it finds the longest idle time
/// the path to the server keeps its NAT binding, and keeps the session's keepalive interval at
/// the safety fraction of it.
///
/// The probes go out on a second UDP socket that carries nothing else, so the session's own
/// traffic does not refresh the binding being measured; the server must serve the probe
/// resource ([`Context::serve_keepalive_probes`], `coap-keepalive serve`), or the session keeps
/// the fixed interval. A ping of the session that goes unanswered (with `max_unanswered` above
/// 1, the session lives on), or a new local address on the route to the server, starts the
/// search over.
///
/// Its state is [`Session::adaptive`]; each step is an [`EventKind::Adaptive`] on
/// [`Context::events`] (it listens there for the session's unanswered pings, so the context
/// makes its events from then on). It runs until the session ends, the context shuts down, or
/// this handle is dropped.
///
/// ```
/// use std::time::Duration;
/// use coap_keepalive::proto::adaptive::AdaptiveConfig;
/// use coap_keepalive::{AdaptiveKeepalive, Context, ProbeLimits};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> coap_keepalive::Result<()> {
/// let server = Context::new();
/// server.serve_keepalive_probes(ProbeLimits::default())?;
/// let endpoint = server.listen_udp("127.0.0.1:0".parse().unwrap()).await?;
///
/// let client = Context::new();
/// let session = client.connect_udp(endpoint.local_addr).await?;
/// let config = AdaptiveConfig::new(Duration::from_millis(20), Duration::from_millis(80))
///     .with_grace(Duration::from_millis(50));
/// let adaptive = AdaptiveKeepalive::start(&client, &session, config)?;
/// adaptive.settled().await; // loopback has no NAT: every probe-back arrives
/// let found = session.adaptive().unwrap();
/// assert_eq!(found.lower, Some(Duration::from_millis(80)));
/// assert_eq!(found.interval, Duration::from_millis(64));
/// # client.shutdown().await;
/// # server.shutdown().await;
/// # Ok(()) }
/// ```
pub struct AdaptiveKeepalive {
    notices: mpsc::UnboundedSender<Notice>,
    /// What the driver last published (also in the session's statistics).
    stats: watch::Receiver<AdaptiveStats>,
    task: JoinHandle<()>,
}

impl AdaptiveKeepalive {
    /// Starts the search for `session` (a UDP client session of `ctx`) at once, with the
    /// interval at the configuration's fixed one until something better is known.
    pub fn start(
        ctx: &Context,
        session: &Session,
        config: AdaptiveConfig,
    ) -> Result<AdaptiveKeepalive> {
        if session.transport() != Transport::Udp {
            return Err(Error::Config(format!(
                "the adaptive keepalive runs over UDP only, not {}",
                session.transport().name()
            )));
        }
        let search = IntervalSearch::new(config, Instant::now())?;
        // The probes' context: keepalive off (a ping would refresh the binding under test),
        // the session's transmission parameters.
        let probes = Context::new();
        probes.set_keepalive_config(ctx.keepalive_config().with_interval(None))?;
        let (notices, rx) = mpsc::unbounded_channel();
        let (published, stats) = watch::channel(search.stats());
        let driver = Driver {
            published,
            search,
            session: session.clone(),
            ctx: ctx.clone(),
            events: ctx.events(),
            probes,
            probe_session: None,
        };
        session.set_keepalive_interval(Some(driver.search.interval()));
        session.publish_adaptive(driver.search.stats());
        let task = tokio::spawn(driver.run(rx));
        Ok(AdaptiveKeepalive {
            notices,
            stats,
            task,
        })
    }

    /// The search's state and findings (the same as [`Session::adaptive`]).
    pub fn stats(&self) -> AdaptiveStats {
        *self.stats.borrow()
    }

    /// Tells the search the network changed (the application learnt it from the system):
    /// it starts over. A new local address on the route to the server is noticed without it.
    pub fn network_changed(&self) {
        let _ = self.notices.send(Notice::NetworkChanged);
    }

    /// Tells the search the session's keepalive failed for a reason it cannot see (the
    /// application's own evidence): it starts over below the current interval.
    pub fn keepalive_failed(&self) {
        let _ = self.notices.send(Notice::KeepaliveFailed);
    }

    /// Waits until the search is no longer searching (settled, or fallen back), or has
    /// stopped (its session ended); returns its state then.
    pub async fn settled(&self) -> AdaptiveStats {
        let mut stats = self.stats.clone();
        let searching = |s: &AdaptiveStats| s.state == AdaptiveState::Searching;
        let found = stats.wait_for(|s| !searching(s)).await.map(|found| *found);
        // Err: the driver is gone; what it last published.
        found.unwrap_or_else(|_| *stats.borrow())
    }
}

impl Drop for AdaptiveKeepalive {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The task: the search, its probes, and what it hears of the session.
struct Driver {
    published: watch::Sender<AdaptiveStats>,
    search: IntervalSearch,
    session: Session,
    ctx: Context,
    events: Events,
    probes: Context,
    probe_session: Option<Session>,
}

type InFlight = std::pin::Pin<Box<dyn std::future::Future<Output = (u64, ProbeOutcome)> + Send>>;

impl Driver {
    async fn run(mut self, mut notices: mpsc::UnboundedReceiver<Notice>) {
        let server = self.session.peer();
        let mut route = local_route(server);
        let mut route_check = tokio::time::interval(ROUTE_CHECK_EVERY);
        let mut in_flight: Option<InFlight> = None;
        loop {
            let now = Instant::now();
            self.search.handle_timeout(now);
            if let Some(probe) = self.search.poll_probe(now) {
                match self.probe_session().await {
                    Some(probe_session) => {
                        let grace = self.search.config().grace();
                        in_flight = Some(Box::pin(async move {
                            let request = probe_request(probe.delay);
                            let answer = probe_session
                                .request_with_timeout(request, probe.delay + grace)
                                .await;
                            (probe.id, outcome(answer))
                        }));
                    }
                    None => self
                        .search
                        .handle_outcome(now, probe.id, ProbeOutcome::Lost),
                }
            }
            self.report();
            let wake = self.search.poll_timeout();
            let probe_done = async {
                match in_flight.as_mut() {
                    Some(probe) => probe.await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                (id, outcome) = probe_done => {
                    in_flight = None;
                    self.search.handle_outcome(Instant::now(), id, outcome);
                }
                _ = sleep_until(wake) => {}
                event = self.events.recv() => match event {
                    Some(Ok(event)) if event.session.id() == self.session.id() => {
                        match event.kind {
                            EventKind::PingUnanswered { .. } => {
                                self.search.handle_keepalive_failure(Instant::now());
                            }
                            kind if kind.is_terminal() => break,
                            _ => {}
                        }
                    }
                    Some(_) => {}
                    None => break,
                },
                notice = notices.recv() => match notice {
                    Some(Notice::NetworkChanged) => {
                        self.search.handle_network_change(Instant::now());
                    }
                    Some(Notice::KeepaliveFailed) => {
                        self.search.handle_keepalive_failure(Instant::now());
                    }
                    None => break,
                },
                _ = route_check.tick() => {
                    let now_route = local_route(server);
                    if now_route != route {
                        tracing::info!(session = %self.session, old = ?route, new = ?now_route, "local address changed");
                        route = now_route;
                        self.search.handle_network_change(Instant::now());
                    }
                }
            }
            if self.session.state().is_terminal() {
                break;
            }
        }
        self.report();
        self.probes
            .shutdown_within(Duration::from_millis(100))
            .await;
    }

    /// The probe socket's session, made anew when the last one ended (its server unreachable).
    async fn probe_session(&mut self) -> Option<Session> {
        if let Some(session) = self
            .probe_session
            .as_ref()
            .filter(|s| !s.state().is_terminal())
        {
            return Some(session.clone());
        }
        match self.probes.connect_udp(self.session.peer()).await {
            Ok(session) => {
                self.probe_session = Some(session.clone());
                Some(session)
            }
            Err(error) => {
                tracing::warn!(%error, "cannot open the keepalive probe socket");
                None
            }
        }
    }

    /// Hands the search's events to the bus, the interval to the session, the state to its
    /// statistics.
    fn report(&mut self) {
        while let Some(event) = self.search.poll_event() {
            if let crate::proto::adaptive::AdaptiveEvent::IntervalChanged { interval } = event {
                self.session.set_keepalive_interval(Some(interval));
            }
            self.ctx.rt.handlers.adaptive(&self.session, event);
        }
        let stats = self.search.stats();
        self.session.publish_adaptive(stats);
        self.published.send_if_modified(|last| {
            let changed = *last != stats;
            *last = stats;
            changed
        });
    }
}

/// What a probe request's result says.
fn outcome(answer: Result<crate::proto::message::Response>) -> ProbeOutcome {
    match answer {
        Ok(response) => match classify_probe_response(&response) {
            ProbeAnswer::Arrived => ProbeOutcome::Arrived,
            ProbeAnswer::Busy { retry_after } => ProbeOutcome::Busy { retry_after },
            _ => ProbeOutcome::Unsupported,
        },
        Err(_) => ProbeOutcome::Lost,
    }
}

async fn sleep_until(wake: Option<Instant>) {
    match wake {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// The local address the system would send from to reach `server` (none when it has no
/// route): a new one means a new network. Connecting a UDP socket sends nothing.
fn local_route(server: SocketAddr) -> Option<IpAddr> {
    let any: SocketAddr = match server {
        SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(any).ok()?;
    socket.connect(server).ok()?;
    socket.local_addr().ok().map(|a| a.ip())
}
