//! [`ContextSettings`]: the settings of a context other than keepalive, checked once when the
//! builder (`context/builder.rs`) builds the context, and read by every driver.

use std::time::Duration;

use crate::proto::blockwise::{BlockwiseConfig, DEFAULT_BLOCK_SIZE, DEFAULT_MAX_BODY_SIZE};
use crate::proto::error::{Error, Result};
use crate::proto::stream::{DEFAULT_INPUT_TIMEOUT, DEFAULT_MAX_MESSAGE_SIZE};
use crate::proto::wire::signal::BASE_MAX_MESSAGE_SIZE;

/// The settings of a context other than keepalive, as [`Context::settings`](crate::Context::settings)
/// shows them. Set them with [`Context::builder`](crate::Context::builder); the builder's methods document each one and its default.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ContextSettings {
    /// Max-Message-Size announced in our CSM and enforced on received TCP / TLS frames
    /// ([`ContextBuilder::max_message_size`](crate::ContextBuilder::max_message_size)).
    pub max_message_size: u32,
    /// How long a TCP connect, a (D)TLS handshake or a CSM exchange may take
    /// ([`ContextBuilder::connect_timeout`](crate::ContextBuilder::connect_timeout)).
    pub connect_timeout: Duration,
    /// Seed of the context's random source; `None` seeds from the clock
    /// ([`ContextBuilder::seed`](crate::ContextBuilder::seed)).
    pub seed: Option<u64>,
    /// How long a TCP / TLS peer may take to send its CSM or to complete a message it started
    /// ([`ContextBuilder::input_timeout`](crate::ContextBuilder::input_timeout)).
    pub input_timeout: Duration,
    /// Most sessions one endpoint holds ([`ContextBuilder::max_sessions`](crate::ContextBuilder::max_sessions)).
    pub max_sessions: usize,
    /// How long a server-side UDP / DTLS session with keepalive off may hear nothing before it
    /// is forgotten ([`ContextBuilder::idle_timeout`](crate::ContextBuilder::idle_timeout)).
    pub idle_timeout: Duration,
    /// OS-level TCP keepalive idle time for TCP / TLS sockets; `None`: off
    /// ([`ContextBuilder::tcp_keepalive`](crate::ContextBuilder::tcp_keepalive)).
    pub tcp_keepalive: Option<Duration>,
    /// Block size of block-wise transfers (RFC 7959), in bytes
    /// ([`ContextBuilder::block_size`](crate::ContextBuilder::block_size)).
    pub block_size: usize,
    /// Largest request or response body reassembled from blocks, in bytes
    /// ([`ContextBuilder::max_body_size`](crate::ContextBuilder::max_body_size)).
    pub max_body_size: usize,
}

impl Default for ContextSettings {
    fn default() -> Self {
        ContextSettings {
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            connect_timeout: Duration::from_secs(10),
            seed: None,
            input_timeout: DEFAULT_INPUT_TIMEOUT,
            max_sessions: 65_536,
            idle_timeout: Duration::from_secs(300),
            tcp_keepalive: None,
            block_size: DEFAULT_BLOCK_SIZE,
            max_body_size: DEFAULT_MAX_BODY_SIZE,
        }
    }
}

impl ContextSettings {
    /// Checks every field; the error names the one that is wrong.
    pub(crate) fn validate(&self) -> Result<()> {
        if self.max_message_size < BASE_MAX_MESSAGE_SIZE {
            // RFC 8323 §5.3.1: a peer may send messages of up to 1152 bytes before our CSM
            // arrives, so a smaller limit would abort peers that did nothing wrong.
            return Err(Error::Config(format!(
                "max_message_size must be at least {BASE_MAX_MESSAGE_SIZE} bytes, got {}",
                self.max_message_size
            )));
        }
        for (name, value) in [
            ("connect_timeout", self.connect_timeout),
            ("input_timeout", self.input_timeout),
            ("idle_timeout", self.idle_timeout),
        ] {
            if value.is_zero() {
                return Err(Error::Config(format!("{name} must be positive, got 0 s")));
            }
        }
        if self.max_sessions == 0 {
            return Err(Error::Config(
                "max_sessions must be at least 1, got 0".into(),
            ));
        }
        if !self.block_size.is_power_of_two() || !(16..=1024).contains(&self.block_size) {
            // RFC 7959 §2.2: SZX 0 to 6, blocks of 2^(SZX + 4) bytes.
            return Err(Error::Config(format!(
                "block_size must be a power of two from 16 to 1024 bytes, got {}",
                self.block_size
            )));
        }
        if self.max_body_size == 0 || u32::try_from(self.max_body_size).is_err() {
            // Size1 / Size2 are 32-bit.
            return Err(Error::Config(format!(
                "max_body_size must be from 1 byte to 4 GiB, got {}",
                self.max_body_size
            )));
        }
        if let Some(idle) = self.tcp_keepalive {
            // The OS counts TCP keepalive in whole seconds: less would be 0, which it refuses.
            if idle < Duration::from_secs(1) {
                return Err(Error::Config(format!(
                    "tcp_keepalive must be at least 1 s, got {idle:?}"
                )));
            }
        }
        Ok(())
    }
}

impl ContextSettings {
    /// The block-wise configuration of a context: the block size and maximum body size, and a
    /// memory budget of 16 maximum-size bodies for what all its sessions hold for peers.
    pub(crate) fn blockwise(&self) -> BlockwiseConfig {
        BlockwiseConfig::new(
            self.block_size,
            self.max_body_size,
            self.max_body_size.saturating_mul(16),
        )
    }
}
