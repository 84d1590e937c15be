//! The sans-IO keepalive state machine of one session.
//!
//! It owns no socket and reads no clock: every input carries the current instant, and the outputs
//! are polled — [`Keepalive::poll_transmit`] for pings to send, [`Keepalive::poll_event`] for
//! pongs and failures, [`Keepalive::poll_timeout`] for the next instant it must be woken at. A
//! driver (or an application with its own event loop) repeats: feed input, call
//! [`Keepalive::handle_timeout`] when the deadline passed, flush transmits, deliver events.
//!
//! The rules (the README's keepalive paragraphs say the same for users):
//! - a ping is due when nothing was received from the peer for the interval (less a random jitter);
//!   anything received proves liveness, anything sent does not;
//! - over datagrams (UDP, DTLS) a ping is an empty Confirmable message retransmitted per RFC 7252 and
//!   answered by an RST (or an empty ACK) with its Message ID; a ping that exhausted its
//!   retransmissions is one unanswered ping;
//! - over streams (TCP, TLS) a ping is a 7.02 answered by a 7.03 Pong, no ping is sent before the
//!   peer's CSM arrived, and a pong timeout is one unanswered ping;
//! - `max_unanswered` consecutive unanswered pings fail the session (below that the next ping goes
//!   out at once); anything received resets the count;
//! - while a Confirmable request is outstanding no ping is sent: the request is the probe;
//! - a failure is reported once, and the machine then stays failed.
//!
//! Settings: sessions of one context share one `Arc<KeepaliveConfig>`. A session's own interval,
//! pong timeout or `max_unanswered` (`set_interval`, `set_pong_timeout`, `set_max_unanswered`)
//! copies it on write and is remembered as an override; a context-wide change
//! ([`Keepalive::inherit_config`]) moves sessions without overrides to the new `Arc` together,
//! and gives the others the new configuration with their overrides kept.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use std::sync::Arc;

use crate::proto::config::KeepaliveConfig;
use crate::proto::error::NackReason;
use crate::proto::rng::Rng;

/// Length of the tokens of our 7.02 Pings.
pub const PING_TOKEN_LEN: usize = 4;

/// Longest delay a deadline is set at: far enough to mean "never", near enough that adding it to
/// an `Instant` cannot overflow (an interval of `u64::MAX` seconds, as `set_keepalive` accepts,
/// would panic).
const FAR_FUTURE: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// A delay as an [`Offset`] to add, capped at [`FAR_FUTURE`] (so that adding it to an instant
/// cannot overflow).
fn capped(delay: Duration) -> Offset {
    nanos(delay.min(FAR_FUTURE))
}

/// Which kind of ping a session sends: decided by its transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PingStyle {
    /// UDP and DTLS: empty Confirmable 0.00, answered by RST.
    Datagram,
    /// TCP and TLS: RFC 8323 7.02 Ping, answered by 7.03 Pong.
    Stream,
}

/// A ping the driver must send now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PingTransmit {
    /// An empty Confirmable message, `40 00 MM MM`.
    Datagram {
        /// Its Message ID (the same on every retransmission).
        message_id: u16,
        /// True for a retransmission of an earlier ping.
        retransmission: bool,
    },
    /// A 7.02 Ping carrying this token.
    Stream {
        /// The token the Pong should echo.
        token: [u8; PING_TOKEN_LEN],
    },
}

impl PingTransmit {
    /// The bytes of this ping on the wire.
    pub fn encode(&self) -> Vec<u8> {
        match *self {
            PingTransmit::Datagram { message_id, .. } => {
                crate::proto::wire::udp::ping(message_id).to_vec()
            }
            PingTransmit::Stream { token } => {
                crate::proto::wire::signal::Signal::Ping { custody: false }.encode(&token)
            }
        }
    }
}

/// Something the keepalive machine reports to the application.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepaliveEvent {
    /// Our ping was answered after `rtt` (measured from its last transmission).
    Pong {
        /// Round-trip time of the answered transmission.
        rtt: Duration,
    },
    /// A ping went unanswered: a stream ping got no Pong within the pong timeout, or a datagram
    /// ping exhausted its retransmissions. Below `max_unanswered` the next ping goes out at once
    /// (with keepalive on; with it off the application sends the next one).
    /// The one that reaches `max_unanswered` fails the session: a stream session reports it too,
    /// just before [`KeepaliveEvent::Failed`]; a datagram session reports only the failure.
    Unanswered {
        /// Consecutive unanswered pings, including this one.
        count: u32,
    },
    /// The session failed; it reports nothing more.
    Failed(NackReason),
}

/// Round-trip times of answered pings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RttStats {
    /// The latest sample.
    pub last: Option<Duration>,
    /// The smallest sample.
    pub min: Option<Duration>,
    /// Smoothed RTT (RFC 6298 style, gain 1/8).
    pub smoothed: Option<Duration>,
    /// The largest sample.
    pub max: Option<Duration>,
}

impl RttStats {
    /// Adds one sample.
    pub fn record(&mut self, rtt: Duration) {
        self.last = Some(rtt);
        self.min = Some(self.min.map_or(rtt, |m| m.min(rtt)));
        self.max = Some(self.max.map_or(rtt, |m| m.max(rtt)));
        self.smoothed = Some(match self.smoothed {
            None => rtt,
            Some(s) => (s * 7 + rtt) / 8,
        });
    }
}

/// Counters of one session (and, summed, of a context).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Pings we sent, not counting retransmissions.
    pub pings_sent: u64,
    /// Retransmissions of our UDP / DTLS pings.
    pub retransmissions: u64,
    /// Answers to our pings (RST, empty ACK or 7.03).
    pub pongs: u64,
    /// Pings the peer sent us.
    pub pings_received: u64,
    /// Failures (0 or 1 for a session).
    pub failures: u64,
    /// Round-trip times of answered pings.
    pub rtt: RttStats,
}

impl Stats {
    /// Adds another session's counters to these: counts summed, RTT min / max merged, `last`
    /// taken from `other` when it has one, and `smoothed` the mean of both smoothed RTTs weighted
    /// by their pongs (so a context's smoothed RTT stands for all of its sessions).
    pub fn accumulate(&mut self, other: &Stats) {
        self.rtt.smoothed = match (self.rtt.smoothed, other.rtt.smoothed) {
            (Some(ours), Some(theirs)) => {
                let (a, b) = (
                    u128::from(self.pongs.max(1)),
                    u128::from(other.pongs.max(1)),
                );
                let mean = (ours.as_nanos() * a + theirs.as_nanos() * b) / (a + b);
                Some(Duration::from_nanos(mean.min(u128::from(u64::MAX)) as u64))
            }
            (ours, theirs) => ours.or(theirs),
        };
        self.pings_sent += other.pings_sent;
        self.retransmissions += other.retransmissions;
        self.pongs += other.pongs;
        self.pings_received += other.pings_received;
        self.failures += other.failures;
        if let Some(min) = other.rtt.min {
            self.rtt.min = Some(self.rtt.min.map_or(min, |m| m.min(min)));
        }
        if let Some(max) = other.rtt.max {
            self.rtt.max = Some(self.rtt.max.map_or(max, |m| m.max(max)));
        }
        if other.rtt.last.is_some() {
            self.rtt.last = other.rtt.last;
        }
    }
}

/// [`Stats`] as a session keeps them (its keepalive machine, and the handle it publishes them
/// to): the four counts, and the RTTs in nanoseconds behind a box that the first pong
/// allocates. 40 bytes where `Stats` takes 104: most server sessions never send a ping, so
/// they never have an RTT. The failure count is not stored: a machine reads it from its probe
/// (it fails once, and stays failed), a handle keeps whether it failed beside them.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pings_sent: u64,
    retransmissions: u64,
    pongs: u64,
    pings_received: u64,
    /// Last, min, smoothed and max RTT; `None` before the first pong.
    rtt_nanos: Option<Box<[u64; 4]>>,
}

/// Copied field by field: `clone_from` reuses the RTTs' box, so publishing the counters at
/// every input allocates nothing.
impl Clone for Counters {
    fn clone(&self) -> Self {
        Counters {
            pings_sent: self.pings_sent,
            retransmissions: self.retransmissions,
            pongs: self.pongs,
            pings_received: self.pings_received,
            rtt_nanos: self.rtt_nanos.clone(),
        }
    }

    fn clone_from(&mut self, source: &Self) {
        self.pings_sent = source.pings_sent;
        self.retransmissions = source.retransmissions;
        self.pongs = source.pongs;
        self.pings_received = source.pings_received;
        match (&mut self.rtt_nanos, &source.rtt_nanos) {
            (Some(ours), Some(theirs)) => **ours = **theirs,
            (ours, theirs) => ours.clone_from(theirs),
        }
    }
}

/// A missing RTT sample in [`Counters`]; longer RTTs are stored as one nanosecond less.
const NO_RTT: u64 = u64::MAX;

/// An RTT as [`Counters::rtt_nanos`] holds it.
fn pack_rtt(rtt: Option<Duration>) -> u64 {
    rtt.map_or(NO_RTT, |d| d.as_nanos().min(u128::from(NO_RTT - 1)) as u64)
}

impl Counters {
    fn rtt(&self) -> RttStats {
        let Some(rtt_nanos) = self.rtt_nanos.as_deref() else {
            return RttStats::default();
        };
        let unpack = |nanos: u64| (nanos != NO_RTT).then(|| Duration::from_nanos(nanos));
        let [last, min, smoothed, max] = rtt_nanos.map(unpack);
        RttStats {
            last,
            min,
            smoothed,
            max,
        }
    }

    fn record_rtt(&mut self, rtt: Duration) {
        let mut stats = self.rtt();
        stats.record(rtt);
        let packed = [stats.last, stats.min, stats.smoothed, stats.max].map(pack_rtt);
        match &mut self.rtt_nanos {
            Some(rtt_nanos) => **rtt_nanos = packed,
            none => *none = Some(Box::new(packed)),
        }
    }

    /// The counters as [`Stats`], with `failures` failures.
    pub(crate) fn snapshot(&self, failures: u64) -> Stats {
        Stats {
            pings_sent: self.pings_sent,
            retransmissions: self.retransmissions,
            pongs: self.pongs,
            pings_received: self.pings_received,
            failures,
            rtt: self.rtt(),
        }
    }
}

