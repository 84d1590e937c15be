//! coap-keepalive (work in progress)
#![forbid(unsafe_code)]
pub mod config;
pub mod context;
pub mod error;
pub mod handler;
pub mod keepalive;
pub mod protocol;
pub mod rng;
pub mod session;
pub mod table;
pub mod transport;
pub mod uri;
pub mod wire;
