//! `coap-keepalive ping`: keepalive pings to one peer, printed like ping(8).

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use coap_keepalive::config::{KeepaliveConfig, TransmissionParams};
use coap_keepalive::context::{Context, ContextSettings};
use coap_keepalive::error::{NackReason, Result};
use coap_keepalive::handler::SessionEvent;
use coap_keepalive::uri::CoapUri;
use tokio::sync::mpsc;

use super::output::{ms, parse_secs};
use super::secure;

/// Arguments of `ping`.
#[derive(Debug, Args)]
pub struct PingArgs {
    /// The peer: coap://, coaps:// (DTLS), coap+tcp:// or coaps+tcp:// (TLS) HOST[:PORT].
    uri: String,
    /// Stop after this many pongs (0: until interrupted).
    #[arg(short = 'c', long, default_value_t = 0)]
    count: u64,
    /// Idle seconds between a pong and the next ping.
    #[arg(short = 'i', long, value_name = "SECS", default_value = "1", value_parser = parse_secs)]
    interval: Duration,
    /// UDP: ACK_TIMEOUT, seconds before the first retransmission (RFC 7252 default 2).
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    ack_timeout: Option<Duration>,
    /// UDP: MAX_RETRANSMIT, retransmissions before giving up (RFC 7252 default 4).
    #[arg(long, value_name = "N")]
    max_retransmit: Option<u32>,
    /// TCP: seconds to wait for a Pong (default: the interval).
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pong_timeout: Option<Duration>,
    /// Consecutive unanswered pings before giving up (default 1): a UDP / DTLS ping is
    /// unanswered when its retransmissions are exhausted, a TCP / TLS one at its pong timeout;
    /// below N the next ping goes out at once. Raise it on lossy links.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    max_unanswered: Option<u32>,
    #[command(flatten)]
    security: secure::ClientSecurityArgs,
}

enum Outcome {
    Pong(Duration),
    Unanswered(u32),
    Nack(NackReason),
}

/// Pings until `count` pongs arrived (exit 0), the session fails (exit 1), or Ctrl-C.
pub async fn run(args: PingArgs) -> Result<ExitCode> {
    let uri = CoapUri::parse(&args.uri)?;
    let mut transmission = TransmissionParams::default();
    if let Some(t) = args.ack_timeout {
        transmission = transmission.with_ack_timeout(t);
    }
    if let Some(n) = args.max_retransmit {
        transmission = transmission.with_max_retransmit(n);
    }
    let mut config = KeepaliveConfig::default()
        .with_interval(Some(args.interval.max(Duration::from_millis(1))))
        .with_transmission(transmission);
    if let Some(t) = args.pong_timeout {
        config = config.with_pong_timeout(t);
    }
    if let Some(n) = args.max_unanswered {
        config = config.with_max_unanswered(n);
    }
    let credentials = args.security.credentials(uri.transport)?;
    let mut settings = ContextSettings::default();
    settings.connect_timeout = args
        .security
        .handshake_timeout
        .max(Duration::from_millis(1));
    let ctx = Context::with_settings(settings);
    ctx.set_keepalive_config(config)?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let pongs = tx.clone();
    ctx.register_pong_handler(move |_, rtt| {
        let _ = pongs.send(Outcome::Pong(rtt));
    });
    let unanswered = tx.clone();
    ctx.register_event_handler(move |_, event| {
        if let SessionEvent::PingUnanswered { count } = event {
            let _ = unanswered.send(Outcome::Unanswered(count));
        }
    });
    ctx.register_nack_handler(move |_, reason| {
        let _ = tx.send(Outcome::Nack(reason));
    });

    let started = tokio::time::Instant::now();
    let session = match ctx.connect_with(&args.uri, &credentials).await {
        Ok(session) => session,
        Err(error) => {
            let why = secure::explain(&error, uri.transport, &credentials);
            eprintln!("coap-keepalive: {uri}: {why}");
            return Ok(ExitCode::FAILURE);
        }
    };
    println!(
        "PING {uri} ({} {}) every {}s",
        uri.transport.name(),
        session.peer(),
        args.interval.as_secs_f64()
    );
    session.ping();
    let mut rtts: Vec<Duration> = Vec::new();
    let mut failure = None;
    loop {
        tokio::select! {
            outcome = rx.recv() => match outcome {
                Some(Outcome::Pong(rtt)) => {
                    rtts.push(rtt);
                    println!("pong from {}: seq={} time={}", session.peer(), rtts.len(), ms(rtt));
                    if args.count > 0 && rtts.len() as u64 >= args.count {
                        break;
                    }
                }
                // Over TCP / TLS the last unanswered ping is reported just before the nack:
                // the nack line says it.
                Some(Outcome::Unanswered(count)) if count < config.max_unanswered => {
                    println!(
                        "no answer from {}: {count} of {} unanswered, pinging again",
                        session.peer(),
                        config.max_unanswered
                    );
                }
                Some(Outcome::Unanswered(_)) => {}
                Some(Outcome::Nack(reason)) => {
                    println!(
                        "{}: {reason} (after {:.3}s)",
                        session.peer(),
                        started.elapsed().as_secs_f64()
                    );
                    failure = Some(reason);
                    break;
                }
                None => break,
            },
            _ = super::serve::wait_for_signal() => break,
        }
    }
    let stats = session.stats();
    ctx.shutdown().await;
    let sent = stats.pings_sent.max(rtts.len() as u64);
    let lost = sent.saturating_sub(rtts.len() as u64);
    println!("--- {uri} ping statistics ---");
    println!(
        "{sent} pings sent, {} pongs received, {} retransmissions, {:.0}% loss, time {:.0}ms",
        rtts.len(),
        stats.retransmissions,
        if sent == 0 {
            0.0
        } else {
            100.0 * lost as f64 / sent as f64
        },
        started.elapsed().as_secs_f64() * 1e3
    );
    if !rtts.is_empty() {
        let min = rtts.iter().min().copied().unwrap_or_default();
        let max = rtts.iter().max().copied().unwrap_or_default();
        let avg = rtts.iter().sum::<Duration>() / rtts.len() as u32;
        println!(
            "rtt min/avg/max = {:.3}/{:.3}/{:.3} ms",
            min.as_secs_f64() * 1e3,
            avg.as_secs_f64() * 1e3,
            max.as_secs_f64() * 1e3
        );
    }
    Ok(match failure {
        Some(_) => ExitCode::FAILURE,
        None if args.count > 0 && (rtts.len() as u64) < args.count => ExitCode::FAILURE,
        None => ExitCode::SUCCESS,
    })
}
