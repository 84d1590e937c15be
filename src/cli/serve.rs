//! `coap-keepalive serve`: a server on each address given.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use clap::Args;
use coap_keepalive::context::Context;
use coap_keepalive::error::Result;
use coap_keepalive::handler::{PeerPing, PingDecision, SessionEvent};

use super::output::{ms, Printer};

/// Arguments of `serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Serve CoAP over UDP on this address (repeatable).
    #[arg(long, value_name = "ADDR")]
    udp: Vec<SocketAddr>,
    /// Serve CoAP over TCP on this address (repeatable).
    #[arg(long, value_name = "ADDR")]
    tcp: Vec<SocketAddr>,
    /// Ping each client after this many idle seconds (0: only answer pings).
    #[arg(
        short = 'K',
        long = "keepalive",
        value_name = "SECS",
        default_value_t = 0
    )]
    keepalive: u64,
    /// Seconds between notifications to the observers of /time (0: never).
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    notify_every: u64,
    /// Print only the summary, not a line per event (for load tests).
    #[arg(short, long)]
    quiet: bool,
}

/// Runs the server until Ctrl-C or SIGTERM, then prints a summary.
pub async fn run(args: ServeArgs) -> Result<ExitCode> {
    let ServeArgs {
        mut udp,
        mut tcp,
        keepalive,
        notify_every,
        quiet,
    } = args;
    if udp.is_empty() && tcp.is_empty() {
        let default: SocketAddr = ([0, 0, 0, 0], coap_keepalive::uri::COAP_PORT).into();
        udp.push(default);
        tcp.push(default);
    }
    let ctx = Context::new();
    ctx.set_keepalive(keepalive);
    super::resources::install(&ctx, Some(std::time::Duration::from_secs(notify_every)));
    let printer = Printer::new();
    let sessions_seen = Arc::new(AtomicU64::new(0));
    if !quiet {
        install_printing_handlers(&ctx, printer);
    }
    {
        let seen = sessions_seen.clone();
        ctx.register_event_handler(move |session, event| {
            if event == SessionEvent::Established {
                seen.fetch_add(1, Ordering::Relaxed);
            }
            if !quiet {
                printer.session(session, &format!("{event:?}").to_lowercase());
            }
        });
    }
    for addr in udp {
        let endpoint = ctx.listen_udp(addr).await?;
        println!("serving coap://{} (udp)", endpoint.local_addr);
    }
    for addr in tcp {
        let endpoint = ctx.listen_tcp(addr).await?;
        println!("serving coap+tcp://{} (tcp)", endpoint.local_addr);
    }
    if keepalive > 0 {
        println!("pinging clients after {keepalive} idle seconds");
    }
    wait_for_signal().await;
    ctx.shutdown().await;
    let stats = ctx.stats();
    println!(
        "served {} sessions in {:.1}s: {} pings received, {} pings sent, {} pongs, {} failed",
        sessions_seen.load(Ordering::Relaxed),
        printer.elapsed().as_secs_f64(),
        stats.pings_received,
        stats.pings_sent,
        stats.pongs,
        stats.failures
    );
    Ok(ExitCode::SUCCESS)
}

fn install_printing_handlers(ctx: &Context, printer: Printer) {
    ctx.register_ping_handler(move |session, ping| {
        let what = match ping {
            PeerPing::Datagram { message_id } => format!("ping (MID {message_id:#06x}) answered"),
            PeerPing::Stream { custody, .. } if *custody => "ping (custody) answered".into(),
            _ => "ping answered".into(),
        };
        printer.session(session, &what);
        PingDecision::Answer
    });
    ctx.register_pong_handler(move |session, rtt| {
        printer.session(session, &format!("pong in {}", ms(rtt)));
    });
    ctx.register_nack_handler(move |session, reason| {
        printer.session(session, &format!("NACK {reason}"));
    });
}

/// Waits for Ctrl-C or, on Unix, SIGTERM.
pub async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
