//! The live sessions of a context, and the counters of those that ended.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::proto::keepalive::Stats;
use crate::runtime::metrics::{SessionGroup, TransportMetrics, TRANSPORTS};
use crate::runtime::session::{lock, Role, Session, SessionId, SessionState, Transport};

/// How many ended sessions the listing keeps ([`Context::session_listing`](crate::Context::session_listing)).
pub const RECENTLY_ENDED: usize = 1024;

/// How many sessions a context has had, and how they ended: `opened == live + closed + failed`
/// at every instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionCounts {
    /// Sessions created, on every endpoint and connection (a (D)TLS handshake that failed
    /// counts as a session that failed at once, as the nack handler sees it).
    pub opened: u64,
    /// Sessions in the table now ([`Context::sessions`](crate::Context::sessions)).
    pub live: u64,
    /// Sessions that ended normally: closed by us, by the peer with nothing of ours
    /// outstanding (a 7.04 Release or the end of its connection), or forgotten when idle.
    pub closed: u64,
    /// Sessions that failed: the nack handler ran for each, with its reason.
    pub failed: u64,
}

/// One session as an operator's listing shows it ([`Context::session_listing`](crate::Context::session_listing)):
/// a live session, or one that ended recently.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct SessionInfo {
    /// The context-unique id.
    pub id: SessionId,
    /// The peer's address.
    pub peer: SocketAddr,
    /// Our address for the session.
    pub local: SocketAddr,
    /// The transport.
    pub transport: Transport,
    /// Client (we connected) or server (the peer did).
    pub role: Role,
    /// Its state; `Closed` or `Failed` (with the nack reason) for one that ended.
    pub state: SessionState,
    /// How long nothing has been received from the peer (for an ended session: since the
    /// last receipt, counted up to now).
    pub idle: Duration,
    /// How long ago it was created.
    pub age: Duration,
    /// Its counters and RTTs.
    pub stats: Stats,
    /// How many observations of our resources the peer holds on it (0 once ended).
    pub observations: usize,
}

/// An ended session as the listing keeps it.
struct Ended {
    info: SessionInfo,
    /// When it was listed as ended, and its last receipt, to age `idle` and `age` from.
    at: Instant,
}

/// A session as the registry's set holds it: found by its id (a set of handles costs one word
/// per session, a map from id to handle two).
struct ById(Session);

impl PartialEq for ById {
    fn eq(&self, other: &Self) -> bool {
        self.0.id() == other.0.id()
    }
}

impl Eq for ById {}

impl std::hash::Hash for ById {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // As the id hashes: `Borrow` requires it.
        self.0.id().hash(state);
    }
}

impl std::borrow::Borrow<SessionId> for ById {
    fn borrow(&self) -> &SessionId {
        &self.0.shared.id
    }
}

/// Every live session of a context by id, and the totals of those that ended.
#[derive(Default)]
pub(crate) struct Registry {
    sessions: Mutex<HashSet<ById>>,
    /// The counters of the sessions that ended, per transport (see `TRANSPORTS`).
    ended: Mutex<[Stats; 4]>,
    /// The most recent ended sessions, newest last.
    recent: Mutex<VecDeque<Ended>>,
    /// Sessions registered, and those that ended closed or failed (see [`SessionCounts`]), per
    /// transport.
    opened: [AtomicU64; 4],
    closed: [AtomicU64; 4],
    failed: [AtomicU64; 4],
    /// The latest RTT sample of any session, in nanoseconds (0: none yet).
    last_rtt_nanos: AtomicU64,
}

