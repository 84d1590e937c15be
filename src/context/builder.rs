//! [`ContextBuilder`]: loose values in, a [`Context`] whose settings cannot be invalid out. Each
//! value is checked once, at [`ContextBuilder::build`], and an error names the field.

use std::time::Duration;

use crate::context::Context;
use crate::proto::config::{IcmpPolicy, KeepaliveConfig};
use crate::proto::error::Result;
use crate::runtime::settings::ContextSettings;

/// Builds a [`Context`] from validated settings: [`Context::builder`]`()`, any of the setters,
/// then [`build`](ContextBuilder::build), which checks every value once and names the field of
/// the first one that is out of range.
///
/// ```
/// use std::time::Duration;
/// use coap_keepalive::Context;
///
/// # fn main() -> coap_keepalive::Result<()> {
/// let ctx = Context::builder()
///     .keepalive(Duration::from_secs(30))
///     .jitter(0.1)
///     .ack_timeout(Duration::from_secs(1))
///     .max_unanswered(3)
///     .connect_timeout(Duration::from_secs(5))
///     .build()?;
/// assert_eq!(ctx.keepalive_config().interval, Some(Duration::from_secs(30)));
///
/// let error = Context::builder().ack_random_factor(0.5).build().unwrap_err();
/// assert_eq!(
///     error.to_string(),
///     "invalid configuration: ack_random_factor must be at least 1.0, got 0.5"
/// );
/// # Ok(()) }
/// ```
///
/// The keepalive settings are the context-wide ones: every session starts from them, and
/// [`Context::set_keepalive`] / [`Context::set_keepalive_config`] change them later for every
/// live session that has not overridden that setting (see [`Context`]).
#[derive(Debug, Clone, Default)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct ContextBuilder {
    settings: ContextSettings,
    keepalive: KeepaliveConfig,
}

impl ContextBuilder {
    /// A builder with every setting at its default.
    pub fn new() -> ContextBuilder {
        ContextBuilder::default()
    }

    /// Checks every value and builds the context. The error, [`Error::Config`](crate::Error::Config), names the first
    /// field that is out of range and the value it got.
    pub fn build(self) -> Result<Context> {
        self.keepalive.validate()?;
        self.settings.validate()?;
        Ok(Context::from_settings(self.settings, self.keepalive))
    }

    // ---- keepalive ----

    /// Sends a ping after this long without receiving anything from the peer; zero turns
    /// keepalive off (the peer's pings are still answered). Default: off, as in libcoap.
    pub fn keepalive(mut self, interval: Duration) -> Self {
        self.keepalive = self.keepalive.with_interval(Some(interval));
        self
    }

    /// Fraction of the interval (0.0 to 1.0) by which each ping is randomly brought forward, so
    /// that the pings of many sessions spread out. Default 0.0.
    pub fn jitter(mut self, jitter: f64) -> Self {
        self.keepalive.jitter = jitter;
        self
    }

    /// ACK_TIMEOUT (RFC 7252 §4.8), positive: the first retransmission timeout of a UDP / DTLS
    /// ping or Confirmable request, before the random factor. Default 2 s.
    pub fn ack_timeout(mut self, timeout: Duration) -> Self {
        self.keepalive.transmission.ack_timeout = timeout;
        self
    }

    /// ACK_RANDOM_FACTOR (RFC 7252 §4.8), at least 1.0: the first timeout is drawn from
    /// `[ack_timeout, ack_timeout * factor]`. Default 1.5.
    pub fn ack_random_factor(mut self, factor: f64) -> Self {
        self.keepalive.transmission.ack_random_factor = factor;
        self
    }

    /// MAX_RETRANSMIT (RFC 7252 §4.8), at most 20: retransmissions of a UDP / DTLS ping or
    /// Confirmable request before it is given up. Default 4. (NSTART is always
    /// [`NSTART`](crate::proto::config::NSTART) = 1.)
    pub fn max_retransmit(mut self, max_retransmit: u32) -> Self {
        self.keepalive.transmission.max_retransmit = max_retransmit;
        self
    }

    /// How long a TCP / TLS ping waits for its Pong before it counts as unanswered, positive.
    /// Default: the keepalive interval, so a silent peer is declared dead after twice the
    /// interval, as libcoap does.
    pub fn pong_timeout(mut self, timeout: Duration) -> Self {
        self.keepalive.pong_timeout = Some(timeout);
        self
    }

    /// Consecutive unanswered pings that fail a session, at least 1 (see
    /// [`KeepaliveConfig::max_unanswered`] for what to choose on lossy links). Default 1.
    pub fn max_unanswered(mut self, max_unanswered: u32) -> Self {
        self.keepalive.max_unanswered = max_unanswered;
        self
    }

