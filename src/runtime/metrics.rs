//! The context's operational figures, counted where each thing happens: the dispatch (pongs and
//! their RTT, unanswered pings, answered peer pings, nacks, requests and their responses), the
//! registry (sessions opened and ended) and the drivers (bytes, handshakes, evictions and
//! refusals at the session limit). Every counter is a relaxed atomic: nothing here takes a lock
//! on the way of a ping. [`Metrics`] is their snapshot, the figures an application reads;
//! `context/prometheus.rs` writes the same snapshot as Prometheus metrics.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::proto::error::{Error, NackReason};
use crate::proto::message::{Method, Status};
use crate::runtime::session::{Role, SessionState, Transport};

/// The four transports, in the order of every per-transport array.
pub(crate) const TRANSPORTS: [Transport; 4] = [
    Transport::Udp,
    Transport::Dtls,
    Transport::Tcp,
    Transport::Tls,
];

/// Every nack reason, in the order of the per-reason arrays.
const NACK_REASONS: [NackReason; 6] = [
    NackReason::TooManyRetries,
    NackReason::NotDeliverable,
    NackReason::Rst,
    NackReason::TlsFailed,
    NackReason::IcmpError,
    NackReason::ProtocolError,
];

/// Every handshake failure cause, in the order of the per-cause arrays.
const HANDSHAKE_FAILURES: [HandshakeFailure; 2] =
    [HandshakeFailure::Timeout, HandshakeFailure::Rejected];

/// The request methods counted apart; any other method counts as `other`.
const METHODS: [&str; 8] = [
    "GET", "POST", "PUT", "DELETE", "FETCH", "PATCH", "iPATCH", "other",
];

/// Response classes: 2.xx, 4.xx, 5.xx (any other class a handler might make counts as `other`).
const CLASSES: [&str; 4] = ["2.xx", "4.xx", "5.xx", "other"];

/// Upper bounds of the RTT histogram's buckets, in seconds (and +Inf after the last): from half
/// a millisecond on loopback to the 93 s a UDP ping may take to be given up.
pub const RTT_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    100.0,
];

/// Why a (D)TLS handshake failed, as the metrics count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HandshakeFailure {
    /// It did not complete within the connect timeout.
    Timeout,
    /// The peer or we refused it: a fatal alert, credentials that did not match, an unknown CA.
    Rejected,
}

impl HandshakeFailure {
    /// The cause of a handshake that failed with `error`.
    pub(crate) fn of(error: &Error) -> HandshakeFailure {
        match error {
            Error::Timeout(_) => HandshakeFailure::Timeout,
            // The handshake layer says "timed out" in its Error::Tls for a deadline that passed.
            Error::Tls(message) if message.contains("timed out") => HandshakeFailure::Timeout,
            _ => HandshakeFailure::Rejected,
        }
    }

    /// The label value: `timeout` or `rejected`.
    pub fn as_str(self) -> &'static str {
        match self {
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::Rejected => "rejected",
        }
    }
}

/// What a session-limited endpoint did with a newcomer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AtLimit {
    /// An unproven session made room for it (UDP).
    Evicted,
    /// It was refused: its datagram dropped, its connection closed.
    Refused,
}

fn transport_index(transport: Transport) -> usize {
    match transport {
        Transport::Udp => 0,
        Transport::Dtls => 1,
        Transport::Tcp => 2,
        Transport::Tls => 3,
    }
}

fn nack_index(reason: NackReason) -> usize {
    NACK_REASONS.iter().position(|r| *r == reason).unwrap_or(0)
}

fn method_index(method: Method) -> usize {
    match method {
        Method::Get => 0,
        Method::Post => 1,
        Method::Put => 2,
        Method::Delete => 3,
        Method::Fetch => 4,
        Method::Patch => 5,
        Method::IPatch => 6,
        _ => 7,
    }
}

fn class_index(status: Status) -> usize {
    match status.class() {
        2 => 0,
        4 => 1,
        5 => 2,
        _ => 3,
    }
}

