//! Session events to pull: [`Context::events`](crate::Context::events) hands out an [`Events`]
//! receiver, a [`Stream`] of [`Event`]s, beside the handlers the application registers.
//!
//! Both are fed from the same place (the runtime's dispatch of each protocol event, `dispatch::react`), so a
//! callback and every receiver see the same events in the same order.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use futures_core::Stream;
use tokio::sync::{broadcast, watch};

use crate::proto::adaptive::AdaptiveEvent;
use crate::proto::error::NackReason;
use crate::proto::PeerPing;
use crate::runtime::session::{Session, SessionId};

/// How many events a receiver may fall behind before it loses the oldest ones (and is told so
/// with [`Lagged`]).
pub const EVENTS_CAPACITY: usize = 1024;

/// One thing that happened to a session.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Event {
    /// The session it happened to (a handle: read its state, statistics, or ping it).
    pub session: Session,
    /// What happened.
    pub kind: EventKind,
}

/// What happened to a session, in the order it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EventKind {
    /// The session is ready (UDP: created; DTLS / TLS: handshake done; TCP / TLS: peer's CSM).
    Established,
    /// The peer pinged us; `answered` is false when the ping handler suppressed the answer.
    PingReceived {
        /// The ping as it arrived.
        ping: PeerPing,
        /// Whether the protocol's answer (RST or 7.03 Pong) was sent.
        answered: bool,
    },
    /// We sent a ping (keepalive, or [`Session::ping`]), or retransmitted one.
    PingSent {
        /// True for a retransmission (UDP / DTLS) of a ping already sent.
        retransmission: bool,
    },
    /// One of our pings was answered after `rtt`.
    Pong {
        /// The round-trip time of the answered transmission.
        rtt: Duration,
    },
    /// A ping went unanswered without failing the session yet (`max_unanswered` above 1; over
    /// TCP / TLS also the last one, just before [`EventKind::Failed`]).
    PingUnanswered {
        /// Consecutive unanswered pings so far.
        count: u32,
    },
    /// The session ended gracefully; it has left the context's table.
    Closed,
    /// The session failed for this reason (the nack handler's); it has left the table.
    Failed(NackReason),
    /// The session's adaptive keepalive interval ([`AdaptiveKeepalive`](crate::AdaptiveKeepalive))
    /// probed, found, changed its interval or fell back.
    Adaptive(AdaptiveEvent),
    /// A [`ReconnectingSession`](crate::ReconnectingSession)'s session (this one) ended, and
    /// it connects again after `delay`: attempt `attempt`, from 1, of this outage.
    Reconnecting {
        /// The attempt about to be made, from 1.
        attempt: u32,
        /// The wait before it, drawn from the policy's backoff.
        delay: Duration,
    },
    /// A [`ReconnectingSession`](crate::ReconnectingSession) connected again: this session
    /// replaces `previous`, and `restored` observations were registered on it again.
    Reconnected {
        /// The session that had ended.
        previous: SessionId,
        /// Observations registered again on this session.
        restored: usize,
    },
    /// A [`ReconnectingSession`](crate::ReconnectingSession) stopped trying after `attempts`
    /// failed attempts (its policy's `max_attempts`); this is the session that ended.
    ReconnectGaveUp {
        /// Attempts made.
        attempts: u32,
    },
}

impl EventKind {
    /// True for the last event of a session ([`EventKind::Closed`] or [`EventKind::Failed`]).
    pub fn is_terminal(&self) -> bool {
        matches!(self, EventKind::Closed | EventKind::Failed(_))
    }
}

impl fmt::Display for EventKind {
    /// A line for people: `established`, `ping received, answered`, `ping sent`,
    /// `pong in 0.21 ms`, `ping unanswered`, `closed`, `failed: too many retries`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EventKind::Established => f.write_str("established"),
            EventKind::PingReceived { answered: true, .. } => {
                f.write_str("ping received, answered")
            }
            EventKind::PingReceived {
                answered: false, ..
            } => f.write_str("ping received, not answered"),
            EventKind::PingSent {
                retransmission: false,
            } => f.write_str("ping sent"),
            EventKind::PingSent {
                retransmission: true,
            } => f.write_str("ping retransmitted"),
            EventKind::Pong { rtt } => write!(f, "pong in {:.2} ms", rtt.as_secs_f64() * 1e3),
            EventKind::PingUnanswered { count: 1 } => f.write_str("ping unanswered"),
            EventKind::PingUnanswered { count } => {
                write!(f, "ping unanswered ({count} in a row)")
            }
            EventKind::Closed => f.write_str("closed"),
            EventKind::Failed(reason) => write!(f, "failed: {reason}"),
            EventKind::Adaptive(event) => write!(f, "adaptive keepalive: {event}"),
            EventKind::Reconnecting { attempt, delay } => write!(
                f,
                "reconnecting in {:.2} s (attempt {attempt})",
                delay.as_secs_f64()
            ),
            EventKind::Reconnected { previous, restored } => write!(
                f,
                "reconnected, replacing {previous} ({restored} observations restored)"
            ),
            EventKind::ReconnectGaveUp { attempts } => {
                write!(f, "reconnect gave up after {attempts} attempts")
            }
        }
    }
}

