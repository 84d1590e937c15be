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
//! ## The adaptive keepalive interval
//! A NAT forgets an idle UDP binding after some seconds or minutes, and no fixed interval suits
//! every path. [`AdaptiveKeepalive`] finds the longest idle time the path to a server keeps
//! alive — on a socket of its own it asks the server's probe resource
//! ([`Context::serve_keepalive_probes`]) for a message back after a chosen delay — and keeps
//! the session's interval at a safety fraction of it ([`Session::adaptive`] has its state).
//! The search is the sans-IO [`proto::adaptive::IntervalSearch`].
//!
//! ## Layout
//! The crate is four layers; each imports only the ones below it.
//!
//! 1. [`proto`] — the sans-IO protocol, public for programs with their own event loop: codecs,
//!    the keepalive machine, the session protocols per transport family, the session table.
//!    No tokio, no sockets; time and bytes are arguments.
//! 2. the runtime (private) — settings, handlers and event receivers, resources, the registry
//!    of sessions, shutdown, and the one dispatch that turns a protocol event into action.
//! 3. the transports (private) — the tokio drivers, the only code that touches sockets: UDP and
//!    TCP, and DTLS (webrtc-dtls) and TLS (tokio-rustls) running the same drivers over secured
//!    connections.
//! 4. [`Context`] — the facade: settings ([`ContextBuilder`]), handlers, [`Context::events`],
//!    resources, every listen / connect, shutdown.
//!
//! Beside them: [`credentials`], what DTLS and TLS endpoints present and trust, and (with the
//! default `test-certs` feature) test-certificate generation;
//! [`CoapUri`], the four URI schemes. `docs/ARCHITECTURE.md` follows one datagram up and one ping
//! down through the layers.
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod context;
pub mod credentials;
pub mod proto;
mod runtime;
mod transport;
mod uri;

/// The README's Rust examples, compiled and run by `cargo test --doc` so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub use context::{AdaptiveKeepalive, BodyMemory, Context, ContextBuilder};
pub use context::{MetricsCollector, OPENMETRICS_CONTENT_TYPE};
pub use context::{ReconnectingObservation, ReconnectingSession};
pub use credentials::{ClientCredentials, PemIdentity, PskCredentials, ServerCredentials};
/// The Prometheus project's Rust client, whose registry [`Context::metrics_collector`] joins.
pub use prometheus_client;
pub use proto::backoff::ReconnectPolicy;
pub use proto::config::{IcmpPolicy, KeepaliveConfig, TransmissionParams};
pub use proto::error::{Error, NackReason, Result};
pub use proto::keepalive::{PingStyle, RttStats, Stats};
pub use proto::message::{Method, Request, Response, Status};
pub use proto::option;
pub use proto::option::{ETag, IfMatch, OptionError};
pub use proto::PeerPing;
pub use runtime::events::EVENTS_CAPACITY;
pub use runtime::events::{Event, EventKind, Events, Lagged};
pub use runtime::handlers::{PingDecision, SessionEvent};
pub use runtime::metrics::{
    HandshakeFailure, Metrics, RequestCount, RttHistogram, SessionGroup, TransportMetrics,
    RTT_BUCKETS,
};
pub use runtime::probe_resource::ProbeLimits;
pub use runtime::resource::{Resource, Responder};
pub use runtime::session::{
    Observation, Ping, Role, Session, SessionId, SessionState, Transport, DEFAULT_REQUEST_TIMEOUT,
};
pub use runtime::settings::ContextSettings;
pub use runtime::{SessionCounts, SessionInfo, RECENTLY_ENDED};
pub use transport::Endpoint;
pub use uri::{CoapUri, COAPS_PORT, COAP_PORT};

/// The Observe option's values in a GET (RFC 7641 §2): register, deregister.
pub mod observe {
    pub use crate::proto::message::{
        OBSERVE_DEREGISTER as DEREGISTER, OBSERVE_REGISTER as REGISTER,
    };
}

/// The Content-Format numbers of RFC 7252 §12.3 that the stack names (any other is a plain
/// `u16`).
pub mod content_format {
    pub use crate::proto::message::{JSON, LINK_FORMAT, OCTET_STREAM, TEXT_PLAIN};
}
