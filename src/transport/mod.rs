//! The tokio drivers: the only code that touches sockets. Each moves bytes and time between a
//! socket and a sans-IO session protocol, and runs the context's handlers.

pub mod tcp;
pub mod udp;