impl fmt::Display for Event {
    /// `#3 tcp client 127.0.0.1:5683: pong in 0.21 ms`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.session, self.kind)
    }
}

/// A receiver fell behind by this many events, which it will never see: the channel keeps the
/// newest [`EVENTS_CAPACITY`] and drops the oldest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("lagged behind: {0} events dropped")]
pub struct Lagged(pub u64);

/// The session events of a context, from the moment [`Context::events`](crate::Context::events)
/// was called: a [`Stream`] of `Result<Event, Lagged>`, also read with [`Events::recv`].
///
/// Every receiver sees every event (several may exist at once). A receiver that falls more than
/// [`EVENTS_CAPACITY`] events behind loses the oldest: its next item is `Err(Lagged(n))` with the
/// number lost, then it goes on with the oldest event still held. Nothing is dropped silently,
/// and a slow receiver never slows the sessions down (events are handed out, never waited for).
///
/// The stream ends (`None`) once the context's [`shutdown`](crate::Context::shutdown) finished
/// and every event before it was read, or when the context itself is gone.
pub struct Events {
    state: State,
    /// Shared with the bus: while it is above 0, events are made and sent.
    subscribers: Arc<AtomicUsize>,
}

type Waiting = Pin<Box<dyn Future<Output = (Option<Result<Event, Lagged>>, Receivers)> + Send>>;

enum State {
    Idle(Receivers),
    Waiting(Waiting),
    Ended,
}

struct Receivers {
    events: broadcast::Receiver<Event>,
    finished: watch::Receiver<bool>,
}

/// What [`Receivers::try_next`] found.
enum Polled {
    Item(Option<Result<Event, Lagged>>),
    Empty,
}

impl Receivers {
    fn try_next(&mut self) -> Polled {
        match self.events.try_recv() {
            Ok(event) => Polled::Item(Some(Ok(event))),
            Err(broadcast::error::TryRecvError::Lagged(n)) => Polled::Item(Some(Err(Lagged(n)))),
            Err(broadcast::error::TryRecvError::Closed) => Polled::Item(None),
            Err(broadcast::error::TryRecvError::Empty) if *self.finished.borrow() => {
                Polled::Item(None)
            }
            Err(broadcast::error::TryRecvError::Empty) => Polled::Empty,
        }
    }

    async fn wait(mut self) -> (Option<Result<Event, Lagged>>, Receivers) {
        let mut finished_gone = false;
        loop {
            if let Polled::Item(item) = self.try_next() {
                return (item, self);
            }
            tokio::select! {
                received = self.events.recv() => {
                    let item = match received {
                        Ok(event) => Some(Ok(event)),
                        Err(broadcast::error::RecvError::Lagged(n)) => Some(Err(Lagged(n))),
                        Err(broadcast::error::RecvError::Closed) => None,
                    };
                    return (item, self);
                }
                changed = self.finished.changed(), if !finished_gone => {
                    // Gone with the context: the events channel closes with it.
                    finished_gone = changed.is_err();
                }
            }
        }
    }
}

impl Events {
    /// The next event; `Err(Lagged(n))` when this receiver fell behind and lost `n` events;
    /// `None` once the stream ended (see [`Events`]).
    pub async fn recv(&mut self) -> Option<Result<Event, Lagged>> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }

    /// The next event already received, without waiting: `None` when there is none now (or the
    /// stream ended).
    pub fn try_recv(&mut self) -> Option<Result<Event, Lagged>> {
        match &mut self.state {
            State::Idle(receivers) => match receivers.try_next() {
                Polled::Item(item) => item,
                Polled::Empty => None,
            },
            // A `recv` left waiting (its future dropped): its receiver is inside that future.
            State::Waiting(_) => {
                let waker = std::task::Waker::noop();
                match Pin::new(&mut *self).poll_next(&mut TaskContext::from_waker(waker)) {
                    Poll::Ready(item) => item,
                    Poll::Pending => None,
                }
            }
            State::Ended => None,
        }
    }
}

impl Stream for Events {
    type Item = Result<Event, Lagged>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        loop {
            match std::mem::replace(&mut self.state, State::Ended) {
                State::Idle(mut receivers) => match receivers.try_next() {
                    Polled::Item(item) => {
                        if item.is_some() {
                            self.state = State::Idle(receivers);
                        }
                        return Poll::Ready(item);
                    }
                    // Only a receiver with nothing to read pays for a boxed wait.
                    Polled::Empty => self.state = State::Waiting(Box::pin(receivers.wait())),
                },
                State::Waiting(mut waiting) => match waiting.as_mut().poll(cx) {
                    Poll::Ready((item, receivers)) => {
                        if item.is_some() {
                            self.state = State::Idle(receivers);
                        }
                        return Poll::Ready(item);
                    }
                    Poll::Pending => {
                        self.state = State::Waiting(waiting);
                        return Poll::Pending;
                    }
                },
                State::Ended => return Poll::Ready(None),
            }
        }
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        self.subscribers.fetch_sub(1, Ordering::Relaxed);
    }
}

