//! A CoAP client that keeps its session to a server alive.
//!
//! ```text
//! cargo run --example client -- coap+tcp://127.0.0.1:5683 2 5
//! ```
//! connects to the URI (default coap://127.0.0.1:5683), pings after every 2 idle seconds
//! (default 2) and stops after 5 pongs (default: run until the session fails or Ctrl-C).

use std::time::Duration;

use coap_keepalive::{Context, NackReason};
use tokio::sync::mpsc;

#[tokio::main]
async fn main() -> coap_keepalive::Result<()> {
    let mut args = std::env::args().skip(1);
    let uri = args
        .next()
        .unwrap_or_else(|| "coap://127.0.0.1:5683".into());
    let keepalive: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(2);
    let count: Option<usize> = args.next().and_then(|s| s.parse().ok());

    let ctx = Context::new();
    ctx.set_keepalive(keepalive);
    let (tx, mut rx) = mpsc::unbounded_channel::<Result<Duration, NackReason>>();
    let pongs = tx.clone();
    ctx.register_pong_handler(move |_, rtt| {
        let _ = pongs.send(Ok(rtt));
    });
    ctx.register_nack_handler(move |_, reason| {
        let _ = tx.send(Err(reason));
    });

    let session = ctx.connect(&uri).await?;
    println!("connected: {session}");
    session.ping();
    let mut seen = 0;
    let failure = loop {
        tokio::select! {
            event = rx.recv() => match event {
                Some(Ok(rtt)) => {
                    seen += 1;
                    println!("pong {seen} in {:.3} ms", rtt.as_secs_f64() * 1e3);
                    if count.is_some_and(|c| seen >= c) {
                        break None;
                    }
                }
                Some(Err(reason)) => break Some(reason),
                None => break None,
            },
            _ = tokio::signal::ctrl_c() => break None,
        }
    };
    let stats = session.stats();
    ctx.shutdown().await;
    println!(
        "{} pings, {} pongs, {} retransmissions",
        stats.pings_sent, stats.pongs, stats.retransmissions
    );
    match failure {
        Some(reason) => Err(coap_keepalive::Error::SessionFailed(reason)),
        None => Ok(()),
    }
}
