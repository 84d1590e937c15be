//! # coap-keepalive
//!
//! A CoAP stack (RFC 7252 over UDP, RFC 8323 over TCP) whose sessions stay provably alive.
//!
//! A [`Context`] holds the keepalive setting and the session table. Every session — client or
//! server side — answers its peer's pings, sends its own when the peer has been idle for the
//! interval, and reports pongs (with their round-trip time) and failures, both ways: pushed to
//! the handlers the application registered, and pulled from [`Context::events`] (a
//! [`Stream`](futures_core::Stream) of [`Event`]s, several receivers allowed) and
//! [`Session::ping`], whose future resolves with the RTT or the reason the session failed:
//!
//! - over UDP a ping is an empty Confirmable message (`40 00 MM MM`) answered by an RST with the
//!   same Message ID, retransmitted per RFC 7252 until the peer answers or the session fails
//!   with [`NackReason::TooManyRetries`] (after `max_unanswered` such pings in a row: default 1,
//!   more for lossy links);
//! - over TCP a ping is a 7.02 Ping answered by a 7.03 Pong, sent only after the CSM exchange;
//!   a Pong that does not arrive within the pong timeout fails the session the same way.
//!
//! ```
//! use coap_keepalive::{Context, EventKind};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> coap_keepalive::Result<()> {
//! # let server = Context::new();
//! # let endpoint = server.listen_tcp("127.0.0.1:0".parse().unwrap()).await?;
//! # let uri = format!("coap+tcp://{}", endpoint.local_addr);
//! let ctx = Context::new();
//! ctx.set_keepalive(30); // ping after 30 idle seconds; 0 turns it off
//! ctx.register_nack_handler(|session, reason| eprintln!("{session}: {reason}"));
//! let mut events = ctx.events(); // every session event from now on
//! let session = ctx.connect(&uri).await?; // e.g. "coap+tcp://127.0.0.1:5683"
//! let rtt = session.ping().await?; // one now, and its round-trip time
//! println!("pong in {rtt:?}");
//! // established, ping sent, pong: the same events the handlers see, in the same order
//! while let Some(Ok(event)) = events.recv().await {
//!     println!("{event}");
//!     if let EventKind::Pong { rtt: seen } = event.kind {
//!         assert_eq!(seen, rtt);
//!         break;
//!     }
//! }
//! # ctx.shutdown().await;
//! # server.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! The README's examples are complete programs, run as doc tests too.
//!
//! ## Layout
//! - [`config`]: [`KeepaliveConfig`] and the RFC 7252 [`TransmissionParams`].
//! - [`error`]: [`Error`] and [`NackReason`].
//! - [`wire`]: codecs, sans-IO — UDP message classification, RFC 8323 framing, signalling,
//!   and which options the stack recognises (RFC 7252 §5.4.1).
//! - [`keepalive`]: the sans-IO keepalive state machine of one session; time is an argument.
//!   Programs with their own event loop can drive it directly (`handle_*`, `poll_transmit`,
//!   `poll_event`, `poll_timeout`).
//! - [`protocol`]: the sans-IO protocol of one session (answers, CSM, Abort, Release), per
//!   transport family, built on the keepalive machine.
//! - [`message`]: [`Request`] and [`Response`] as applications see them.
//! - [`resource`]: server-side [`Resource`]s by path, `/.well-known/core`, observers.
//! - [`table`]: the session table of an endpoint with one deadline queue for all its sessions;
//!   its peer index (`peer_index.rs`) and cache hints (`prefetch.rs`, the crate's one `unsafe`)
//!   are private to it.
//! - [`session`]: the [`Session`] handle — id, peer, transport, role, state, statistics.
//! - [`context`]: [`Context`] — settings ([`ContextBuilder`], validated once), handlers,
//!   listen / connect, shutdown.
//! - [`handler`]: the ping / pong / nack / event handler types, and the one dispatch that feeds
//!   them and [`events`].
//! - [`events`]: [`Events`], the pulled form of the same session events.
//! - [`transport`]: the tokio drivers, the only code that touches sockets: UDP and TCP, and
//!   DTLS (webrtc-dtls) and TLS (tokio-rustls) running the same drivers over secured connections.
//! - [`credentials`]: what DTLS and TLS endpoints present and trust ([`ServerCredentials`],
//!   [`ClientCredentials`]); test certificate generation (rcgen, the default `test-certs`
//!   feature); the crate-private rustls / webrtc-dtls configurations built from them.
//! - [`uri`]: `coap://`, `coaps://`, `coap+tcp://`, `coaps+tcp://`.
//! - [`rng`]: the seedable random source.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
pub mod context;
pub mod credentials;
pub mod error;
pub mod events;
pub mod handler;
pub mod keepalive;
pub mod message;
mod peer_index;
mod prefetch;
pub mod protocol;
pub mod resource;
pub mod rng;
pub mod session;
mod settings;
pub mod table;
pub mod transport;
pub mod uri;
pub mod wire;

/// The README's Rust examples, compiled and run by `cargo test --doc` so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub use config::{IcmpPolicy, KeepaliveConfig, TransmissionParams};
pub use context::{Context, ContextBuilder, ContextSettings, Endpoint, SessionCounts};
pub use credentials::{ClientCredentials, PemIdentity, PskCredentials, ServerCredentials};
pub use error::{Error, NackReason, Result};
pub use events::{Event, EventKind, Events, Lagged};
pub use handler::{PeerPing, PingDecision, SessionEvent};
pub use keepalive::{Keepalive, KeepaliveEvent, PingStyle, PingTransmit, RttStats, Stats};
pub use message::{Method, Request, Response, Status};
pub use resource::{Resource, Responder};
pub use session::{Observation, Ping};
pub use session::{Role, Session, SessionId, SessionState, Transport};
pub use uri::CoapUri;
