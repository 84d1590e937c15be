//! coap-keepalive (work in progress)
#![forbid(unsafe_code)]
pub mod config;
pub mod error;
pub mod keepalive;
pub mod rng;
pub mod wire;