impl fmt::Debug for Events {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Idle(_) => "idle",
            State::Waiting(_) => "waiting",
            State::Ended => "ended",
        };
        f.debug_struct("Events").field("state", &state).finish()
    }
}

/// Where a context's events go: to every [`Events`] receiver, when there is one.
pub(crate) struct EventBus {
    /// Made by the first [`EventBus::subscribe`]: a context nobody pulls from holds no buffer.
    sender: OnceLock<broadcast::Sender<Event>>,
    subscribers: Arc<AtomicUsize>,
    finished: watch::Sender<bool>,
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus {
            sender: OnceLock::new(),
            subscribers: Arc::new(AtomicUsize::new(0)),
            finished: watch::channel(false).0,
        }
    }
}

impl EventBus {
    /// A new receiver of every event from now on.
    pub(crate) fn subscribe(&self) -> Events {
        let sender = self
            .sender
            .get_or_init(|| broadcast::channel(EVENTS_CAPACITY).0);
        let receivers = Receivers {
            events: sender.subscribe(),
            finished: self.finished.subscribe(),
        };
        self.subscribers.fetch_add(1, Ordering::Relaxed);
        Events {
            state: State::Idle(receivers),
            subscribers: Arc::clone(&self.subscribers),
        }
    }

    /// Hands the event `kind()` makes to every receiver. With none (the usual case for a
    /// callback-only application) this is one relaxed load: the event is not even built.
    pub(crate) fn emit(&self, session: &Session, kind: impl FnOnce() -> EventKind) {
        if self.subscribers.load(Ordering::Relaxed) == 0 {
            return;
        }
        if let Some(sender) = self.sender.get() {
            // An error only means that every receiver was dropped meanwhile.
            let _ = sender.send(Event {
                session: session.clone(),
                kind: kind(),
            });
        }
    }

    /// The context shut down: receivers end once they have read what was sent before.
    pub(crate) fn finish(&self) {
        self.finished.send_replace(true);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::runtime::session::{EndpointLink, Role, SessionId, Transport};

    fn session() -> Session {
        let addr = "127.0.0.1:5683".parse().unwrap();
        Session::new(
            SessionId(1),
            addr,
            Transport::Udp,
            Role::Client,
            EndpointLink::unserved(addr),
            0,
            Instant::now(),
        )
    }

    #[test]
    fn without_a_receiver_no_event_is_built_and_no_channel_exists() {
        let bus = EventBus::default();
        bus.emit(&session(), || panic!("built an event nobody receives"));
        assert!(bus.sender.get().is_none());
        drop(bus.subscribe());
        // The receiver is gone again: back to one load.
        bus.emit(&session(), || panic!("built an event nobody receives"));
    }

    #[test]
    fn every_receiver_gets_every_event_and_ends_after_finish() {
        let bus = EventBus::default();
        let mut a = bus.subscribe();
        let mut b = bus.subscribe();
        let s = session();
        bus.emit(&s, || EventKind::Established);
        bus.emit(&s, || EventKind::Pong {
            rtt: Duration::from_micros(1500),
        });
        bus.finish();
        for events in [&mut a, &mut b] {
            let kinds: Vec<EventKind> = std::iter::from_fn(|| events.try_recv())
                .map(|item| item.unwrap().kind)
                .collect();
            assert_eq!(
                kinds,
                [
                    EventKind::Established,
                    EventKind::Pong {
                        rtt: Duration::from_micros(1500)
                    }
                ]
            );
            assert!(events.try_recv().is_none());
        }
        // Finished and drained: the stream has ended.
        let waker = std::task::Waker::noop();
        let polled = Pin::new(&mut a).poll_next(&mut TaskContext::from_waker(waker));
        assert!(matches!(polled, Poll::Ready(None)));
    }

    #[test]
    fn kinds_read_as_words() {
        let words = [
            (EventKind::Established, "established"),
            (
                EventKind::PingReceived {
                    ping: PeerPing::Datagram { message_id: 7 },
                    answered: false,
                },
                "ping received, not answered",
            ),
            (
                EventKind::PingSent {
                    retransmission: true,
                },
                "ping retransmitted",
            ),
            (
                EventKind::Pong {
                    rtt: Duration::from_micros(210),
                },
                "pong in 0.21 ms",
            ),
            (
                EventKind::PingUnanswered { count: 2 },
                "ping unanswered (2 in a row)",
            ),
            (
                EventKind::Failed(NackReason::TooManyRetries),
                "failed: too many retries",
            ),
        ];
        for (kind, text) in words {
            assert_eq!(kind.to_string(), text);
        }
        assert_eq!(Lagged(3).to_string(), "lagged behind: 3 events dropped");
    }
}