impl Registry {
    /// Adds a new session.
    pub(crate) fn insert(&self, session: &Session) {
        if lock(&self.sessions).insert(ById(session.clone())) {
            self.opened[index(session.transport())].fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Takes an ended session out, keeping its counters in the totals. False when it was not
    /// (or no longer) in.
    pub(crate) fn remove(&self, session: &Session, state: SessionState) -> bool {
        let mut sessions = lock(&self.sessions);
        if !sessions.remove(&session.id()) {
            return false;
        }
        // Recorded before the pings asked for are dropped, so that `Session::ping` counts
        // none after that.
        session.record_state(state);
        session.drop_requested_pings();
        let mut stats = session.stats();
        // A session fails once or not at all, whichever path ended it.
        stats.failures = u64::from(matches!(state, SessionState::Failed(_)));
        let t = index(session.transport());
        // Still under the table's lock (see `stats`).
        lock(&self.ended)[t].accumulate(&stats);
        let ended = match state {
            SessionState::Failed(_) => &self.failed[t],
            _ => &self.closed[t],
        };
        ended.fetch_add(1, Ordering::AcqRel);
        drop(sessions);
        let now = Instant::now();
        let mut info = info_of(session, now, 0);
        info.state = state;
        info.stats = stats;
        let mut recent = lock(&self.recent);
        if recent.len() == RECENTLY_ENDED {
            recent.pop_front();
        }
        recent.push_back(Ended { info, at: now });
        true
    }

    /// Remembers the latest RTT sample of any session.
    pub(crate) fn note_rtt(&self, rtt: Duration) {
        let nanos = rtt.as_nanos().clamp(1, u128::from(u64::MAX)) as u64;
        self.last_rtt_nanos.store(nanos, Ordering::Relaxed);
    }

    /// Calls `f` for every live session, under the table's lock.
    pub(crate) fn for_each(&self, f: impl FnMut(&Session)) {
        lock(&self.sessions).iter().map(|s| &s.0).for_each(f);
    }

    /// How many sessions are live.
    pub(crate) fn len(&self) -> usize {
        lock(&self.sessions).len()
    }

    /// The live sessions, ordered by id.
    pub(crate) fn sessions(&self) -> Vec<Session> {
        let mut sessions: Vec<Session> = lock(&self.sessions).iter().map(|s| s.0.clone()).collect();
        sessions.sort_by_key(Session::id);
        sessions
    }

    /// Counters summed over every session, live or ended (see `Context::stats`).
    pub(crate) fn stats(&self) -> Stats {
        // The table's lock is held while `ended` is read: `remove` moves a session's counters
        // from the one to the other under it, so none is missed or counted twice.
        let mut total = Stats::default();
        for stats in self.stats_by_transport() {
            total.accumulate(&stats);
        }
        let last = self.last_rtt_nanos.load(Ordering::Relaxed);
        if last != 0 {
            total.rtt.last = Some(Duration::from_nanos(last));
        }
        total
    }

    /// Counters summed over every session, live or ended, per transport (in `TRANSPORTS`
    /// order).
    pub(crate) fn stats_by_transport(&self) -> [Stats; 4] {
        // The table's lock is held while `ended` is read: `remove` moves a session's counters
        // from the one to the other under it, so none is missed or counted twice.
        let sessions = lock(&self.sessions);
        let mut totals = *lock(&self.ended);
        for ById(session) in sessions.iter() {
            totals[index(session.transport())].accumulate(&session.stats());
        }
        totals
    }

    /// Fills in what the registry knows of each transport's figures (sessions opened and
    /// ended, the ping counters of the sessions' machines), and returns the live sessions
    /// grouped by transport, role and state.
    pub(crate) fn fill_metrics(&self, transports: &mut [TransportMetrics]) -> Vec<SessionGroup> {
        let stats = self.stats_by_transport();
        let mut groups = Vec::with_capacity(16);
        for transport in TRANSPORTS {
            for role in [Role::Client, Role::Server] {
                for state in [SessionState::Connecting, SessionState::Established] {
                    groups.push(SessionGroup {
                        transport,
                        role,
                        state,
                        count: 0,
                    });
                }
            }
        }
        self.for_each(|session| {
            let state = session.state();
            let group = groups.iter_mut().find(|g| {
                g.transport == session.transport() && g.role == session.role() && g.state == state
            });
            if let Some(group) = group {
                group.count += 1;
            }
        });
        for (t, figures) in transports.iter_mut().enumerate() {
            let counts = self.counts_of(t);
            figures.sessions_opened = counts.opened;
            figures.sessions_closed = counts.closed;
            figures.sessions_failed = counts.failed;
            figures.pings_sent = stats[t].pings_sent;
            figures.ping_retransmissions = stats[t].retransmissions;
            figures.pongs = stats[t].pongs;
            figures.peer_pings = stats[t].pings_received;
        }
        groups
    }

    /// The live sessions by id, then the ended ones kept, newest first. `observations` says
    /// how many observations each live session holds.
    pub(crate) fn listing(&self, observations: &HashMap<SessionId, usize>) -> Vec<SessionInfo> {
        let now = Instant::now();
        let mut live: Vec<SessionInfo> = lock(&self.sessions)
            .iter()
            .map(|ById(s)| info_of(s, now, observations.get(&s.id()).copied().unwrap_or(0)))
            .collect();
        live.sort_by_key(|info| info.id);
        let recent = lock(&self.recent);
        live.extend(recent.iter().rev().map(|ended| {
            let mut info = ended.info.clone();
            let since = now.saturating_duration_since(ended.at);
            info.idle += since;
            info.age += since;
            info
        }));
        live
    }

    /// How many sessions there have been and how they ended.
    pub(crate) fn counts(&self) -> SessionCounts {
        let mut total = SessionCounts::default();
        for t in 0..TRANSPORTS.len() {
            let counts = self.counts_of(t);
            total.opened += counts.opened;
            total.live += counts.live;
            total.closed += counts.closed;
            total.failed += counts.failed;
        }
        total
    }

    /// [`Registry::counts`] of one transport.
    fn counts_of(&self, t: usize) -> SessionCounts {
        // Ended ones first: every one of them was opened before, so `live` never goes negative.
        let closed = self.closed[t].load(Ordering::Acquire);
        let failed = self.failed[t].load(Ordering::Acquire);
        let opened = self.opened[t].load(Ordering::Acquire);
        SessionCounts {
            opened,
            live: opened.saturating_sub(closed + failed),
            closed,
            failed,
        }
    }
}

/// The index of `transport` in `TRANSPORTS`.
fn index(transport: Transport) -> usize {
    TRANSPORTS.iter().position(|t| *t == transport).unwrap_or(0)
}

/// A live session as the listing shows it.
fn info_of(session: &Session, now: Instant, observations: usize) -> SessionInfo {
    SessionInfo {
        id: session.id(),
        peer: session.peer(),
        local: session.local_addr(),
        transport: session.transport(),
        role: session.role(),
        state: session.state(),
        idle: now.saturating_duration_since(session.last_receipt()),
        age: now.saturating_duration_since(session.created()),
        stats: session.stats(),
        observations,
    }
}