/// A histogram of durations with fixed buckets ([`RTT_BUCKETS`]), one atomic per bucket.
#[derive(Debug, Default)]
struct AtomicHistogram {
    /// Samples per bucket (not cumulative); the last one is +Inf.
    buckets: [AtomicU64; RTT_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl AtomicHistogram {
    fn observe(&self, sample: Duration) {
        let secs = sample.as_secs_f64();
        let bucket = RTT_BUCKETS
            .iter()
            .position(|bound| secs <= *bound)
            .unwrap_or(RTT_BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(sample.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    fn snapshot(&self) -> RttHistogram {
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(RTT_BUCKETS.len() + 1);
        for (i, count) in self.buckets.iter().enumerate() {
            cumulative += count.load(Ordering::Relaxed);
            buckets.push((
                RTT_BUCKETS.get(i).copied().unwrap_or(f64::INFINITY),
                cumulative,
            ));
        }
        RttHistogram {
            buckets,
            count: cumulative,
            sum: Duration::from_nanos(self.sum_nanos.load(Ordering::Relaxed)),
        }
    }
}

/// The counters of one transport.
#[derive(Debug, Default)]
struct TransportCounters {
    rtt: AtomicHistogram,
    pings_unanswered: AtomicU64,
    peer_pings_answered: AtomicU64,
    nacks: [AtomicU64; NACK_REASONS.len()],
    handshakes: AtomicU64,
    handshake_failures: [AtomicU64; HANDSHAKE_FAILURES.len()],
    requests: [[AtomicU64; CLASSES.len()]; METHODS.len()],
    rejected_inputs: AtomicU64,
    evictions: AtomicU64,
    refusals: AtomicU64,
    bytes_received: AtomicU64,
    bytes_sent: AtomicU64,
}

/// The context's counters, one set per transport.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    transports: [TransportCounters; 4],
}

fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl Counters {
    fn of(&self, transport: Transport) -> &TransportCounters {
        &self.transports[transport_index(transport)]
    }

    /// A pong: its round-trip time.
    pub(crate) fn pong(&self, transport: Transport, rtt: Duration) {
        self.of(transport).rtt.observe(rtt);
    }

    /// A ping of ours went unanswered (its retransmissions or its pong timeout exhausted).
    pub(crate) fn ping_unanswered(&self, transport: Transport) {
        bump(&self.of(transport).pings_unanswered, 1);
    }

    /// The peer's ping was answered (an RST or a 7.03 queued).
    pub(crate) fn peer_ping_answered(&self, transport: Transport) {
        bump(&self.of(transport).peer_pings_answered, 1);
    }

    /// A session failed with `reason` (its nack).
    pub(crate) fn nack(&self, transport: Transport, reason: NackReason) {
        bump(&self.of(transport).nacks[nack_index(reason)], 1);
    }

    /// A (D)TLS handshake completed.
    pub(crate) fn handshake(&self, transport: Transport) {
        bump(&self.of(transport).handshakes, 1);
    }

    /// A (D)TLS handshake failed.
    pub(crate) fn handshake_failed(&self, transport: Transport, cause: HandshakeFailure) {
        let index = HANDSHAKE_FAILURES
            .iter()
            .position(|c| *c == cause)
            .unwrap_or(0);
        bump(&self.of(transport).handshake_failures[index], 1);
    }

    /// A request was answered by the router or a handler with `status`.
    pub(crate) fn request(&self, transport: Transport, method: Method, status: Status) {
        bump(
            &self.of(transport).requests[method_index(method)][class_index(status)],
            1,
        );
    }

    /// The protocol refused an input (a 4.02, an Abort, an RST to a bad message...).
    pub(crate) fn rejected_input(&self, transport: Transport) {
        bump(&self.of(transport).rejected_inputs, 1);
    }

    /// A full endpoint evicted a session or refused a newcomer.
    pub(crate) fn at_limit(&self, transport: Transport, what: AtLimit) {
        let counters = self.of(transport);
        match what {
            AtLimit::Evicted => bump(&counters.evictions, 1),
            AtLimit::Refused => bump(&counters.refusals, 1),
        }
    }

    /// `n` bytes of CoAP received.
    pub(crate) fn received(&self, transport: Transport, n: usize) {
        bump(&self.of(transport).bytes_received, n as u64);
    }

    /// `n` bytes of CoAP sent.
    pub(crate) fn sent(&self, transport: Transport, n: usize) {
        bump(&self.of(transport).bytes_sent, n as u64);
    }

    /// The counters of `transport` as figures; the registry fills in the session and ping
    /// figures it keeps.
    pub(crate) fn snapshot(&self, transport: Transport) -> TransportMetrics {
        let c = self.of(transport);
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let mut requests = Vec::new();
        for (m, row) in c.requests.iter().enumerate() {
            for (k, count) in row.iter().enumerate() {
                let count = load(count);
                if count > 0 {
                    requests.push(RequestCount {
                        method: METHODS[m],
                        class: CLASSES[k],
                        count,
                    });
                }
            }
        }
        TransportMetrics {
            transport,
            sessions_opened: 0,
            sessions_closed: 0,
            sessions_failed: 0,
            pings_sent: 0,
            ping_retransmissions: 0,
            pongs: 0,
            pings_unanswered: load(&c.pings_unanswered),
            peer_pings: 0,
            peer_pings_answered: load(&c.peer_pings_answered),
            rtt: c.rtt.snapshot(),
            nacks: NACK_REASONS
                .iter()
                .zip(&c.nacks)
                .map(|(r, n)| (*r, load(n)))
                .collect(),
            handshakes: load(&c.handshakes),
            handshake_failures: HANDSHAKE_FAILURES
                .iter()
                .zip(&c.handshake_failures)
                .map(|(cause, n)| (*cause, load(n)))
                .collect(),
            requests,
            rejected_inputs: load(&c.rejected_inputs),
            evictions: load(&c.evictions),
            refusals: load(&c.refusals),
            bytes_received: load(&c.bytes_received),
            bytes_sent: load(&c.bytes_sent),
        }
    }
}

/// A snapshot of a context's figures ([`Context::metrics`](crate::Context::metrics)): its live
/// sessions grouped by transport, role and state, and the counters of each transport since the
/// context was built. These are the figures `serve --metrics` publishes to Prometheus; an
/// application that serves metrics its own way reads them here (or registers
/// [`Context::metrics_collector`](crate::Context::metrics_collector) with its own
/// `prometheus_client` registry).
///
/// ```
/// use coap_keepalive::{Context, Transport};
///
/// # #[tokio::main] async fn main() -> coap_keepalive::Result<()> {
/// let ctx = Context::new();
/// let metrics = ctx.metrics();
/// assert_eq!(metrics.live_sessions(), 0);
/// assert_eq!(metrics.transport(Transport::Udp).pings_sent, 0);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Metrics {
    /// The live sessions by transport, role and state, every combination listed (zero too).
    pub sessions: Vec<SessionGroup>,
    /// The counters of each transport: UDP, DTLS, TCP, TLS, in that order.
    pub transports: Vec<TransportMetrics>,
}

impl Metrics {
    /// The counters of `transport`.
    pub fn transport(&self, transport: Transport) -> &TransportMetrics {
        &self.transports[transport_index(transport)]
    }

    /// How many sessions are live, in every group.
    pub fn live_sessions(&self) -> u64 {
        self.sessions.iter().map(|g| g.count).sum()
    }
}

/// How many live sessions have one transport, role and state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionGroup {
    /// Their transport.
    pub transport: Transport,
    /// Their role.
    pub role: Role,
    /// Their state: [`SessionState::Connecting`] or [`SessionState::Established`] (ended
    /// sessions are counted in [`TransportMetrics::sessions_closed`] and `sessions_failed`).
    pub state: SessionState,
    /// How many.
    pub count: u64,
}

/// The counters of one transport since the context was built.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct TransportMetrics {
    /// The transport.
    pub transport: Transport,
    /// Sessions created (a failed (D)TLS handshake counts as a session that failed at once).
    pub sessions_opened: u64,
    /// Sessions that ended normally.
    pub sessions_closed: u64,
    /// Sessions that failed (each had its nack).
    pub sessions_failed: u64,
    /// Keepalive pings we sent, not counting retransmissions (the sum of every session's
    /// [`Stats::pings_sent`](crate::Stats::pings_sent), live or ended).
    pub pings_sent: u64,
    /// Retransmissions of our UDP / DTLS pings.
    pub ping_retransmissions: u64,
    /// Answers to our pings.
    pub pongs: u64,
    /// Pings of ours that got no answer (retransmissions or pong timeout exhausted).
    pub pings_unanswered: u64,
    /// Pings the peers sent us.
    pub peer_pings: u64,
    /// Pings of the peers that we answered (the ping handler may suppress an answer).
    pub peer_pings_answered: u64,
    /// The round-trip times of our pings' answers.
    pub rtt: RttHistogram,
    /// Nacks by reason, every reason listed.
    pub nacks: Vec<(NackReason, u64)>,
    /// (D)TLS handshakes that completed (DTLS and TLS only).
    pub handshakes: u64,
    /// (D)TLS handshakes that failed, by cause, every cause listed.
    pub handshake_failures: Vec<(HandshakeFailure, u64)>,
    /// Requests answered by a resource (or the router's 4.04 / 4.05), by method and response
    /// class; a block-wise upload counts once, when it is whole. Only non-zero ones are listed.
    pub requests: Vec<RequestCount>,
    /// Inputs the protocol refused without a handler (an unrecognised critical option, a bad
    /// block, a first message on a stream that is not a CSM...).
    pub rejected_inputs: u64,
    /// Sessions a full UDP endpoint closed to make room for a newcomer (ones that never
    /// completed an exchange).
    pub evictions: u64,
    /// Newcomers a full endpoint refused.
    pub refusals: u64,
    /// Bytes of CoAP messages received (over DTLS and TLS: before encryption, without the
    /// records' overhead or the handshakes).
    pub bytes_received: u64,
    /// Bytes of CoAP messages sent (as `bytes_received`).
    pub bytes_sent: u64,
}

/// Requests of one method answered with one response class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RequestCount {
    /// `GET`, `POST`, `PUT`, `DELETE`, `FETCH`, `PATCH`, `iPATCH` or `other`.
    pub method: &'static str,
    /// `2.xx`, `4.xx`, `5.xx` or `other`.
    pub class: &'static str,
    /// How many.
    pub count: u64,
}