    /// What an ICMP error for a UDP session's peer does. Default [`IcmpPolicy::Fail`].
    pub fn icmp_policy(mut self, policy: IcmpPolicy) -> Self {
        self.keepalive.icmp = policy;
        self
    }

    /// Replaces every keepalive setting at once (interval, jitter, transmission parameters,
    /// pong timeout, `max_unanswered`, ICMP policy), checked at [`build`](ContextBuilder::build)
    /// like the single setters; setters called after this one change it. Default
    /// [`KeepaliveConfig::default`].
    pub fn keepalive_config(mut self, config: KeepaliveConfig) -> Self {
        self.keepalive = config;
        self
    }

    // ---- other settings ----

    /// Max-Message-Size announced in our CSM and enforced on received TCP / TLS frames, at
    /// least 1152 bytes (RFC 8323 §5.3.1: what a peer may send before our CSM arrives).
    /// Default 65,536 bytes.
    pub fn max_message_size(mut self, bytes: u32) -> Self {
        self.settings.max_message_size = bytes;
        self
    }

    /// Block size of block-wise transfers (RFC 7959), both roles: a power of two from 16 to
    /// 1024 bytes. A request or response body larger than this goes in blocks over UDP / DTLS;
    /// over TCP / TLS only a body that does not fit the peer's Max-Message-Size does (RFC 8323
    /// §6), in blocks of this size at most. A peer asking for smaller blocks gets them.
    /// Default 1024 bytes: the largest block, and one that fits a datagram on any IPv6 path.
    /// [`Request::with_block_size`](crate::Request::with_block_size) sets it per request.
    pub fn block_size(mut self, bytes: usize) -> Self {
        self.settings.block_size = bytes;
        self
    }

    /// Largest body, in bytes, a server reassembles from a peer's blocks (a larger one gets
    /// 4.13 Request Entity Too Large with Size1 naming this limit, RFC 7959 §2.9.3), and a
    /// client fetches in blocks. What all the context's sessions hold for peers at once is
    /// bounded by 16 times this (beyond it: 5.03 Service Unavailable, Max-Age 5), and an
    /// abandoned transfer is forgotten EXCHANGE_LIFETIME (247 s by default) after its last
    /// block. From 1 byte to 4 GiB. Default 1 MiB (1,048,576 bytes).
    pub fn max_body_size(mut self, bytes: usize) -> Self {
        self.settings.max_body_size = bytes;
        self
    }