/// What the ping we are waiting for is identified by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProbeId {
    MessageId(u16),
    Token([u8; PING_TOKEN_LEN]),
}

/// An instant as the machine stores it: signed nanoseconds from its `last_rx` (8 bytes, an
/// `Instant`'s 16), exact within 292 years either way, which the deadlines ([`FAR_FUTURE`])
/// stay inside. The offsets are moved whenever `last_rx` moves.
type Offset = i64;

/// [`Probe::Idle`] without a deadline (no real offset comes near it: deadlines are capped at
/// [`FAR_FUTURE`]).
const NOT_DUE: Offset = Offset::MAX;

/// `d` in nanoseconds, saturating below [`NOT_DUE`] (292 years). In 64 bits, not through
/// `as_nanos`'s 128: this runs at every input.
fn nanos(d: Duration) -> Offset {
    d.as_secs()
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::from(d.subsec_nanos()))
        .min(NOT_DUE as u64 - 1) as Offset
}

/// `b - a` in signed nanoseconds, saturating beyond 292 years.
fn offset_between(a: Instant, b: Instant) -> Offset {
    if b >= a {
        nanos(b.duration_since(a))
    } else {
        -nanos(a.duration_since(b))
    }
}

/// `at` moved by `offset` nanoseconds. An offset made from a real instant never leaves
/// `Instant`'s range; one that would is not followed (no panic).
fn shift(at: Instant, offset: Offset) -> Instant {
    let by = Duration::from_nanos(offset.unsigned_abs());
    if offset >= 0 {
        at.checked_add(by).unwrap_or(at)
    } else {
        at.checked_sub(by).unwrap_or(at)
    }
}

/// A timeout as [`Probe::Outstanding`] stores it: nanoseconds, saturating (a timeout is only
/// ever used capped at [`FAR_FUTURE`], far below `u64::MAX` nanoseconds, so saturating here
/// changes no deadline).
fn timeout_nanos(timeout: Duration) -> u64 {
    timeout.as_nanos().min(u128::from(u64::MAX)) as u64
}

/// The ping state. Its instants are [`Offset`]s from the machine's `last_rx`: 40 bytes, not
/// 64 with `Instant`s and a `Duration`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Probe {
    /// No ping outstanding. The next one is due at `due` ([`NOT_DUE`]: none), computed when
    /// the last receipt was `from`; none while keepalive is off, before the CSM, or while a
    /// request stands in.
    Idle { due: Offset, from: Offset },
    /// A ping is out and waits for its answer until `timeout_nanos` after its last transmission
    /// (`sent_at`): see [`Keepalive::deadline`].
    Outstanding {
        id: ProbeId,
        first_sent: Offset,
        sent_at: Offset,
        retransmits: u32,
        timeout_nanos: u64,
    },
    /// Failed with this reason; terminal.
    Failed(NackReason),
    /// Closed by the application; terminal.
    Closed,
}

impl Probe {
    /// The probe with its instants moved `by` nanoseconds earlier: `last_rx`, which they count
    /// from, moved `by` later.
    fn rebased(self, by: Offset) -> Probe {
        let back = |at: Offset| at.saturating_sub(by);
        match self {
            Probe::Idle { due, from } => Probe::Idle {
                due: if due == NOT_DUE { NOT_DUE } else { back(due) },
                from: back(from),
            },
            Probe::Outstanding {
                id,
                first_sent,
                sent_at,
                retransmits,
                timeout_nanos,
            } => Probe::Outstanding {
                id,
                first_sent: back(first_sent),
                sent_at: back(sent_at),
                retransmits,
                timeout_nanos,
            },
            finished => finished,
        }
    }
}

/// The machine's flags and ping style, one byte per session instead of one per flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Flags(u8);

impl Flags {
    /// The ping style is [`PingStyle::Stream`] (else [`PingStyle::Datagram`]).
    const STREAM: Flags = Flags(1);
    /// The session may ping (datagram: always; stream: after the peer's CSM).
    const ESTABLISHED: Flags = Flags(1 << 1);
    /// A Confirmable request to the peer is outstanding.
    const REQUEST_IN_FLIGHT: Flags = Flags(1 << 2);
    /// Something was counted, or a ping went out or ended, since [`Keepalive::poll_stats`].
    const STATS_CHANGED: Flags = Flags(1 << 3);
    /// The two bits of [`Keepalive::messages_counted`], from this one up.
    const MESSAGES_SHIFT: u8 = 4;
    const MESSAGES: Flags = Flags(0b11 << Flags::MESSAGES_SHIFT);

    fn contains(self, flag: Flags) -> bool {
        self.0 & flag.0 == flag.0
    }

    fn set(&mut self, flag: Flags, on: bool) {
        if on {
            self.0 |= flag.0;
        } else {
            self.0 &= !flag.0;
        }
    }
}

/// The keepalive state machine of one session. Time is always an argument.
///
/// Kept small (it is most of an idle session): one `Instant`, the others as offsets from it,
/// the flags in one byte.
#[derive(Debug, Clone)]
pub struct Keepalive {
    /// Shared by every session created with the same configuration (one word per session);
    /// copied on write when this session's own settings ([`Overrides`]) change it.
    config: Arc<KeepaliveConfig>,
    rng: Rng,
    /// The last receipt; the probe's instants are offsets from it.
    last_rx: Instant,
    probe: Probe,
    stats: Counters,
    outbox: Outbox<PingTransmit, KeepaliveEvent>,
    unanswered: u32,
    next_message_id: u16,
    /// The settings of `config` that are this session's own, kept when a new configuration is
    /// inherited ([`Keepalive::inherit_config`]).
    overrides: Overrides,
    flags: Flags,
}

impl Keepalive {
    /// A machine for a session that starts at `now`. Datagram sessions count as established at
    /// once; stream sessions after [`Keepalive::handle_established`] (the peer's CSM).
    ///
    /// `config` may be a [`KeepaliveConfig`] or an `Arc` of one shared by many sessions.
    pub fn new(
        style: PingStyle,
        config: impl Into<Arc<KeepaliveConfig>>,
        mut rng: Rng,
        now: Instant,
    ) -> Self {
        let config = config.into();
        let next_message_id = rng.next_u64() as u16;
        let mut flags = Flags(0);
        flags.set(Flags::STREAM, style == PingStyle::Stream);
        flags.set(Flags::ESTABLISHED, style == PingStyle::Datagram);
        let mut keepalive = Keepalive {
            config,
            rng,
            last_rx: now,
            probe: Probe::Idle {
                due: NOT_DUE,
                from: 0,
            },
            stats: Counters::default(),
            outbox: Outbox::default(),
            unanswered: 0,
            next_message_id,
            overrides: Overrides::NONE,
            flags,
        };
        keepalive.schedule();
        keepalive
    }

    // ---- getters ----

