//! The live sessions of a context, and the counters of those that ended.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::proto::keepalive::Stats;
use crate::runtime::session::{lock, Session, SessionId, SessionState};

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

/// Every live session of a context by id, and the totals of those that ended.
#[derive(Default)]
pub(crate) struct Registry {
    sessions: Mutex<HashMap<SessionId, Session>>,
    ended: Mutex<Stats>,
    /// Sessions registered, and those that ended closed or failed (see [`SessionCounts`]).
    opened: AtomicU64,
    closed: AtomicU64,
    failed: AtomicU64,
    /// The latest RTT sample of any session, in nanoseconds (0: none yet).
    last_rtt_nanos: AtomicU64,
}

impl Registry {
    /// Adds a new session.
    pub(crate) fn insert(&self, session: &Session) {
        if lock(&self.sessions)
            .insert(session.id(), session.clone())
            .is_none()
        {
            self.opened.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Takes an ended session out, keeping its counters in the totals. False when it was not
    /// (or no longer) in.
    pub(crate) fn remove(&self, session: &Session, state: SessionState) -> bool {
        let mut sessions = lock(&self.sessions);
        if sessions.remove(&session.id()).is_none() {
            return false;
        }
        // Recorded before the pings asked for are dropped, so that `Session::ping` counts
        // none after that.
        session.record_state(state);
        session.drop_requested_pings();
        let mut stats = session.stats();
        // A session fails once or not at all, whichever path ended it.
        stats.failures = u64::from(matches!(state, SessionState::Failed(_)));
        // Still under the table's lock (see `stats`).
        lock(&self.ended).accumulate(&stats);
        let ended = match state {
            SessionState::Failed(_) => &self.failed,
            _ => &self.closed,
        };
        ended.fetch_add(1, Ordering::AcqRel);
        true
    }

    /// Remembers the latest RTT sample of any session.
    pub(crate) fn note_rtt(&self, rtt: Duration) {
        let nanos = rtt.as_nanos().clamp(1, u128::from(u64::MAX)) as u64;
        self.last_rtt_nanos.store(nanos, Ordering::Relaxed);
    }

    /// Calls `f` for every live session, under the table's lock.
    pub(crate) fn for_each(&self, f: impl FnMut(&Session)) {
        lock(&self.sessions).values().for_each(f);
    }

    /// How many sessions are live.
    pub(crate) fn len(&self) -> usize {
        lock(&self.sessions).len()
    }

    /// The live sessions, ordered by id.
    pub(crate) fn sessions(&self) -> Vec<Session> {
        let mut sessions: Vec<Session> = lock(&self.sessions).values().cloned().collect();
        sessions.sort_by_key(Session::id);
        sessions
    }

    /// Counters summed over every session, live or ended (see `Context::stats`).
    pub(crate) fn stats(&self) -> Stats {
        // The table's lock is held while `ended` is read: `remove` moves a session's counters
        // from the one to the other under it, so none is missed or counted twice.
        let sessions = lock(&self.sessions);
        let mut total = *lock(&self.ended);
        for session in sessions.values() {
            total.accumulate(&session.stats());
        }
        drop(sessions);
        let last = self.last_rtt_nanos.load(Ordering::Relaxed);
        if last != 0 {
            total.rtt.last = Some(Duration::from_nanos(last));
        }
        total
    }

    /// How many sessions there have been and how they ended.
    pub(crate) fn counts(&self) -> SessionCounts {
        // Ended ones first: every one of them was opened before, so `live` never goes negative.
        let closed = self.closed.load(Ordering::Acquire);
        let failed = self.failed.load(Ordering::Acquire);
        let opened = self.opened.load(Ordering::Acquire);
        SessionCounts {
            opened,
            live: opened.saturating_sub(closed + failed),
            closed,
            failed,
        }
    }
}
