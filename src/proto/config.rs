//! Keepalive settings and the RFC 7252 §4.8 transmission parameters.

use std::time::Duration;

use crate::proto::error::{Error, Result};

/// NSTART (RFC 7252 §4.8): Confirmable messages outstanding to one peer. Always 1 here — a
/// request in flight stands in for the keepalive ping, and a second Confirmable request waits
/// until the first is acknowledged — so it is a constant, not a setting.
pub const NSTART: u32 = 1;

/// RFC 7252 §4.8 transmission parameters: how a Confirmable message (a UDP / DTLS ping or request)
/// is retransmitted before it is given up. NSTART is the constant [`NSTART`].
///
/// The first timeout is drawn uniformly from `[ack_timeout, ack_timeout * ack_random_factor]` and
/// doubles on each of the `max_retransmit` retransmissions; after the last one the message is given
/// up when the doubled timeout expires once more.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct TransmissionParams {
    /// ACK_TIMEOUT. Default 2 s.
    pub ack_timeout: Duration,
    /// ACK_RANDOM_FACTOR, at least 1.0. Default 1.5.
    pub ack_random_factor: f64,
    /// MAX_RETRANSMIT, at most 20. Default 4.
    pub max_retransmit: u32,
}

impl Default for TransmissionParams {
    fn default() -> Self {
        TransmissionParams {
            ack_timeout: Duration::from_secs(2),
            ack_random_factor: 1.5,
            max_retransmit: 4,
        }
    }
}

impl TransmissionParams {
    /// The parameters with the given ACK_TIMEOUT, the rest unchanged.
    pub fn with_ack_timeout(mut self, ack_timeout: Duration) -> Self {
        self.ack_timeout = ack_timeout;
        self
    }

    /// The parameters with the given ACK_RANDOM_FACTOR, the rest unchanged.
    pub fn with_ack_random_factor(mut self, factor: f64) -> Self {
        self.ack_random_factor = factor;
        self
    }

    /// The parameters with the given MAX_RETRANSMIT, the rest unchanged.
    pub fn with_max_retransmit(mut self, max_retransmit: u32) -> Self {
        self.max_retransmit = max_retransmit;
        self
    }

    /// MAX_TRANSMIT_SPAN: the longest time from the first transmission to the last retransmission,
    /// `ack_timeout * (2^max_retransmit - 1) * ack_random_factor` (45 s with the defaults).
    pub fn max_transmit_span(&self) -> Duration {
        self.ack_timeout
            .mul_f64(((1u64 << self.max_retransmit.min(32)) - 1) as f64 * self.ack_random_factor)
    }

    /// MAX_TRANSMIT_WAIT: the longest time from the first transmission until the message is given
    /// up, `ack_timeout * (2^(max_retransmit + 1) - 1) * ack_random_factor` (93 s with the defaults).
    pub fn max_transmit_wait(&self) -> Duration {
        self.ack_timeout.mul_f64(
            ((1u64 << (self.max_retransmit.min(32) + 1)) - 1) as f64 * self.ack_random_factor,
        )
    }

    /// EXCHANGE_LIFETIME: how long a Message ID must be remembered for deduplication,
    /// `MAX_TRANSMIT_SPAN + 2 * MAX_LATENCY (100 s) + PROCESSING_DELAY (= ACK_TIMEOUT)`
    /// (247 s with the defaults).
    pub fn exchange_lifetime(&self) -> Duration {
        self.max_transmit_span() + Duration::from_secs(200) + self.ack_timeout
    }

    /// Checks the parameters; the error names the field that is wrong: a positive
    /// `ack_timeout`, an `ack_random_factor` of at least 1.0 (RFC 7252 §4.8: it MUST NOT be
    /// below 1.0), at most 20 `max_retransmit` (beyond that the doubling timeout is
    /// meaningless), and a MAX_TRANSMIT_WAIT that fits in a century (so that no deadline
    /// computed from them overflows).
    pub fn validate(&self) -> Result<()> {
        if self.ack_timeout.is_zero() {
            return Err(Error::Config(
                "ack_timeout must be positive, got 0 s".into(),
            ));
        }
        if !(self.ack_random_factor >= 1.0 && self.ack_random_factor.is_finite()) {
            return Err(Error::Config(format!(
                "ack_random_factor must be at least 1.0, got {}",
                self.ack_random_factor
            )));
        }
        if self.max_retransmit > MAX_RETRANSMIT_LIMIT {
            return Err(Error::Config(format!(
                "max_retransmit must be at most {MAX_RETRANSMIT_LIMIT}, got {}",
                self.max_retransmit
            )));
        }
        let wait = self.ack_timeout.as_secs_f64()
            * ((1u64 << (self.max_retransmit + 1)) - 1) as f64
            * self.ack_random_factor;
        if wait > CENTURY.as_secs_f64() {
            return Err(Error::Config(format!(
                "ack_timeout {:?} with ack_random_factor {} and max_retransmit {} make \
                 MAX_TRANSMIT_WAIT {wait:.0} s, more than a century",
                self.ack_timeout, self.ack_random_factor, self.max_retransmit
            )));
        }
        Ok(())
    }
}

