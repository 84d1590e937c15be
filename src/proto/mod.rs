//! The sans-IO protocol: everything that decides what goes on the wire, with no tokio, no
//! sockets and no clock of its own. Bytes and time are arguments; what to send, when to wake
//! and what happened are polled out (`poll_transmit`, `poll_timeout`, `poll_event`).
//!
//! The [`Context`](crate::Context) runs these cores over tokio sockets; a program with its own
//! event loop can run them itself (see `examples/sans_io_keepalive.rs`, a session kept alive
//! over a `std::net::UdpSocket` with no async runtime).
//!
//! - [`wire`]: the codecs — UDP messages, RFC 8323 framing, signalling, and which options the
//!   stack recognises (RFC 7252 §5.4.1).
//! - [`keepalive`]: the keepalive state machine of one session; [`adaptive`]: the search for
//!   the longest interval a path keeps alive, over the probe resource of [`keepalive_probe`].
//! - [`datagram`] and [`stream`]: the protocol of one session over UDP / DTLS and over
//!   TCP / TLS, built on the keepalive machine; [`exchange`]: their request / response
//!   bookkeeping.
//! - [`table`]: the session table of an endpoint, keyed by peer address, with one deadline queue
//!   for all its sessions.
//! - [`config`], [`error`], [`message`], [`option`], [`rng`]: settings, errors, requests and
//!   responses, the options they carry, and the seedable random source they all share.
//! - [`backoff`]: how long a client waits before it connects again (exponential backoff with
//!   full jitter).
//! - [`ProtocolEvent`] and [`SessionProtocol`]: what a core reports to its driver, and what a
//!   driver asks of a core whatever its transport.

pub mod adaptive;
pub mod backoff;
pub mod blockwise;
pub mod config;
pub mod datagram;
pub mod error;
mod event;
pub mod exchange;
pub mod keepalive;
pub mod keepalive_probe;
mod lazy_state;
pub mod message;
pub mod option;
pub mod rng;
pub mod stream;
pub mod table;
pub mod wire;

pub(crate) use event::QueuedEvent;
pub(crate) use event::{
    is_unknown_method, is_unknown_response, method_not_allowed, option_rejection,
};
pub use event::{IncomingRequest, PeerPing, ProtocolEvent, SessionProtocol};
