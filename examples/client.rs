//! A CoAP client that keeps its session to a server alive.
//!
//! ```text
//! cargo run --example client -- coap+tcp://127.0.0.1:5683 2 5
//! ```
//! connects to the URI (default coap://127.0.0.1:5683), pings after every 2 idle seconds
//! (default 2) and stops after 5 pongs (default: run until the session fails or Ctrl-C).

use coap_keepalive::{Context, EventKind};

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
    let mut events = ctx.events();

    let session = ctx.connect(&uri).await?;
    println!("connected: {session}");
    // The first ping now, awaited for its round-trip time; the rest follow the idle interval.
    let rtt = session.ping().await?;
    println!("pong 1 in {:.3} ms", rtt.as_secs_f64() * 1e3);
    let mut seen = 1;
    let failure = loop {
        if count.is_some_and(|c| seen >= c) {
            break None;
        }
        tokio::select! {
            item = events.recv() => match item {
                Some(Ok(event)) => match event.kind {
                    EventKind::Pong { rtt } => {
                        seen += 1;
                        println!("pong {seen} in {:.3} ms", rtt.as_secs_f64() * 1e3);
                    }
                    EventKind::Failed(reason) => break Some(reason),
                    EventKind::Closed => break None,
                    _ => {}
                },
                Some(Err(lagged)) => eprintln!("{lagged}"),
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