/// The largest MAX_RETRANSMIT accepted.
const MAX_RETRANSMIT_LIMIT: u32 = 20;

/// Longer than any timeout a setting may lead to.
const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// What an ICMP error (destination or port unreachable) reported for a UDP session's peer does.
///
/// RFC 8085 §5.2 calls ICMP errors soft: they can be transient (a route flapping, a server that
/// restarts) and they can be forged. A port unreachable on loopback or a LAN is nonetheless
/// nearly always the truth — nobody listens there — and waiting out the whole RFC 7252 schedule
/// (up to MAX_TRANSMIT_WAIT, 93 s) to report what the kernel said on the first ping helps no
/// one, so the default fails the session at once, as libcoap reports `COAP_NACK_ICMP_ISSUE`.
/// [`IcmpPolicy::Soft`] is there for paths where that is wrong.
///
/// Only errors the socket can attribute to the session's peer count: a client's UDP socket is
/// connected to its one peer, so the kernel's report (`ECONNREFUSED`, `EHOSTUNREACH`,
/// `ENETUNREACH` on the next receive or send) can only be about it. A server's socket serves
/// many peers unconnected: Linux reports nothing there unless `IP_RECVERR` is set, and then an
/// `ECONNREFUSED` that names no peer (only the socket's error queue does). The server ignores
/// such errors and its sessions' retransmission schedules decide, without harm to the socket or
/// any other session; this also keeps an off-path attacker who forges ICMP errors from ending a
/// server's sessions. DTLS sessions are not affected by this setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum IcmpPolicy {
    /// Fail the session with [`NackReason::IcmpError`](crate::NackReason::IcmpError) on the
    /// first ICMP error for its peer. The default.
    #[default]
    Fail,
    /// Treat it as a soft error (RFC 8085 §5.2): note it, keep retransmitting, and let the
    /// schedule decide (`TooManyRetries` if nothing ever answers).
    Soft,
}

/// How a session keeps its peer alive.
///
/// A `Context` holds one of these (set with `ContextBuilder` or `Context::set_keepalive_config`),
/// shared by every session that has no setting of its own; `Session::set_keepalive_interval`,
/// `Session::set_pong_timeout` and `Session::set_max_unanswered` override one setting of one
/// session, and a later context-wide change leaves that setting of that session alone.
///
/// A program that drives [`Keepalive`](crate::proto::keepalive::Keepalive) itself should
/// [`validate`](KeepaliveConfig::validate) the configuration first.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct KeepaliveConfig {
    /// Send a ping after this long without receiving anything from the peer. `None` disables
    /// keepalive (the peer's pings are still answered). Default `None`, as in libcoap.
    pub interval: Option<Duration>,
    /// Fraction of the interval (0.0 to 1.0) by which each ping is randomly brought forward, so
    /// that the pings of many sessions spread out. Default 0.0.
    pub jitter: f64,
    /// Retransmission of UDP / DTLS pings. Default: the RFC 7252 values.
    pub transmission: TransmissionParams,
    /// How long a TCP / TLS ping waits for its Pong before it counts as unanswered. `None` means
    /// the keepalive interval itself, so a dead peer is declared after twice the interval, as
    /// libcoap does. Default `None`.
    pub pong_timeout: Option<Duration>,
    /// Consecutive unanswered pings that fail the session, at least 1. Default 1.
    ///
    /// A TCP / TLS ping is unanswered when its pong timeout passes; a UDP / DTLS ping when its
    /// RFC 7252 retransmissions are exhausted (MAX_TRANSMIT_WAIT at most). Below the limit
    /// [`KeepaliveEvent::Unanswered`](crate::proto::keepalive::KeepaliveEvent::Unanswered) is reported
    /// and, with keepalive on, the next ping goes out at once (over UDP / DTLS with a new
    /// Message ID and a new retransmission schedule); with keepalive off (`interval` `None`)
    /// the application sends the next one itself, if it wants one. Anything received from the
    /// peer resets the count. Raise it on lossy links:
    /// with loss `l` each way a UDP ping of a live peer goes unanswered with probability
    /// `q = (1 - (1 - l)^2)^(1 + MAX_RETRANSMIT)` (0.36^5 = 0.6 % at 20 % and the defaults), and a
    /// ping cycle of a live peer fails with `q^max_unanswered` (0.36^15 = 2e-7 with 3), at the
    /// price of detecting a dead peer up to `max_unanswered` times later (279 s with 3).
    pub max_unanswered: u32,
    /// What an ICMP error for a UDP session's peer does. Default [`IcmpPolicy::Fail`].
    pub icmp: IcmpPolicy,
}

impl Default for KeepaliveConfig {
    fn default() -> Self {
        KeepaliveConfig {
            interval: None,
            jitter: 0.0,
            transmission: TransmissionParams::default(),
            pong_timeout: None,
            max_unanswered: 1,
            icmp: IcmpPolicy::Fail,
        }
    }
}