    /// The ping style (datagram or stream).
    pub fn style(&self) -> PingStyle {
        if self.flags.contains(Flags::STREAM) {
            PingStyle::Stream
        } else {
            PingStyle::Datagram
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &KeepaliveConfig {
        &self.config
    }

    /// The counters of this session (a snapshot).
    pub fn stats(&self) -> Stats {
        self.stats.snapshot(u64::from(self.has_failed()))
    }

    /// The counters, when anything was counted or a ping went out or ended since the last call;
    /// `None` otherwise. A driver that publishes statistics calls this after every input, so
    /// that what it publishes is never behind a transmission, a retransmission or a pong, and
    /// costs nothing when nothing changed.
    pub fn poll_stats(&mut self) -> Option<Stats> {
        self.poll_counters()
            .map(|(counters, failed)| counters.snapshot(u64::from(failed)))
    }

    /// [`Keepalive::poll_stats`] as the machine keeps them, for a driver that stores them so
    /// too (the session handle): no unpacking and packing again at every input. With the
    /// counters, whether the machine failed.
    pub(crate) fn poll_counters(&mut self) -> Option<(&Counters, bool)> {
        let changed = self.flags.contains(Flags::STATS_CHANGED);
        self.flags.set(Flags::STATS_CHANGED, false);
        changed.then(|| self.counters())
    }

    /// [`Keepalive::stats`] as the machine keeps them (see [`Keepalive::poll_counters`]).
    pub(crate) fn counters(&self) -> (&Counters, bool) {
        (&self.stats, self.has_failed())
    }

    /// Whether the machine failed. `fail` is the only place failures are counted, once, as
    /// the probe turns Failed for good: the count is whether it did.
    fn has_failed(&self) -> bool {
        matches!(self.probe, Probe::Failed(_))
    }

    /// Notes that something was counted, or a ping went out or ended (see
    /// [`Keepalive::poll_stats`]).
    fn stats_changed(&mut self) {
        self.flags.set(Flags::STATS_CHANGED, true);
    }

    /// `at` as an offset from `last_rx`.
    fn offset(&self, at: Instant) -> Offset {
        offset_between(self.last_rx, at)
    }

    /// The instant an offset from `last_rx` stands for.
    fn instant(&self, offset: Offset) -> Instant {
        shift(self.last_rx, offset)
    }

    /// When an outstanding ping is retransmitted or given up, as an offset (computed, not
    /// stored: 8 bytes less per session).
    fn deadline(&self) -> Option<Offset> {
        match self.probe {
            Probe::Outstanding {
                sent_at,
                timeout_nanos,
                ..
            } => Some(sent_at.saturating_add(capped(Duration::from_nanos(timeout_nanos)))),
            _ => None,
        }
    }

    /// Counts a well-formed message from the peer, for its session (see
    /// [`Keepalive::messages_counted`]).
    pub(crate) fn count_message(&mut self) {
        let counted = self.messages_counted();
        if counted < 3 {
            self.flags.0 =
                (self.flags.0 & !Flags::MESSAGES.0) | ((counted + 1) << Flags::MESSAGES_SHIFT);
        }
    }

    /// The well-formed messages [`Keepalive::count_message`] counted, saturating at 3: a
    /// datagram session whose peer was heard from twice has shown it is real. Kept in spare
    /// bits of the flags byte, not in a byte (with padding, a word) of the session.
    pub(crate) fn messages_counted(&self) -> u8 {
        (self.flags.0 & Flags::MESSAGES.0) >> Flags::MESSAGES_SHIFT
    }

    /// The last instant something was received from the peer (or reported by `mark_active`).
    pub fn last_activity(&self) -> Instant {
        self.last_rx
    }

    /// How long the peer has been silent at `now`.
    pub fn idle(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last_rx)
    }

    /// True once the session may ping (datagram: always; stream: after the peer's CSM).
    pub fn is_established(&self) -> bool {
        self.flags.contains(Flags::ESTABLISHED)
    }

    /// True while one of our pings waits for its answer.
    pub fn is_awaiting_pong(&self) -> bool {
        matches!(self.probe, Probe::Outstanding { .. })
    }

    /// The reason the session failed, if it did.
    pub fn failure(&self) -> Option<NackReason> {
        match self.probe {
            Probe::Failed(reason) => Some(reason),
            _ => None,
        }
    }

    /// True after a failure or [`Keepalive::close`]: nothing more will happen.
    pub fn is_finished(&self) -> bool {
        matches!(self.probe, Probe::Failed(_) | Probe::Closed)
    }

    // ---- inputs ----

    /// Something arrived from the peer at `now`: it is alive, and the next ping is due an
    /// interval from now. An outstanding ping stays outstanding, so that its answer is still
    /// matched and timed; when its deadline comes and the peer was heard from since it went out,
    /// it is dropped without retransmission or failure.
    pub fn handle_activity(&mut self, now: Instant) {
        if now > self.last_rx {
            // The probe's instants count from `last_rx`: they stay where they are.
            self.probe = self.probe.rebased(nanos(now.duration_since(self.last_rx)));
            self.last_rx = now;
        }
        if !self.is_finished() {
            self.unanswered = 0;
        }
    }

    /// The application has other evidence that the peer is alive (`Session::mark_active`).
    pub fn mark_active(&mut self, now: Instant) {
        self.handle_activity(now);
    }

    /// A stream session's peer sent its CSM: pings may start. Counts as activity.
    pub fn handle_established(&mut self, now: Instant) {
        self.flags.set(Flags::ESTABLISHED, true);
        self.handle_activity(now);
        if let Probe::Idle { due: NOT_DUE, .. } = self.probe {
            self.schedule();
        }
    }

    /// An RST or empty ACK with `message_id` arrived. Returns true when it answered our ping (a
    /// [`KeepaliveEvent::Pong`] is queued). Either way it counts as activity.
    pub fn handle_datagram_answer(&mut self, now: Instant, message_id: u16) -> bool {
        let matched = matches!(self.probe,
            Probe::Outstanding { id: ProbeId::MessageId(id), .. } if id == message_id);
        self.answered(now, matched)
    }

    /// A 7.03 Pong with `token` arrived. It answers our ping when the token matches, or when it is
    /// empty (libcoap never echoes the token) and a ping is outstanding. Returns true when it did.
    pub fn handle_pong(&mut self, now: Instant, token: &[u8]) -> bool {
        let matched = matches!(self.probe,
            Probe::Outstanding { id: ProbeId::Token(t), .. } if token.is_empty() || token == t);
        self.answered(now, matched)
    }

    /// The peer pinged us (counted; the answer is the session's business).
    pub fn note_peer_ping(&mut self, now: Instant) {
        self.stats.pings_received += 1;
        self.stats_changed();
        self.handle_activity(now);
    }

    fn answered(&mut self, now: Instant, matched: bool) -> bool {
        self.handle_activity(now);
        if matched {
            if let Probe::Outstanding { sent_at, .. } = self.probe {
                // `now` is the last receipt now, unless an earlier instant was passed.
                let now_offset = if now == self.last_rx {
                    0
                } else {
                    self.offset(now)
                };
                let rtt = Duration::from_nanos(now_offset.saturating_sub(sent_at).max(0) as u64);
                self.stats.pongs += 1;
                self.stats.record_rtt(rtt);
                self.stats_changed();
                self.outbox.push_event(KeepaliveEvent::Pong { rtt });
                self.schedule();
            }
        }
        matched
    }

    /// Marks whether a Confirmable request to the peer is outstanding (NSTART = 1). While one is,
    /// no ping is scheduled: the request is the probe. A ping already out is left to finish.
    pub fn set_request_in_flight(&mut self, _now: Instant, in_flight: bool) {
        if self.flags.contains(Flags::REQUEST_IN_FLIGHT) == in_flight {
            return;
        }
        self.flags.set(Flags::REQUEST_IN_FLIGHT, in_flight);
        if let Probe::Idle { .. } = self.probe {
            // schedule() yields no deadline while a request is in flight
            self.schedule();
        }
    }

    /// Sets this session's own idle interval (`None` or zero turns its pings off): an override
    /// that [`Keepalive::inherit_config`] keeps. A ping already out is left to finish; the next
    /// one follows the new interval.
    pub fn set_interval(&mut self, interval: Option<Duration>) {
        let interval = interval.filter(|d| !d.is_zero());
        self.overrides.insert(Overrides::INTERVAL);
        if self.config.interval != interval {
            // Copied on write: the other sessions keep sharing the original.
            Arc::make_mut(&mut self.config).interval = interval;
        }
        if let Probe::Idle { .. } = self.probe {
            self.schedule();
        }
    }

    /// Sets this session's own pong timeout (`None`: the interval, as
    /// [`KeepaliveConfig::pong_timeout`] says): an override that [`Keepalive::inherit_config`]
    /// keeps. A ping already out keeps the timeout it was sent with.
    pub fn set_pong_timeout(&mut self, timeout: Option<Duration>) {
        let timeout = timeout.filter(|d| !d.is_zero());
        self.overrides.insert(Overrides::PONG_TIMEOUT);
        if self.config.pong_timeout != timeout {
            Arc::make_mut(&mut self.config).pong_timeout = timeout;
        }
    }

    /// Sets this session's own number of consecutive unanswered pings that fail it (0 counts as
    /// 1): an override that [`Keepalive::inherit_config`] keeps. It applies from the next
    /// unanswered ping on.
    pub fn set_max_unanswered(&mut self, max_unanswered: u32) {
        let max_unanswered = max_unanswered.max(1);
        self.overrides.insert(Overrides::MAX_UNANSWERED);
        if self.config.max_unanswered != max_unanswered {
            Arc::make_mut(&mut self.config).max_unanswered = max_unanswered;
        }
    }

    /// Follows a context-wide change to `config`: a session with no setting of its own shares
    /// `config` (no copy, whatever the number of sessions); one with overrides
    /// ([`Keepalive::set_interval`], [`Keepalive::set_pong_timeout`],
    /// [`Keepalive::set_max_unanswered`]) takes every other setting from it and keeps its own.
    pub fn inherit_config(&mut self, config: Arc<KeepaliveConfig>) {
        if self.overrides == Overrides::NONE {
            self.config = config;
        } else if !Arc::ptr_eq(&self.config, &config) {
            let own = *self.config;
            let mut merged = *config;
            if self.overrides.contains(Overrides::INTERVAL) {
                merged.interval = own.interval;
            }
            if self.overrides.contains(Overrides::PONG_TIMEOUT) {
                merged.pong_timeout = own.pong_timeout;
            }
            if self.overrides.contains(Overrides::MAX_UNANSWERED) {
                merged.max_unanswered = own.max_unanswered;
            }
            if merged != own {
                self.config = Arc::new(merged);
            }
        }
        if let Probe::Idle { .. } = self.probe {
            self.schedule();
        }
    }

    /// Replaces the whole configuration and forgets this session's overrides (same rule as
    /// [`Keepalive::set_interval`] for a ping already out).
    pub fn set_config(&mut self, config: impl Into<Arc<KeepaliveConfig>>) {
        self.config = config.into();
        self.overrides = Overrides::NONE;
        if let Probe::Idle { .. } = self.probe {
            self.schedule();
        }
    }

    /// Fails the session for a reason found outside the machine (connection closed, handshake
    /// failed, request given up). Reported once; later calls are ignored.
    pub fn fail(&mut self, reason: NackReason) {
        if self.is_finished() {
            return;
        }
        // Counted by this (see `counters`).
        self.probe = Probe::Failed(reason);
        self.stats_changed();
        self.outbox.clear_transmits();
        self.outbox.push_event(KeepaliveEvent::Failed(reason));
    }

    /// Stops the machine without a failure (graceful close).
    pub fn close(&mut self) {
        if !self.is_finished() {
            self.probe = Probe::Closed;
            self.stats_changed();
            self.outbox.clear_transmits();
        }
    }

    /// Advances the timers to `now`: sends a due ping, retransmits, or gives up.
    pub fn handle_timeout(&mut self, now: Instant) {
        // An outstanding ping's deadline, computed once (it is not stored).
        // Offsets count from `last_rx`: an instant after the last receipt is a positive one.
        let now_offset = self.offset(now);
        let expired = self
            .deadline()
            .is_some_and(|deadline| now_offset >= deadline);
        match self.probe {
            Probe::Idle { due, from } if due != NOT_DUE && now_offset >= due => {
                if from < 0 {
                    // Traffic arrived since this deadline was set: move it, lazily, so that
                    // receiving costs no timer update.
                    self.schedule();
                    if matches!(self.probe, Probe::Idle { due, .. } if due != NOT_DUE && due > now_offset)
                    {
                        return;
                    }
                }
                self.send_ping(now_offset);
            }
            Probe::Outstanding { first_sent, .. }
                if expired && first_sent < 0 && self.config.interval.is_some() =>
            {
                // No answer to the ping itself, but the peer was heard from since it went out:
                // it is alive. Drop the probe quietly. Strictly after: a ping sent at the very
                // instant of the last receipt (at the session's start, say) heard nothing since.
                // Only with keepalive on: with it off every ping is the application's own
                // question (`ping`), which gets its answer or runs its whole schedule.
                self.stats_changed();
                self.schedule();
            }
            Probe::Outstanding {
                id,
                first_sent,
                retransmits,
                timeout_nanos,
                ..
            } if expired => match (self.style(), id) {
                (PingStyle::Datagram, ProbeId::MessageId(message_id)) => {
                    if retransmits < self.config.transmission.max_retransmit {
                        self.probe = Probe::Outstanding {
                            id,
                            first_sent,
                            sent_at: now_offset,
                            retransmits: retransmits + 1,
                            timeout_nanos: timeout_nanos.saturating_mul(2),
                        };
                        self.stats.retransmissions += 1;
                        self.stats_changed();
                        self.outbox.push_transmit(PingTransmit::Datagram {
                            message_id,
                            retransmission: true,
                        });
                    } else {
                        self.datagram_ping_exhausted(now_offset);
                    }
                }
                _ => {
                    self.unanswered += 1;
                    // The probe ends here, whatever follows: the handle's view must follow.
                    self.stats_changed();
                    self.outbox.push_event(KeepaliveEvent::Unanswered {
                        count: self.unanswered,
                    });
                    if self.unanswered >= self.config.max_unanswered {
                        self.fail(NackReason::TooManyRetries);
                    } else if self.config.interval.is_none() {
                        // Keepalive off: the application sends the next ping, if any.
                        self.schedule();
                    } else {
                        self.send_ping(now_offset);
                    }
                }
            },
            _ => {}
        }
    }

    /// Sends a ping now, whatever the schedule (an application's explicit probe). Ignored while a
    /// ping is already outstanding, before a stream session is established, or once finished.
    pub fn ping_now(&mut self, now: Instant) {
        if self.is_established() && matches!(self.probe, Probe::Idle { .. }) {
            self.send_ping(self.offset(now));
        }
    }

    /// A fresh Message ID for this session (pings and requests share the sequence).
    pub fn allocate_message_id(&mut self) -> u16 {
        let id = self.next_message_id;
        self.next_message_id = self.next_message_id.wrapping_add(1);
        id
    }

    /// The session's random source (tokens of requests come from it too).
    pub fn rng(&mut self) -> &mut Rng {
        &mut self.rng
    }

    // ---- outputs ----

    /// The next ping to send, if any.
    pub fn poll_transmit(&mut self) -> Option<PingTransmit> {
        self.outbox.pop_transmit()
    }

    /// The next event for the application, if any.
    pub fn poll_event(&mut self) -> Option<KeepaliveEvent> {
        self.outbox.pop_event()
    }

    /// The next instant [`Keepalive::handle_timeout`] must be called at; `None` when nothing is
    /// scheduled. It may be earlier than strictly needed (traffic moves deadlines lazily), never
    /// later.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.probe {
            Probe::Idle { due, .. } => (due != NOT_DUE).then(|| self.instant(due)),
            Probe::Outstanding { .. } => self.deadline().map(|at| self.instant(at)),
            Probe::Failed(_) | Probe::Closed => None,
        }
    }

    // ---- internals ----

    /// Recomputes the idle deadline from the last receipt.
    fn schedule(&mut self) {
        let due = match self.config.interval {
            Some(interval)
                if self.is_established() && !self.flags.contains(Flags::REQUEST_IN_FLIGHT) =>
            {
                let early = interval.mul_f64(self.config.jitter * self.rng.next_f64());
                // From `last_rx`, which is where offsets count from.
                capped(interval.saturating_sub(early))
            }
            _ => NOT_DUE,
        };
        self.probe = Probe::Idle { due, from: 0 };
    }

    /// A datagram ping went through its whole retransmission schedule unanswered: one unanswered
    /// ping. Below `max_unanswered` the next one goes out at once, with a fresh Message ID and
    /// schedule, so that one burst of loss on a live path does not fail the session; the
    /// `max_unanswered`-th fails it, reported as the failure alone (with the default of 1: the
    /// first exhausted ping, as before the setting applied to datagrams).
    fn datagram_ping_exhausted(&mut self, now: Offset) {
        self.unanswered += 1;
        self.stats_changed();
        if self.unanswered >= self.config.max_unanswered {
            self.fail(NackReason::TooManyRetries);
            return;
        }
        self.outbox.push_event(KeepaliveEvent::Unanswered {
            count: self.unanswered,
        });
        if self.flags.contains(Flags::REQUEST_IN_FLIGHT) || self.config.interval.is_none() {
            // NSTART = 1: a Confirmable request is out, and it is the probe now; its failure
            // fails the session, its answer resets the count. With keepalive off the
            // application sends its pings itself (`ping` counts every one it sends).
            self.schedule();
        } else {
            self.send_ping(now);
        }
    }

    /// Sends a ping at `now` (an offset from `last_rx`).
    fn send_ping(&mut self, now: Offset) {
        let (id, timeout, transmit) = match self.style() {
            PingStyle::Datagram => {
                let message_id = self.allocate_message_id();
                let params = &self.config.transmission;
                let factor = 1.0 + (params.ack_random_factor - 1.0) * self.rng.next_f64();
                (
                    ProbeId::MessageId(message_id),
                    params.ack_timeout.mul_f64(factor),
                    PingTransmit::Datagram {
                        message_id,
                        retransmission: false,
                    },
                )
            }
            PingStyle::Stream => {
                let token = (self.rng.next_u64() as u32).to_be_bytes();
                let timeout = self
                    .config
                    .effective_pong_timeout()
                    .unwrap_or(self.config.transmission.ack_timeout);
                (
                    ProbeId::Token(token),
                    timeout,
                    PingTransmit::Stream { token },
                )
            }
        };
        self.probe = Probe::Outstanding {
            id,
            first_sent: now,
            sent_at: now,
            retransmits: 0,
            timeout_nanos: timeout_nanos(timeout),
        };
        self.stats.pings_sent += 1;
        self.stats_changed();
        self.outbox.push_transmit(transmit);
    }
}