    /// How long a TCP connect, a (D)TLS handshake or a CSM exchange may take, positive.
    /// Default 10 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.settings.connect_timeout = timeout;
        self
    }

    /// How long a TCP / TLS peer may take to send its CSM, or to complete a message it started
    /// (a slow-loris peer is aborted after this), positive. Default 10 s.
    pub fn input_timeout(mut self, timeout: Duration) -> Self {
        self.settings.input_timeout = timeout;
        self
    }

    /// How long a server-side UDP / DTLS session with keepalive off that hears nothing from its
    /// peer (and is not observing anything) lives before it is forgotten, as libcoap does;
    /// positive. Default 300 s.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.settings.idle_timeout = timeout;
        self
    }

    /// Most sessions one endpoint holds, at least 1. When a UDP endpoint is full, sessions that
    /// never completed an exchange are evicted first, and new peers are refused while every
    /// session is established; a full DTLS, TCP or TLS endpoint closes a newcomer's connection
    /// (a TLS handshake in progress holds a place). Default 65,536.
    pub fn max_sessions(mut self, max_sessions: usize) -> Self {
        self.settings.max_sessions = max_sessions;
        self
    }

    /// Turns on OS-level TCP keepalive (SO_KEEPALIVE) for TCP / TLS sockets, with this idle time
    /// (and probe interval, where the platform allows), at least 1 s; zero leaves it off.
    /// Default: off.
    pub fn tcp_keepalive(mut self, idle: Duration) -> Self {
        self.settings.tcp_keepalive = (!idle.is_zero()).then_some(idle);
        self
    }

    /// Seeds the context's random source (ACK random factor, jitter, Message IDs, tokens), so
    /// that runs with the same seed send the same bytes at the same instants. Default: seeded
    /// from the clock.
    pub fn seed(mut self, seed: u64) -> Self {
        self.settings.seed = Some(seed);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::error::Error;

    fn error(builder: ContextBuilder) -> String {
        match builder.build() {
            Ok(_) => panic!("built with an invalid value"),
            Err(Error::Config(message)) => message,
            Err(other) => panic!("not a configuration error: {other}"),
        }
    }

    #[test]
    fn every_invalid_value_is_an_error_naming_its_field() {
        let ms = Duration::from_millis;
        let b = Context::builder;
        let cases = [
            (
                b().jitter(-0.1),
                "jitter must be between 0.0 and 1.0, got -0.1",
            ),
            (
                b().jitter(f64::NAN),
                "jitter must be between 0.0 and 1.0, got NaN",
            ),
            (
                b().ack_timeout(Duration::ZERO),
                "ack_timeout must be positive, got 0 s",
            ),
            (
                b().ack_random_factor(0.5),
                "ack_random_factor must be at least 1.0, got 0.5",
            ),
            (
                b().max_retransmit(21),
                "max_retransmit must be at most 20, got 21",
            ),
            (
                b().pong_timeout(Duration::ZERO),
                "pong_timeout must be positive, got 0 s",
            ),
            (
                b().max_unanswered(0),
                "max_unanswered must be at least 1, got 0",
            ),
            (
                b().max_message_size(1151),
                "max_message_size must be at least 1152 bytes, got 1151",
            ),
            (
                b().block_size(100),
                "block_size must be a power of two from 16 to 1024 bytes, got 100",
            ),
            (
                b().max_body_size(0),
                "max_body_size must be from 1 byte to 4 GiB, got 0",
            ),
            (
                b().connect_timeout(Duration::ZERO),
                "connect_timeout must be positive, got 0 s",
            ),
            (
                b().input_timeout(Duration::ZERO),
                "input_timeout must be positive, got 0 s",
            ),
            (
                b().idle_timeout(Duration::ZERO),
                "idle_timeout must be positive, got 0 s",
            ),
            (
                b().max_sessions(0),
                "max_sessions must be at least 1, got 0",
            ),
            (
                b().tcp_keepalive(ms(500)),
                "tcp_keepalive must be at least 1 s, got 500ms",
            ),
            (
                b().keepalive_config(KeepaliveConfig::default().with_jitter(2.0)),
                "jitter must be between 0.0 and 1.0, got 2",
            ),
        ];
        for (builder, expected) in cases {
            assert_eq!(error(builder), expected);
        }
    }

    #[test]
    fn valid_values_reach_the_context() {
        let ms = Duration::from_millis;
        let ctx = Context::builder()
            .keepalive(ms(250))
            .jitter(0.5)
            .ack_timeout(ms(100))
            .ack_random_factor(1.0)
            .max_retransmit(0)
            .pong_timeout(ms(40))
            .max_unanswered(3)
            .icmp_policy(IcmpPolicy::Soft)
            .max_message_size(1152)
            .connect_timeout(ms(1))
            .input_timeout(ms(2))
            .idle_timeout(ms(3))
            .max_sessions(1)
            .tcp_keepalive(Duration::from_secs(1))
            .seed(7)
            .build()
            .unwrap();
        let keepalive = ctx.keepalive_config();
        assert_eq!(keepalive.interval, Some(ms(250)));
        assert_eq!(keepalive.jitter, 0.5);
        assert_eq!(keepalive.transmission.ack_timeout, ms(100));
        assert_eq!(keepalive.transmission.ack_random_factor, 1.0);
        assert_eq!(keepalive.transmission.max_retransmit, 0);
        assert_eq!(keepalive.pong_timeout, Some(ms(40)));
        assert_eq!(keepalive.max_unanswered, 3);
        assert_eq!(keepalive.icmp, IcmpPolicy::Soft);
        let settings = ctx.settings();
        assert_eq!(settings.max_message_size, 1152);
        assert_eq!(
            (
                settings.connect_timeout,
                settings.input_timeout,
                settings.idle_timeout
            ),
            (ms(1), ms(2), ms(3))
        );
        assert_eq!(settings.max_sessions, 1);
        assert_eq!(settings.tcp_keepalive, Some(Duration::from_secs(1)));
        assert_eq!(settings.seed, Some(7));
    }

    #[test]
    fn zero_turns_keepalive_and_tcp_keepalive_off_and_defaults_are_valid() {
        let ctx = Context::builder()
            .keepalive(Duration::ZERO)
            .tcp_keepalive(Duration::ZERO)
            .build()
            .unwrap();
        assert_eq!(ctx.keepalive_config(), KeepaliveConfig::default());
        assert_eq!(*ctx.settings(), ContextSettings::default());
        assert_eq!(*Context::new().settings(), ContextSettings::default());
    }
}