impl KeepaliveConfig {
    /// The configuration with keepalive every `secs` idle seconds, libcoap's `-K` (0 disables).
    pub fn with_interval_secs(mut self, secs: u64) -> Self {
        self.interval = (secs > 0).then(|| Duration::from_secs(secs));
        self
    }

    /// The configuration with the given idle interval (`None` or zero disables keepalive).
    pub fn with_interval(mut self, interval: Option<Duration>) -> Self {
        self.interval = interval.filter(|d| !d.is_zero());
        self
    }

    /// The configuration with the given jitter fraction.
    pub fn with_jitter(mut self, jitter: f64) -> Self {
        self.jitter = jitter;
        self
    }

    /// The configuration with the given transmission parameters.
    pub fn with_transmission(mut self, transmission: TransmissionParams) -> Self {
        self.transmission = transmission;
        self
    }

    /// The configuration with the given pong timeout.
    pub fn with_pong_timeout(mut self, timeout: Duration) -> Self {
        self.pong_timeout = Some(timeout);
        self
    }

    /// The configuration with the given number of consecutive unanswered pings that fail a
    /// session (any transport; see [`KeepaliveConfig::max_unanswered`]).
    pub fn with_max_unanswered(mut self, n: u32) -> Self {
        self.max_unanswered = n;
        self
    }

    /// The configuration with the given ICMP error policy.
    pub fn with_icmp_policy(mut self, policy: IcmpPolicy) -> Self {
        self.icmp = policy;
        self
    }

    /// The pong timeout in force: the configured one, else the interval.
    pub fn effective_pong_timeout(&self) -> Option<Duration> {
        self.pong_timeout.or(self.interval)
    }

    /// Checks every field; the error names the one that is wrong (see
    /// [`TransmissionParams::validate`] for the transmission parameters): a `jitter` between 0.0
    /// and 1.0, a positive `pong_timeout`, and at least 1 `max_unanswered`.
    pub fn validate(&self) -> Result<()> {
        self.transmission.validate()?;
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(Error::Config(format!(
                "jitter must be between 0.0 and 1.0, got {}",
                self.jitter
            )));
        }
        if self.max_unanswered == 0 {
            return Err(Error::Config(
                "max_unanswered must be at least 1, got 0".into(),
            ));
        }
        if self.pong_timeout.is_some_and(|t| t.is_zero()) {
            return Err(Error::Config(
                "pong_timeout must be positive, got 0 s".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7252_derived_times() {
        let p = TransmissionParams::default();
        assert_eq!(p.max_transmit_span(), Duration::from_secs(45));
        assert_eq!(p.max_transmit_wait(), Duration::from_secs(93));
        assert_eq!(p.exchange_lifetime(), Duration::from_secs(247));
    }

    #[test]
    fn zero_interval_disables() {
        assert_eq!(
            KeepaliveConfig::default().with_interval_secs(0).interval,
            None
        );
        assert_eq!(
            KeepaliveConfig::default().with_interval_secs(3).interval,
            Some(Duration::from_secs(3))
        );
    }

    #[test]
    fn validation_names_the_field_and_the_value() {
        let transmission = TransmissionParams::default;
        let cases = [
            (
                KeepaliveConfig::default().with_jitter(1.5),
                "jitter must be between 0.0 and 1.0, got 1.5",
            ),
            (
                KeepaliveConfig::default().with_jitter(f64::NAN),
                "jitter must be between 0.0 and 1.0, got NaN",
            ),
            (
                KeepaliveConfig::default()
                    .with_transmission(transmission().with_ack_random_factor(0.5)),
                "ack_random_factor must be at least 1.0, got 0.5",
            ),
            (
                KeepaliveConfig::default()
                    .with_transmission(transmission().with_ack_random_factor(f64::INFINITY)),
                "ack_random_factor must be at least 1.0, got inf",
            ),
            (
                KeepaliveConfig::default()
                    .with_transmission(transmission().with_ack_timeout(Duration::ZERO)),
                "ack_timeout must be positive",
            ),
            (
                KeepaliveConfig::default()
                    .with_transmission(transmission().with_max_retransmit(21)),
                "max_retransmit must be at most 20, got 21",
            ),
            (
                KeepaliveConfig::default().with_transmission(
                    transmission()
                        .with_ack_timeout(Duration::from_secs(1 << 20))
                        .with_max_retransmit(20),
                ),
                "MAX_TRANSMIT_WAIT",
            ),
            (
                KeepaliveConfig::default().with_max_unanswered(0),
                "max_unanswered must be at least 1, got 0",
            ),
            (
                KeepaliveConfig::default().with_pong_timeout(Duration::ZERO),
                "pong_timeout must be positive",
            ),
        ];
        for (config, expected) in cases {
            let error = config.validate().unwrap_err().to_string();
            assert!(
                error.contains(expected),
                "{error:?} should say {expected:?}"
            );
        }
        assert!(KeepaliveConfig::default()
            .with_max_unanswered(3)
            .with_transmission(transmission().with_max_retransmit(20))
            .validate()
            .is_ok());
        assert!(KeepaliveConfig::default().validate().is_ok());
    }
}