/// Which settings of a session's [`KeepaliveConfig`] are its own (a bit set, one byte per
/// session).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Overrides(u8);

impl Overrides {
    const NONE: Overrides = Overrides(0);
    const INTERVAL: Overrides = Overrides(1);
    const PONG_TIMEOUT: Overrides = Overrides(1 << 1);
    const MAX_UNANSWERED: Overrides = Overrides(1 << 2);

    fn insert(&mut self, other: Overrides) {
        self.0 |= other.0;
    }

    fn contains(self, other: Overrides) -> bool {
        self.0 & other.0 == other.0
    }
}

/// What a session has to send and to report: two FIFO queues, transmits and events.
///
/// They are empty or hold one item each nearly always; with a `VecDeque` each would keep a
/// heap buffer per session once used (memory, and one more cache miss per keepalive event with
/// many sessions). So the oldest item of each is held inline, and the later ones go to one
/// boxed spill for both queues (one word per session for the two), allocated when one spills
/// and dropped when both are drained. The inline event is held as an `H`, which may be
/// smaller than an `E` (see `event::QueuedEvent`).
#[derive(Debug, Clone)]
pub(crate) struct Outbox<T, E, H = E> {
    transmit: Option<T>,
    event: Option<H>,
    spill: Option<Box<Spill<T, E>>>,
}

/// The items queued after [`Outbox`]'s inline ones, in order.
#[derive(Debug, Clone)]
struct Spill<T, E> {
    transmits: VecDeque<T>,
    events: VecDeque<E>,
}

impl<T, E> Spill<T, E> {
    fn transmits(&mut self) -> &mut VecDeque<T> {
        &mut self.transmits
    }

    fn events(&mut self) -> &mut VecDeque<E> {
        &mut self.events
    }

    fn is_empty(&self) -> bool {
        self.transmits.is_empty() && self.events.is_empty()
    }
}

impl<T, E, H> Default for Outbox<T, E, H> {
    fn default() -> Self {
        Outbox {
            transmit: None,
            event: None,
            spill: None,
        }
    }
}

impl<T, E, H: From<E>> Outbox<T, E, H>
where
    E: From<H>,
{
    pub(crate) fn push_transmit(&mut self, transmit: impl Into<T>) {
        push(
            &mut self.transmit,
            &mut self.spill,
            Spill::transmits,
            transmit.into(),
        );
    }

    /// Queues an event, given as an `E` or as the `H` it is held inline as: the oldest, nearly
    /// always the only one, is then stored as it is given, not built as an `E` and converted.
    pub(crate) fn push_event<X: Into<E> + Into<H>>(&mut self, event: X) {
        let spilled = self.spill.as_deref().is_some_and(|s| !s.events.is_empty());
        if self.event.is_none() && !spilled {
            self.event = Some(Into::<H>::into(event));
        } else {
            new_spill(&mut self.spill)
                .events
                .push_back(Into::<E>::into(event));
        }
    }

    pub(crate) fn pop_transmit(&mut self) -> Option<T> {
        pop(&mut self.transmit, &mut self.spill, Spill::transmits)
    }

    pub(crate) fn pop_event(&mut self) -> Option<E> {
        pop(&mut self.event, &mut self.spill, Spill::events)
    }

    pub(crate) fn clear_transmits(&mut self) {
        self.transmit = None;
        if let Some(spill) = self.spill.as_mut() {
            spill.transmits.clear();
        }
        release_if_drained(&mut self.spill);
    }
}

/// Queues `item` in one lane of an [`Outbox`]: inline (as an `H`) when the lane is empty,
/// else after what is there.
fn push<T, E, I, H: From<I>>(
    head: &mut Option<H>,
    spill: &mut Option<Box<Spill<T, E>>>,
    lane: fn(&mut Spill<T, E>) -> &mut VecDeque<I>,
    item: I,
) {
    let spilled = spill.as_deref_mut().is_some_and(|s| !lane(s).is_empty());
    if head.is_none() && !spilled {
        *head = Some(H::from(item));
    } else {
        lane(new_spill(spill)).push_back(item);
    }
}

/// The spill of an [`Outbox`], allocated if it has none.
fn new_spill<T, E>(spill: &mut Option<Box<Spill<T, E>>>) -> &mut Spill<T, E> {
    spill.get_or_insert_with(|| {
        Box::new(Spill {
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        })
    })
}