/// A histogram of round-trip times.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RttHistogram {
    /// Cumulative buckets: (upper bound in seconds, samples at or below it), the last bound
    /// +Inf; the bounds are [`RTT_BUCKETS`].
    pub buckets: Vec<(f64, u64)>,
    /// How many samples.
    pub count: u64,
    /// Their sum.
    pub sum: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_with_inf_last() {
        let h = AtomicHistogram::default();
        h.observe(Duration::from_micros(300));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(200));
        let s = h.snapshot();
        assert_eq!(s.count, 3);
        assert_eq!(s.buckets[0], (0.0005, 1));
        assert_eq!(s.buckets[3], (0.005, 2));
        assert_eq!(s.buckets[RTT_BUCKETS.len() - 1].1, 2);
        assert_eq!(*s.buckets.last().unwrap(), (f64::INFINITY, 3));
        assert_eq!(s.sum, Duration::from_micros(200_003_300));
    }

    #[test]
    fn requests_count_by_method_and_class() {
        let c = Counters::default();
        c.request(Transport::Tcp, Method::Get, Status::Content);
        c.request(Transport::Tcp, Method::Get, Status::Content);
        c.request(Transport::Tcp, Method::Put, Status::NotFound);
        let s = c.snapshot(Transport::Tcp);
        assert_eq!(
            s.requests,
            vec![
                RequestCount {
                    method: "GET",
                    class: "2.xx",
                    count: 2
                },
                RequestCount {
                    method: "PUT",
                    class: "4.xx",
                    count: 1
                },
            ]
        );
        assert!(c.snapshot(Transport::Udp).requests.is_empty());
    }

    #[test]
    fn handshake_timeouts_are_told_from_rejections() {
        let timeout = Error::Tls("handshake with 127.0.0.1:1 timed out after 1s".into());
        assert_eq!(HandshakeFailure::of(&timeout), HandshakeFailure::Timeout);
        let alert = Error::Tls("handshake with 127.0.0.1:1 failed: alert".into());
        assert_eq!(HandshakeFailure::of(&alert), HandshakeFailure::Rejected);
    }
}
