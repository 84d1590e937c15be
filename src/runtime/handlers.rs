//! Application callbacks: ping, pong, nack and session events, and their dispatch.
//!
//! Handlers run on the session's driver task, so they should return quickly; hand long work to
//! another task (or pull the same events from [`Context::events`](crate::Context::events)).
//! Each context has one handler of each kind: registering another replaces it.
//!
//! Every protocol event is dispatched here, once: to its callback, then to the
//! [`events`](crate::runtime::events) receivers, so both see the same sequence.

use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::proto::error::NackReason;
use crate::proto::PeerPing;
use crate::runtime::events::{EventBus, EventKind, Events};
use crate::runtime::session::Session;

/// What the ping handler wants done with a peer's ping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PingDecision {
    /// Send the protocol's answer (RST or 7.03 Pong). The default.
    #[default]
    Answer,
    /// Send nothing: to the peer we look dead (tests and fault injection use this).
    Suppress,
}

/// A change in a session's life, for the event handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionEvent {
    /// The session is ready (UDP: created; DTLS / TLS: handshake done; TCP / TLS: peer's CSM).
    Established,
    /// The session ended gracefully: closed by us, by the peer with nothing of ours outstanding
    /// (its 7.04 Release or the end of its connection), or forgotten after its idle timeout. Not
    /// a failure: no nack, counted in [`SessionCounts::closed`](crate::SessionCounts::closed).
    Closed,
    /// We sent a ping to the peer (keepalive, or `Session::ping`), or retransmitted one.
    PingSent {
        /// True for a retransmission (UDP / DTLS) of a ping already sent.
        retransmission: bool,
    },
    /// A ping went unanswered (over UDP / DTLS after all its retransmissions); the session fails
    /// when `count` reaches `max_unanswered`.
    PingUnanswered {
        /// Consecutive unanswered pings so far.
        count: u32,
    },
}

impl fmt::Display for SessionEvent {
    /// A line for people: `established`, `closed`, `ping sent`, `ping retransmitted`,
    /// `ping unanswered (2 in a row)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionEvent::Established => f.write_str("established"),
            SessionEvent::Closed => f.write_str("closed"),
            SessionEvent::PingSent {
                retransmission: false,
            } => f.write_str("ping sent"),
            SessionEvent::PingSent {
                retransmission: true,
            } => f.write_str("ping retransmitted"),
            SessionEvent::PingUnanswered { count: 1 } => f.write_str("ping unanswered"),
            SessionEvent::PingUnanswered { count } => {
                write!(f, "ping unanswered ({count} in a row)")
            }
        }
    }
}

/// Called for each ping from the peer, before the automatic answer.
pub type PingHandler = Arc<dyn Fn(&Session, &PeerPing) -> PingDecision + Send + Sync>;
/// Called when one of our pings is answered, with its round-trip time.
pub type PongHandler = Arc<dyn Fn(&Session, Duration) + Send + Sync>;
/// Called once when a session fails, before it is removed from the table.
pub type NackHandler = Arc<dyn Fn(&Session, NackReason) + Send + Sync>;
/// Called for other session events.
pub type EventHandler = Arc<dyn Fn(&Session, SessionEvent) + Send + Sync>;

/// The registered handlers of a context, and its events' receivers.
#[derive(Default)]
pub(crate) struct Handlers {
    ping: RwLock<Option<PingHandler>>,
    pong: RwLock<Option<PongHandler>>,
    nack: RwLock<Option<NackHandler>>,
    event: RwLock<Option<EventHandler>>,
    events: EventBus,
}

fn read<T: Clone>(slot: &RwLock<Option<T>>) -> Option<T> {
    slot.read().unwrap_or_else(|p| p.into_inner()).clone()
}

fn write<T>(slot: &RwLock<Option<T>>, value: T) {
    *slot.write().unwrap_or_else(|p| p.into_inner()) = Some(value);
}

impl Handlers {
    pub(crate) fn set_ping(&self, handler: PingHandler) {
        write(&self.ping, handler);
    }

    pub(crate) fn set_pong(&self, handler: PongHandler) {
        write(&self.pong, handler);
    }

    pub(crate) fn set_nack(&self, handler: NackHandler) {
        write(&self.nack, handler);
    }

    pub(crate) fn set_event(&self, handler: EventHandler) {
        write(&self.event, handler);
    }

    /// A new receiver of every event from now on.
    pub(crate) fn subscribe(&self) -> Events {
        self.events.subscribe()
    }

    /// The context shut down: event receivers end after what they hold.
    /// Hands `kind` to the event receivers, with no handler of its own (reconnection).
    pub(crate) fn emit(&self, session: &Session, kind: EventKind) {
        self.events.emit(session, || kind);
    }

    pub(crate) fn finish(&self) {
        self.events.finish();
    }

    /// A peer's ping: the ping handler decides, `answer` queues the protocol's answer when it
    /// said so (false when the session is past answering), then the event tells whether the
    /// ping was answered.
    /// The peer's ping: the handler decides, `answer` queues the answer; true when it was.
    pub(crate) fn ping(
        &self,
        session: &Session,
        ping: &PeerPing,
        answer: impl FnOnce() -> bool,
    ) -> bool {
        tracing::debug!(session = %session, ?ping, "ping received");
        let decision = match read(&self.ping) {
            Some(handler) => handler(session, ping),
            None => PingDecision::Answer,
        };
        let answered = decision == PingDecision::Answer && answer();
        self.events.emit(session, || EventKind::PingReceived {
            ping: ping.clone(),
            answered,
        });
        answered
    }

    pub(crate) fn pong(&self, session: &Session, rtt: Duration) {
        tracing::debug!(session = %session, rtt_ms = rtt.as_secs_f64() * 1e3, "pong received");
        if let Some(handler) = read(&self.pong) {
            handler(session, rtt);
        }
        self.events.emit(session, || EventKind::Pong { rtt });
    }

    /// A failed session: the nack handler runs, then `unregister` takes the session out of the
    /// table, then the event goes out (so its receivers never find the session still listed).
    pub(crate) fn failed(&self, session: &Session, reason: NackReason, unregister: impl FnOnce()) {
        tracing::warn!(session = %session, %reason, "session failed");
        if let Some(handler) = read(&self.nack) {
            handler(session, reason);
        }
        unregister();
        self.events.emit(session, || EventKind::Failed(reason));
    }

    /// An event of the session's adaptive keepalive: to the event receivers (and tracing).
    pub(crate) fn adaptive(&self, session: &Session, event: crate::proto::adaptive::AdaptiveEvent) {
        tracing::debug!(session = %session, %event, "adaptive keepalive");
        self.events.emit(session, || EventKind::Adaptive(event));
    }

    /// Any other session event; for [`SessionEvent::Closed`] `unregister` runs between the
    /// handler and the event, as for [`Handlers::failed`].
    pub(crate) fn event(&self, session: &Session, event: SessionEvent, unregister: impl FnOnce()) {
        tracing::debug!(session = %session, ?event, "session event");
        if let Some(handler) = read(&self.event) {
            handler(session, event);
        }
        unregister();
        self.events.emit(session, || EventKind::from(event));
    }
}

impl From<SessionEvent> for EventKind {
    fn from(event: SessionEvent) -> EventKind {
        match event {
            SessionEvent::Established => EventKind::Established,
            SessionEvent::Closed => EventKind::Closed,
            SessionEvent::PingSent { retransmission } => EventKind::PingSent { retransmission },
            SessionEvent::PingUnanswered { count } => EventKind::PingUnanswered { count },
        }
    }
}