/// The oldest item of one lane of an [`Outbox`].
fn pop<T, E, I: From<H>, H>(
    head: &mut Option<H>,
    spill: &mut Option<Box<Spill<T, E>>>,
    lane: fn(&mut Spill<T, E>) -> &mut VecDeque<I>,
) -> Option<I> {
    if let Some(item) = head.take() {
        // The oldest; a spill, if any, still holds something (it is dropped once drained).
        return Some(I::from(item));
    }
    let item = lane(spill.as_deref_mut()?).pop_front();
    release_if_drained(spill);
    item
}

/// Drops a drained spill: a session that once queued several items (a CSM exchange, a burst
/// of responses) holds no buffer while it idles for hours.
fn release_if_drained<T, E>(spill: &mut Option<Box<Spill<T, E>>>) {
    if spill.as_deref().is_some_and(Spill::is_empty) {
        *spill = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::config::TransmissionParams;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn sessions_sharing_the_context_config_move_to_its_new_one_together() {
        let t0 = Instant::now();
        let old = Arc::new(KeepaliveConfig::default().with_interval_secs(10));
        let new = Arc::new(KeepaliveConfig::default().with_interval_secs(20));
        let mut shared = Keepalive::new(PingStyle::Datagram, Arc::clone(&old), Rng::seeded(1), t0);
        let mut own = Keepalive::new(PingStyle::Datagram, Arc::clone(&old), Rng::seeded(2), t0);
        own.set_interval(Some(secs(5.0)));
        shared.inherit_config(Arc::clone(&new));
        own.inherit_config(Arc::clone(&new));
        assert!(Arc::ptr_eq(&shared.config, &new), "no copy per session");
        assert_eq!(shared.poll_timeout(), Some(t0 + secs(20.0)));
        assert_eq!(
            own.config().interval,
            Some(secs(5.0)),
            "its own interval stays"
        );
        assert_eq!(own.poll_timeout(), Some(t0 + secs(5.0)));
        assert_eq!(
            Arc::strong_count(&old),
            1,
            "nobody holds the old one any more"
        );
    }

    #[test]
    fn a_context_wide_interval_change_reaches_live_sessions_without_an_override_only() {
        // Two sessions of one context at 10 s; one overrides its interval to 4 s; the context
        // moves to 3 s at 1 s. The one without an override pings at 4 s (3 s after its last
        // receipt at 1 s), the other keeps pinging every 4 s.
        let t0 = Instant::now();
        let context = Arc::new(
            KeepaliveConfig::default()
                .with_interval_secs(10)
                .with_transmission(deterministic()),
        );
        let mut follows = Keepalive::new(
            PingStyle::Datagram,
            Arc::clone(&context),
            Rng::seeded(1),
            t0,
        );
        let mut own = Keepalive::new(
            PingStyle::Datagram,
            Arc::clone(&context),
            Rng::seeded(2),
            t0,
        );
        own.set_interval(Some(secs(4.0)));
        for k in [&mut follows, &mut own] {
            k.handle_activity(t0 + secs(1.0));
        }
        let changed = Arc::new(context.with_interval(Some(secs(3.0))));
        follows.inherit_config(Arc::clone(&changed));
        own.inherit_config(Arc::clone(&changed));
        let answer = |k: &mut Keepalive, t0: Instant, end: f64| {
            let mut sent = Vec::new();
            while let Some(at) = k.poll_timeout().filter(|&at| at <= t0 + secs(end)) {
                k.handle_timeout(at);
                while let Some(PingTransmit::Datagram { message_id, .. }) = k.poll_transmit() {
                    sent.push((at - t0).as_secs_f64());
                    k.handle_datagram_answer(at, message_id);
                }
            }
            sent
        };
        assert_eq!(answer(&mut follows, t0, 10.5), vec![4.0, 7.0, 10.0]);
        assert_eq!(answer(&mut own, t0, 10.5), vec![5.0, 9.0]);
        assert!(Arc::ptr_eq(&follows.config, &changed));
    }

    #[test]
    fn a_pong_timeout_override_applies_to_its_session_only_and_survives_context_changes() {
        // Two stream sessions pinging every 10 s with the interval as pong timeout; one takes a
        // 2 s pong timeout of its own. The context then raises max_unanswered to 2 for all:
        // both take that, the override stays.
        let t0 = Instant::now();
        let context = Arc::new(KeepaliveConfig::default().with_interval_secs(10));
        let mut other = Keepalive::new(PingStyle::Stream, Arc::clone(&context), Rng::seeded(1), t0);
        let mut own = Keepalive::new(PingStyle::Stream, Arc::clone(&context), Rng::seeded(2), t0);
        own.set_pong_timeout(Some(secs(2.0)));
        let changed = Arc::new(context.with_max_unanswered(2));
        other.inherit_config(Arc::clone(&changed));
        own.inherit_config(Arc::clone(&changed));
        assert_eq!(own.config().pong_timeout, Some(secs(2.0)));
        assert_eq!(own.config().max_unanswered, 2);
        assert_eq!(other.config().pong_timeout, None);
        for k in [&mut other, &mut own] {
            k.handle_established(t0);
        }
        let (tx, ev) = run_until(&mut own, t0, 100.0);
        assert_eq!(times(&tx), vec![10.0, 12.0]);
        assert_eq!(
            ev,
            vec![
                (12.0, KeepaliveEvent::Unanswered { count: 1 }),
                (14.0, KeepaliveEvent::Unanswered { count: 2 }),
                (14.0, KeepaliveEvent::Failed(NackReason::TooManyRetries)),
            ]
        );
        let (tx, ev) = run_until(&mut other, t0, 100.0);
        assert_eq!(times(&tx), vec![10.0, 20.0]);
        assert_eq!(
            ev.last(),
            Some(&(30.0, KeepaliveEvent::Failed(NackReason::TooManyRetries)))
        );
    }

    #[test]
    fn overrides_of_one_setting_leave_the_others_to_the_context() {
        let t0 = Instant::now();
        let context = Arc::new(KeepaliveConfig::default().with_interval_secs(10));
        let mut k = Keepalive::new(PingStyle::Stream, Arc::clone(&context), Rng::seeded(1), t0);
        k.set_max_unanswered(0);
        assert_eq!(k.config().max_unanswered, 1, "0 counts as 1");
        k.set_max_unanswered(5);
        let changed = KeepaliveConfig::default()
            .with_interval_secs(30)
            .with_pong_timeout(secs(3.0))
            .with_max_unanswered(2)
            .with_jitter(0.25);
        k.inherit_config(Arc::new(changed));
        assert_eq!(*k.config(), changed.with_max_unanswered(5));
        // An override to the value the context has is still an override.
        k.set_interval(Some(secs(30.0)));
        k.inherit_config(Arc::new(changed.with_interval_secs(60)));
        assert_eq!(k.config().interval, Some(secs(30.0)));
        // A whole new configuration forgets the overrides.
        k.set_config(changed);
        let next = Arc::new(changed.with_interval_secs(7).with_max_unanswered(9));
        k.inherit_config(Arc::clone(&next));
        assert!(Arc::ptr_eq(&k.config, &next));
    }

    fn datagram(interval: u64, params: TransmissionParams) -> (Keepalive, Instant) {
        let t0 = Instant::now();
        let config = KeepaliveConfig::default()
            .with_interval_secs(interval)
            .with_transmission(params);
        (
            Keepalive::new(PingStyle::Datagram, config, Rng::seeded(1), t0),
            t0,
        )
    }

    fn deterministic() -> TransmissionParams {
        TransmissionParams::default()
            .with_ack_timeout(secs(2.0))
            .with_ack_random_factor(1.0)
            .with_max_retransmit(4)
    }

    /// What happened, with the second (relative to the start) it happened at.
    type Timeline<T> = Vec<(f64, T)>;

    /// Drives the machine through its own deadlines until `end`, returning each transmit and
    /// event with the second (relative to `t0`) it happened at.
    fn run_until(
        k: &mut Keepalive,
        t0: Instant,
        end: f64,
    ) -> (Timeline<PingTransmit>, Timeline<KeepaliveEvent>) {
        let (mut tx, mut ev) = (Vec::new(), Vec::new());
        while let Some(at) = k.poll_timeout() {
            if at > t0 + secs(end) {
                break;
            }
            k.handle_timeout(at);
            let rel = (at - t0).as_secs_f64();
            while let Some(t) = k.poll_transmit() {
                tx.push((rel, t));
            }
            while let Some(e) = k.poll_event() {
                ev.push((rel, e));
            }
        }
        (tx, ev)
    }

    fn times(tx: &[(f64, PingTransmit)]) -> Vec<f64> {
        tx.iter()
            .map(|(t, _)| (t * 1000.0).round() / 1000.0)
            .collect()
    }

    #[test]
    fn a_ping_sent_at_the_instant_of_the_last_receipt_is_still_retransmitted() {
        // Keepalive off, one ping at the session's first instant (`session.ping()` right after
        // connect, in virtual time): nothing was heard since it went out, so it is retransmitted
        // on schedule and, never answered, fails the session.
        let (mut k, t0) = datagram(0, deterministic());
        k.ping_now(t0);
        assert!(k.poll_transmit().is_some());
        let (tx, ev) = run_until(&mut k, t0, 200.0);
        assert_eq!(times(&tx), vec![2.0, 6.0, 14.0, 30.0]);
        assert!(
            ev.iter()
                .any(|(at, e)| *at == 62.0
                    && *e == KeepaliveEvent::Failed(NackReason::TooManyRetries))
        );
    }

    #[test]
    fn silent_udp_peer_follows_rfc7252_schedule_to_the_nack() {
        let (mut k, t0) = datagram(10, deterministic());
        let (tx, ev) = run_until(&mut k, t0, 200.0);
        assert_eq!(times(&tx), vec![10.0, 12.0, 16.0, 24.0, 40.0]);
        let ids: Vec<u16> = tx
            .iter()
            .map(|(_, t)| match t {
                PingTransmit::Datagram { message_id, .. } => *message_id,
                _ => panic!("stream ping on UDP"),
            })
            .collect();
        assert!(
            ids.iter().all(|&id| id == ids[0]),
            "retransmissions keep the MID"
        );
        assert_eq!(
            ev,
            vec![(72.0, KeepaliveEvent::Failed(NackReason::TooManyRetries))]
        );
        assert_eq!(k.stats().retransmissions, 4);
        assert_eq!(k.stats().failures, 1);
        assert_eq!(k.poll_timeout(), None, "a failed session schedules nothing");
        // max_unanswered defaults to 1: the first exhausted ping fails, with no Unanswered event
        // and no second ping.
        assert_eq!(k.config().max_unanswered, 1);
        assert_eq!(k.stats().pings_sent, 1);
    }

    #[test]
    fn random_factor_bounds_the_first_timeout_and_doubles() {
        for seed in 0..50 {
            let t0 = Instant::now();
            let params = TransmissionParams::default()
                .with_ack_timeout(secs(0.2))
                .with_max_retransmit(2);
            let config = KeepaliveConfig::default()
                .with_interval_secs(1)
                .with_transmission(params);
            let mut k = Keepalive::new(PingStyle::Datagram, config, Rng::seeded(seed), t0);
            let (tx, ev) = run_until(&mut k, t0, 10.0);
            assert_eq!(tx.len(), 3);
            let first = tx[1].0 - tx[0].0;
            assert!((0.2..=0.3 + 1e-9).contains(&first), "first timeout {first}");
            assert!(((tx[2].0 - tx[1].0) - 2.0 * first).abs() < 1e-6);
            let give_up = ev[0].0 - tx[0].0;
            assert!((give_up - 7.0 * first).abs() < 1e-6);
            assert!((1.4..=2.1 + 1e-9).contains(&give_up));
        }
    }

    #[test]
    fn rst_answers_the_ping_and_reschedules_from_its_arrival() {
        let (mut k, t0) = datagram(10, deterministic());
        k.handle_timeout(t0 + secs(10.0));
        let Some(PingTransmit::Datagram { message_id, .. }) = k.poll_transmit() else {
            panic!("no ping at 10 s");
        };
        assert!(!k.handle_datagram_answer(t0 + secs(10.1), message_id.wrapping_add(1)));
        // the unrelated RST proves liveness: no retransmission at 12 s, next ping 10 s after it
        let (tx, ev) = run_until(&mut k, t0, 20.5);
        assert_eq!(times(&tx), vec![20.1]);
        assert!(ev.is_empty());
        let (mut k, t0) = datagram(10, deterministic());
        k.handle_timeout(t0 + secs(10.0));
        let Some(PingTransmit::Datagram { message_id, .. }) = k.poll_transmit() else {
            panic!();
        };
        assert!(k.handle_datagram_answer(t0 + secs(10.25), message_id));
        assert_eq!(
            k.poll_event(),
            Some(KeepaliveEvent::Pong { rtt: secs(0.25) })
        );
        assert_eq!(k.poll_timeout(), Some(t0 + secs(20.25)));
        assert_eq!(k.stats().pongs, 1);
        assert_eq!(k.stats().rtt.last, Some(secs(0.25)));
    }

    #[test]
    fn empty_ack_counts_as_pong_too() {
        let (mut k, t0) = datagram(5, deterministic());
        k.handle_timeout(t0 + secs(5.0));
        let Some(PingTransmit::Datagram { message_id, .. }) = k.poll_transmit() else {
            panic!();
        };
        // the session cannot tell RST from ACK here: both come in through the same input
        assert!(k.handle_datagram_answer(t0 + secs(5.1), message_id));
    }

    #[test]
    fn answer_after_a_retransmission_measures_from_the_last_transmission() {
        let (mut k, t0) = datagram(10, deterministic());
        let (tx, _) = run_until(&mut k, t0, 12.0);
        assert_eq!(times(&tx), vec![10.0, 12.0]);
        let PingTransmit::Datagram { message_id, .. } = tx[0].1 else {
            panic!()
        };
        assert!(k.handle_datagram_answer(t0 + secs(12.5), message_id));
        assert_eq!(
            k.poll_event(),
            Some(KeepaliveEvent::Pong { rtt: secs(0.5) })
        );
    }

    #[test]
    fn incoming_traffic_postpones_the_ping_and_outgoing_does_not_exist_here() {
        let (mut k, t0) = datagram(10, deterministic());
        k.handle_activity(t0 + secs(7.0));
        let (tx, _) = run_until(&mut k, t0, 17.5);
        assert_eq!(times(&tx), vec![17.0]);
    }

    #[test]
    fn mark_active_postpones_the_ping() {
        let (mut k, t0) = datagram(10, deterministic());
        k.mark_active(t0 + secs(9.0));
        let (tx, _) = run_until(&mut k, t0, 19.5);
        assert_eq!(times(&tx), vec![19.0]);
    }

    #[test]
    fn cross_traffic_does_not_steal_the_pong() {
        // The peer's own ping arrives while ours is out; our RST-pong still counts with its RTT.
        let (mut k, t0) = datagram(10, deterministic());
        k.handle_timeout(t0 + secs(10.0));
        let Some(PingTransmit::Datagram { message_id, .. }) = k.poll_transmit() else {
            panic!()
        };
        k.note_peer_ping(t0 + secs(10.01));
        assert!(k.handle_datagram_answer(t0 + secs(10.02), message_id));
        assert_eq!(
            k.poll_event(),
            Some(KeepaliveEvent::Pong { rtt: secs(0.02) })
        );
    }

    #[test]
    fn traffic_during_retransmission_ends_the_probe() {
        let (mut k, t0) = datagram(10, deterministic());
        let (tx, _) = run_until(&mut k, t0, 16.0);
        assert_eq!(times(&tx), vec![10.0, 12.0, 16.0]);
        k.handle_activity(t0 + secs(17.0));
        let (tx, ev) = run_until(&mut k, t0, 27.5);
        assert_eq!(
            times(&tx),
            vec![27.0],
            "next ping an interval after the traffic"
        );
        assert!(ev.is_empty());
    }

    fn datagram_tolerating(max_unanswered: u32) -> (Keepalive, Instant) {
        let t0 = Instant::now();
        let config = KeepaliveConfig::default()
            .with_interval_secs(10)
            .with_transmission(deterministic())
            .with_max_unanswered(max_unanswered);
        (
            Keepalive::new(PingStyle::Datagram, config, Rng::seeded(1), t0),
            t0,
        )
    }

    fn message_id_of(transmit: PingTransmit) -> u16 {
        match transmit {
            PingTransmit::Datagram { message_id, .. } => message_id,
            PingTransmit::Stream { .. } => panic!("stream ping on UDP"),
        }
    }

    #[test]
    fn exhausted_datagram_pings_count_as_unanswered_up_to_max_unanswered() {
        // Each ping takes the whole RFC 7252 schedule, 2 + 4 + 8 + 16 + 32 = 62 s with factor
        // 1.0; the next goes out the instant the previous one is given up.
        let (mut k, t0) = datagram_tolerating(3);
        let (tx, ev) = run_until(&mut k, t0, 1000.0);
        assert_eq!(
            times(&tx),
            vec![
                10.0, 12.0, 16.0, 24.0, 40.0, // ping 1
                72.0, 74.0, 78.0, 86.0, 102.0, // ping 2
                134.0, 136.0, 140.0, 148.0, 164.0, // ping 3
            ]
        );
        assert_eq!(
            ev,
            vec![
                (72.0, KeepaliveEvent::Unanswered { count: 1 }),
                (134.0, KeepaliveEvent::Unanswered { count: 2 }),
                (196.0, KeepaliveEvent::Failed(NackReason::TooManyRetries)),
            ]
        );
        // A fresh Message ID per ping (the session's sequence), kept by its retransmissions.
        let ids: Vec<u16> = tx.iter().map(|(_, t)| message_id_of(*t)).collect();
        for (ping, chunk) in ids.chunks(5).enumerate() {
            assert!(chunk.iter().all(|&id| id == chunk[0]));
            assert_eq!(chunk[0], ids[0].wrapping_add(ping as u16));
        }
        let retransmissions: Vec<bool> = tx
            .iter()
            .map(|(_, t)| {
                matches!(
                    t,
                    PingTransmit::Datagram {
                        retransmission: true,
                        ..
                    }
                )
            })
            .collect();
        assert_eq!(retransmissions, [false, true, true, true, true].repeat(3));
        let stats = k.stats();
        assert_eq!(
            (stats.pings_sent, stats.retransmissions, stats.failures),
            (3, 12, 1)
        );
        assert_eq!(k.poll_timeout(), None);
    }

    #[test]
    fn an_answer_to_a_follow_up_ping_resets_the_unanswered_count() {
        let (mut k, t0) = datagram_tolerating(3);
        let (tx, ev) = run_until(&mut k, t0, 72.0);
        assert_eq!(ev, vec![(72.0, KeepaliveEvent::Unanswered { count: 1 })]);
        let (at, second) = *tx.last().unwrap();
        assert_eq!(at, 72.0);
        assert!(k.handle_datagram_answer(t0 + secs(73.0), message_id_of(second)));
        assert_eq!(
            k.poll_event(),
            Some(KeepaliveEvent::Pong { rtt: secs(1.0) })
        );
        // The peer goes silent: the count starts again from zero, so three more whole pings.
        let (tx, ev) = run_until(&mut k, t0, 1000.0);
        assert_eq!(
            times(&tx).iter().step_by(5).copied().collect::<Vec<_>>(),
            vec![83.0, 145.0, 207.0]
        );
        assert_eq!(
            ev,
            vec![
                (145.0, KeepaliveEvent::Unanswered { count: 1 }),
                (207.0, KeepaliveEvent::Unanswered { count: 2 }),
                (269.0, KeepaliveEvent::Failed(NackReason::TooManyRetries)),
            ]
        );
        let stats = k.stats();
        assert_eq!(
            (stats.pings_sent, stats.pongs, stats.retransmissions),
            (5, 1, 16),
            "ping 1: 4 retransmissions, ping 2: none, pings 3 to 5: 4 each"
        );
    }

    #[test]
    fn traffic_during_a_follow_up_ping_resets_the_count_too() {
        // A late RST to the first ping's Message ID answers nothing, but proves the peer alive.
        let (mut k, t0) = datagram_tolerating(2);
        let (tx, _) = run_until(&mut k, t0, 72.0);
        assert!(!k.handle_datagram_answer(t0 + secs(72.5), message_id_of(tx[0].1)));
        let (tx, ev) = run_until(&mut k, t0, 82.6);
        assert!(
            ev.is_empty(),
            "the follow-up ping is dropped quietly: {ev:?}"
        );
        assert_eq!(
            times(&tx),
            vec![82.5],
            "next ping an interval after the RST"
        );
        let (_, ev) = run_until(&mut k, t0, 1000.0);
        assert_eq!(
            ev,
            vec![
                (144.5, KeepaliveEvent::Unanswered { count: 1 }),
                (206.5, KeepaliveEvent::Failed(NackReason::TooManyRetries)),
            ]
        );
    }

    #[test]
    fn a_request_in_flight_stands_in_for_the_follow_up_ping() {
        let (mut k, t0) = datagram_tolerating(3);
        let (_, _) = run_until(&mut k, t0, 50.0);
        k.set_request_in_flight(t0 + secs(50.0), true);
        let (tx, ev) = run_until(&mut k, t0, 500.0);
        assert!(tx.is_empty(), "no ping beside the request (NSTART = 1)");
        assert_eq!(ev, vec![(72.0, KeepaliveEvent::Unanswered { count: 1 })]);
        assert_eq!(k.poll_timeout(), None, "the request is the probe");
        // The request ends without an answer (cancelled): pinging resumes at once, and the
        // count goes on from where it was.
        k.set_request_in_flight(t0 + secs(500.0), false);
        assert!(k.poll_timeout().is_some_and(|due| due <= t0 + secs(500.0)));
        k.handle_timeout(t0 + secs(500.0));
        assert!(matches!(
            k.poll_transmit(),
            Some(PingTransmit::Datagram {
                retransmission: false,
                ..
            })
        ));
        let (_, ev) = run_until(&mut k, t0, 1000.0);
        assert_eq!(
            ev,
            vec![
                (562.0, KeepaliveEvent::Unanswered { count: 2 }),
                (624.0, KeepaliveEvent::Failed(NackReason::TooManyRetries)),
            ]
        );
    }

    #[test]
    fn with_keepalive_off_the_application_sends_every_ping() {
        // `ping` numbers every ping it sends: the machine sends no follow-up of its own.
        let config = KeepaliveConfig::default()
            .with_transmission(deterministic())
            .with_max_unanswered(3);
        let t0 = Instant::now();
        let mut k = Keepalive::new(PingStyle::Datagram, config, Rng::seeded(1), t0);
        k.ping_now(t0 + secs(1.0));
        assert!(k.poll_transmit().is_some());
        let (tx, ev) = run_until(&mut k, t0, 1000.0);
        assert_eq!(
            times(&tx),
            vec![3.0, 7.0, 15.0, 31.0],
            "retransmissions only"
        );
        assert_eq!(ev, vec![(63.0, KeepaliveEvent::Unanswered { count: 1 })]);
        assert_eq!(k.poll_timeout(), None);
        assert_eq!(k.stats().pings_sent, 1);
        // The next one is the application's, and the count goes on.
        k.ping_now(t0 + secs(100.0));
        assert!(k.poll_transmit().is_some());
        let (_, ev) = run_until(&mut k, t0, 1000.0);
        assert_eq!(ev, vec![(162.0, KeepaliveEvent::Unanswered { count: 2 })]);

        let (mut k, t0) = stream(0, Some(3.0), 2);
        k.handle_established(t0);
        k.ping_now(t0 + secs(1.0));
        assert!(k.poll_transmit().is_some());
        let (tx, ev) = run_until(&mut k, t0, 100.0);
        assert!(tx.is_empty(), "no follow-up Ping: {tx:?}");
        assert_eq!(ev, vec![(4.0, KeepaliveEvent::Unanswered { count: 1 })]);
    }

    #[test]
    fn total_loss_is_detected_within_max_unanswered_exchange_bounds() {
        // With the default random factor each ping is given up between 62 s and
        // MAX_TRANSMIT_WAIT (93 s) after its first transmission.
        let params = TransmissionParams::default();
        let (lower, upper) = (secs(62.0), params.max_transmit_wait());
        for seed in 0..50 {
            let t0 = Instant::now();
            let config = KeepaliveConfig::default()
                .with_interval_secs(10)
                .with_max_unanswered(3);
            let mut k = Keepalive::new(PingStyle::Datagram, config, Rng::seeded(seed), t0);
            let (tx, ev) = run_until(&mut k, t0, 1000.0);
            assert_eq!(tx.len(), 15);
            let (failed_at, failure) = *ev.last().unwrap();
            assert_eq!(failure, KeepaliveEvent::Failed(NackReason::TooManyRetries));
            let detection = secs(failed_at - tx[0].0);
            assert!(
                detection >= lower * 3 && detection <= upper * 3,
                "seed {seed}: {detection:?}"
            );
        }
    }

    #[test]
    fn keepalive_off_schedules_nothing_and_can_be_turned_on() {
        let (mut k, t0) = datagram(0, deterministic());
        assert_eq!(k.poll_timeout(), None);
        k.handle_activity(t0 + secs(3.0));
        k.set_interval(Some(secs(4.0)));
        assert_eq!(k.poll_timeout(), Some(t0 + secs(7.0)));
        k.set_interval(None);
        assert_eq!(k.poll_timeout(), None);
    }

    #[test]
    fn jitter_brings_pings_forward_within_the_fraction() {
        let t0 = Instant::now();
        let mut seen = Vec::new();
        for seed in 0..200 {
            let config = KeepaliveConfig::default()
                .with_interval_secs(30)
                .with_jitter(0.2);
            let mut k = Keepalive::new(PingStyle::Datagram, config, Rng::seeded(seed), t0);
            let due = (k.poll_timeout().unwrap() - t0).as_secs_f64();
            assert!((24.0..=30.0).contains(&due), "due {due}");
            k.handle_timeout(t0 + secs(due));
            assert!(k.poll_transmit().is_some());
            seen.push(due);
        }
        let spread = seen.iter().cloned().fold(f64::MIN, f64::max)
            - seen.iter().cloned().fold(f64::MAX, f64::min);
        assert!(spread > 5.0, "pings spread over the jitter window");
    }

    #[test]
    fn same_seed_same_instants_and_ids() {
        let run = || {
            let t0 = Instant::now();
            let config = KeepaliveConfig::default()
                .with_interval_secs(3)
                .with_jitter(0.5);
            let mut k = Keepalive::new(PingStyle::Datagram, config, Rng::seeded(42), t0);
            let (tx, ev) = run_until(&mut k, t0, 300.0);
            (
                times(&tx),
                tx.iter().map(|t| t.1).collect::<Vec<_>>(),
                ev.len(),
            )
        };
        assert_eq!(run(), run());
    }

    fn stream(
        interval: u64,
        pong_timeout: Option<f64>,
        max_unanswered: u32,
    ) -> (Keepalive, Instant) {
        let t0 = Instant::now();
        let mut config = KeepaliveConfig::default()
            .with_interval_secs(interval)
            .with_max_unanswered(max_unanswered);
        if let Some(p) = pong_timeout {
            config = config.with_pong_timeout(secs(p));
        }
        (
            Keepalive::new(PingStyle::Stream, config, Rng::seeded(3), t0),
            t0,
        )
    }

    #[test]
    fn stream_never_pings_before_the_csm() {
        let (mut k, t0) = stream(2, None, 1);
        assert_eq!(k.poll_timeout(), None);
        k.handle_timeout(t0 + secs(100.0));
        assert!(k.poll_transmit().is_none());
        k.handle_established(t0 + secs(5.0));
        let (tx, _) = run_until(&mut k, t0, 7.5);
        assert_eq!(times(&tx), vec![7.0]);
        assert!(matches!(tx[0].1, PingTransmit::Stream { .. }));
    }

    #[test]
    fn silent_stream_peer_fails_after_the_pong_timeout() {
        // default pong timeout = interval: libcoap's "disconnect at 2n"
        let (mut k, t0) = stream(10, None, 1);
        k.handle_established(t0);
        let (tx, ev) = run_until(&mut k, t0, 100.0);
        assert_eq!(times(&tx), vec![10.0]);
        assert_eq!(
            ev,
            vec![
                (20.0, KeepaliveEvent::Unanswered { count: 1 }),
                (20.0, KeepaliveEvent::Failed(NackReason::TooManyRetries))
            ]
        );
    }

    #[test]
    fn max_unanswered_pings_back_to_back_then_fails() {
        let (mut k, t0) = stream(10, Some(3.0), 3);
        k.handle_established(t0);
        let (tx, ev) = run_until(&mut k, t0, 100.0);
        assert_eq!(times(&tx), vec![10.0, 13.0, 16.0]);
        let tokens: Vec<_> = tx.iter().map(|t| t.1).collect();
        assert_ne!(tokens[0], tokens[1], "each ping has a fresh token");
        assert_eq!(
            ev.last(),
            Some(&(19.0, KeepaliveEvent::Failed(NackReason::TooManyRetries)))
        );
    }

    #[test]
    fn pong_with_matching_token_or_no_token_answers() {
        let (mut k, t0) = stream(10, Some(3.0), 1);
        k.handle_established(t0);
        k.handle_timeout(t0 + secs(10.0));
        let Some(PingTransmit::Stream { token }) = k.poll_transmit() else {
            panic!()
        };
        // a wrong token does not answer (but the traffic still proves liveness)
        assert!(!k.handle_pong(t0 + secs(10.1), &[9, 9, 9, 9]));
        let (mut k, t0) = stream(10, Some(3.0), 1);
        k.handle_established(t0);
        k.handle_timeout(t0 + secs(10.0));
        assert!(k.poll_transmit().is_some());
        assert!(
            k.handle_pong(t0 + secs(10.2), &[]),
            "libcoap's tokenless Pong"
        );
        assert_eq!(
            k.poll_event(),
            Some(KeepaliveEvent::Pong { rtt: secs(0.2) })
        );
        let _ = token;
    }

    #[test]
    fn unsolicited_pong_is_no_pong() {
        let (mut k, t0) = stream(10, None, 1);
        k.handle_established(t0);
        assert!(!k.handle_pong(t0 + secs(1.0), &[]));
        assert_eq!(k.poll_event(), None);
    }

    #[test]
    fn request_in_flight_suppresses_pings_and_its_end_restores_them() {
        let (mut k, t0) = datagram(10, deterministic());
        k.set_request_in_flight(t0 + secs(1.0), true);
        let (tx, _) = run_until(&mut k, t0, 50.0);
        assert!(tx.is_empty(), "no ping while the request is the probe");
        // the response arrives at 51 s: activity, then the request is done
        k.handle_activity(t0 + secs(51.0));
        k.set_request_in_flight(t0 + secs(51.0), false);
        let (tx, _) = run_until(&mut k, t0, 61.5);
        assert_eq!(times(&tx), vec![61.0]);
    }

    #[test]
    fn failing_request_fails_the_session_once() {
        let (mut k, _t0) = datagram(10, deterministic());
        k.fail(NackReason::TooManyRetries);
        k.fail(NackReason::NotDeliverable);
        assert_eq!(
            k.poll_event(),
            Some(KeepaliveEvent::Failed(NackReason::TooManyRetries))
        );
        assert_eq!(k.poll_event(), None);
        assert_eq!(k.failure(), Some(NackReason::TooManyRetries));
    }

    #[test]
    fn closed_machine_is_silent() {
        let (mut k, t0) = datagram(1, deterministic());
        k.close();
        k.handle_timeout(t0 + secs(100.0));
        assert!(k.poll_transmit().is_none());
        assert!(k.poll_event().is_none());
        assert!(k.poll_timeout().is_none());
    }

    #[test]
    fn encoded_pings_match_the_wire_vectors() {
        let d = PingTransmit::Datagram {
            message_id: 0x1234,
            retransmission: false,
        };
        assert_eq!(d.encode(), [0x40, 0x00, 0x12, 0x34]);
        let s = PingTransmit::Stream {
            token: [1, 2, 3, 4],
        };
        assert_eq!(s.encode(), [0x04, 0xe2, 1, 2, 3, 4]);
    }

    #[test]
    fn huge_intervals_mean_never_instead_of_overflowing() {
        // Found by the keepalive_machine fuzz target: `set_keepalive(u64::MAX)` panicked with
        // "overflow when adding duration to instant" when the ping was scheduled.
        let t0 = Instant::now();
        let huge = Duration::from_secs(u64::MAX);
        let config = KeepaliveConfig::default()
            .with_interval(Some(huge))
            .with_jitter(1.0);
        let mut k = Keepalive::new(PingStyle::Datagram, config, Rng::seeded(3), t0);
        assert!(k.poll_timeout().is_some_and(|due| due > t0 + secs(1e9)));
        k.set_interval(Some(huge));
        k.handle_activity(t0 + secs(1.0));
        k.handle_timeout(t0 + secs(2.0));
        assert!(k.poll_transmit().is_none());
        // Over a stream the interval is also the pong timeout of an explicit ping.
        let mut k = Keepalive::new(PingStyle::Stream, config, Rng::seeded(3), t0);
        k.handle_established(t0);
        k.ping_now(t0);
        assert!(k.poll_transmit().is_some());
        assert!(k
            .poll_timeout()
            .is_some_and(|deadline| deadline > t0 + secs(1e9)));
    }
    #[test]
    fn stats_are_offered_at_every_transmission_retransmission_and_pong() {
        let (mut k, t0) = datagram(10, deterministic());
        assert_eq!(k.poll_stats(), None, "nothing happened yet");
        k.handle_timeout(t0 + secs(10.0));
        let PingTransmit::Datagram { message_id, .. } = k.poll_transmit().unwrap() else {
            panic!("a datagram ping")
        };
        assert_eq!(k.poll_stats().map(|s| s.pings_sent), Some(1));
        assert_eq!(k.poll_stats(), None, "offered once");
        assert!(k.is_awaiting_pong());
        k.handle_timeout(t0 + secs(12.0));
        assert!(k.poll_transmit().is_some());
        assert_eq!(k.poll_stats().map(|s| s.retransmissions), Some(1));
        // Traffic that answers nothing changes no counter.
        k.handle_activity(t0 + secs(12.5));
        assert_eq!(k.poll_stats(), None);
        assert!(k.handle_datagram_answer(t0 + secs(13.0), message_id));
        let stats = k.poll_stats().unwrap();
        assert_eq!((stats.pongs, stats.rtt.last), (1, Some(secs(1.0))));
        assert!(!k.is_awaiting_pong());
        k.note_peer_ping(t0 + secs(14.0));
        assert_eq!(k.poll_stats().map(|s| s.pings_received), Some(1));
        k.fail(NackReason::NotDeliverable);
        assert_eq!(k.poll_stats().map(|s| s.failures), Some(1));
    }

    #[test]
    fn what_poll_stats_offers_is_never_behind_the_counters() {
        // Random inputs at random instants; after each, a driver that publishes what
        // poll_stats offers holds exactly the machine's counters and outstanding state.
        for seed in 0..80 {
            let mut ops = Rng::seeded(seed);
            let style = if seed % 2 == 0 {
                PingStyle::Datagram
            } else {
                PingStyle::Stream
            };
            let t0 = Instant::now();
            // Half the runs with keepalive off: only the application's pings (ping_now).
            let interval = if seed % 4 < 2 { 3 } else { 0 };
            let config = KeepaliveConfig::default()
                .with_interval_secs(interval)
                .with_max_unanswered(2)
                .with_transmission(deterministic());
            let mut k = Keepalive::new(style, config, Rng::seeded(seed), t0);
            k.handle_established(t0);
            let mut published = (k.stats(), k.is_awaiting_pong());
            let mut now = t0;
            let mut last_id = 0u16;
            let mut last_token = [0u8; PING_TOKEN_LEN];
            for _ in 0..300 {
                now += Duration::from_millis(ops.next_u64() % 1500);
                match ops.next_u64() % 6 {
                    0 => k.handle_activity(now),
                    1 => k.ping_now(now),
                    2 => {
                        k.handle_datagram_answer(now, last_id);
                    }
                    3 => {
                        k.handle_pong(now, &last_token);
                    }
                    4 => k.note_peer_ping(now),
                    _ => k.handle_timeout(now),
                }
                while let Some(t) = k.poll_transmit() {
                    match t {
                        PingTransmit::Datagram { message_id, .. } => last_id = message_id,
                        PingTransmit::Stream { token } => last_token = token,
                    }
                }
                while k.poll_event().is_some() {}
                if let Some(stats) = k.poll_stats() {
                    published = (stats, k.is_awaiting_pong());
                }
                assert_eq!(published, (k.stats(), k.is_awaiting_pong()), "seed {seed}");
            }
        }
    }

    #[test]
    fn a_ping_dropped_quietly_is_offered_too() {
        // The probe ends without a pong (the peer was heard from): no longer awaiting.
        let (mut k, t0) = datagram(10, deterministic());
        k.handle_timeout(t0 + secs(10.0));
        k.poll_transmit();
        k.poll_stats();
        k.handle_activity(t0 + secs(11.0));
        k.handle_timeout(t0 + secs(12.0));
        assert!(!k.is_awaiting_pong());
        assert!(k.poll_stats().is_some());
    }

    #[test]
    fn accumulated_smoothed_rtt_is_weighted_by_pongs() {
        let session = |pongs: u64, smoothed_ms: u64| Stats {
            pongs,
            rtt: RttStats {
                last: Some(Duration::from_millis(smoothed_ms)),
                min: Some(Duration::from_millis(smoothed_ms)),
                smoothed: Some(Duration::from_millis(smoothed_ms)),
                max: Some(Duration::from_millis(smoothed_ms)),
            },
            ..Stats::default()
        };
        let mut total = Stats::default();
        total.accumulate(&session(1, 10));
        total.accumulate(&Stats::default());
        total.accumulate(&session(3, 50));
        assert_eq!(total.pongs, 4);
        assert_eq!(total.rtt.smoothed, Some(Duration::from_millis(40)));
        assert_eq!(total.rtt.min, Some(Duration::from_millis(10)));
        assert_eq!(total.rtt.max, Some(Duration::from_millis(50)));
    }

    #[test]
    fn messages_are_counted_up_to_three_beside_the_other_flags() {
        let mut k = Keepalive::new(
            PingStyle::Stream,
            KeepaliveConfig::default(),
            Rng::seeded(1),
            Instant::now(),
        );
        k.set_request_in_flight(Instant::now(), true);
        for expected in [1, 2, 3, 3, 3] {
            k.count_message();
            assert_eq!(k.messages_counted(), expected);
        }
        assert_eq!(k.style(), PingStyle::Stream);
        assert!(!k.is_established());
        assert!(k.flags.contains(Flags::REQUEST_IN_FLIGHT));
    }

    #[test]
    #[cfg(target_pointer_width = "64")]
    fn the_machine_stays_small() {
        // Most of an idle session (issue 15): a field added here costs every session.
        let size = std::mem::size_of::<Keepalive>();
        println!("Keepalive {size} bytes");
        assert!(size <= 152, "Keepalive is {size} bytes");
    }

    #[test]
    fn outbox_queues_are_first_in_first_out_past_their_inline_items() {
        let mut q: Outbox<u32, char> = Outbox::default();
        q.push_transmit(1u32);
        q.push_event('a');
        q.push_transmit(2u32);
        q.push_event('b');
        assert_eq!(q.pop_transmit(), Some(1));
        q.push_transmit(3u32);
        assert_eq!(q.pop_transmit(), Some(2));
        assert_eq!(q.pop_event(), Some('a'));
        assert_eq!(q.pop_transmit(), Some(3));
        assert_eq!(q.pop_transmit(), None);
        assert!(q.spill.is_some(), "an event is still in the spill");
        assert_eq!(q.pop_event(), Some('b'));
        assert_eq!(q.pop_event(), None);
        assert!(q.spill.is_none(), "a drained spill is dropped");
        q.push_transmit(4u32);
        q.push_transmit(5u32);
        q.push_event('c');
        q.clear_transmits();
        assert_eq!(q.pop_transmit(), None);
        assert_eq!(q.pop_event(), Some('c'));
        assert!(q.spill.is_none());
    }
}
