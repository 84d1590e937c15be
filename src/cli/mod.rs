//! The subcommands of the `coap-keepalive` binary, one per file, and the credential handling
//! `serve` and `ping` share.

pub mod adaptive;
pub mod args;
pub mod certs;
pub mod demo;
pub mod http;
pub mod json;
pub mod output;
pub mod ping;
pub mod reconnect;
pub mod request;
pub mod resources;
pub mod secure;
pub mod serve;
pub mod sessions;
pub mod settings;
