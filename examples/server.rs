//! A CoAP server that answers pings and pings its clients when they go quiet.
//!
//! ```text
//! cargo run --example server -- 127.0.0.1:5683 10
//! ```
//! serves UDP and TCP on the address (default 127.0.0.1:5683) and pings each client after 10
//! idle seconds (default 10; 0 only answers). Stop it with Ctrl-C.

use std::net::SocketAddr;
use std::time::Duration;

use coap_keepalive::{Context, PingDecision};

#[tokio::main]
async fn main() -> coap_keepalive::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:5683".into())
        .parse()
        .map_err(|e| coap_keepalive::Error::Config(format!("address: {e}")))?;
    let keepalive: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(10);

    let ctx = Context::new();
    ctx.set_keepalive(keepalive);
    ctx.register_ping_handler(|session, _ping| {
        println!("{session}: ping");
        PingDecision::Answer
    });
    ctx.register_pong_handler(|session, rtt: Duration| {
        println!("{session}: pong in {:.3} ms", rtt.as_secs_f64() * 1e3);
    });
    ctx.register_nack_handler(|session, reason| {
        println!("{session}: gone ({reason})");
    });

    let udp = ctx.listen_udp(addr).await?;
    let tcp = ctx.listen_tcp(addr).await?;
    println!(
        "serving coap://{} and coap+tcp://{}",
        udp.local_addr, tcp.local_addr
    );
    let _ = tokio::signal::ctrl_c().await;
    for session in ctx.sessions() {
        println!(
            "{session}: {:?}, idle {:?}",
            session.state(),
            session.idle()
        );
    }
    ctx.shutdown().await;
    Ok(())
}
