//! The subcommands of the `coap-keepalive` binary, one per file.

pub mod demo;
pub mod load;
pub mod output;
pub mod ping;
pub mod request;
pub mod resources;
pub mod serve;
