//! `coap-keepalive serve`: a server on each address given.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use clap::Args;
use coap_keepalive::certs::ServerCredentials;
use coap_keepalive::context::Context;
use coap_keepalive::error::{Error, Result};
use coap_keepalive::handler::{PeerPing, PingDecision, SessionEvent};

use super::output::{ms, Printer};
use super::secure;

/// Arguments of `serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Serve CoAP over UDP on this address (repeatable).
    #[arg(long, value_name = "ADDR")]
    udp: Vec<SocketAddr>,
    /// Serve CoAP over TCP on this address (repeatable).
    #[arg(long, value_name = "ADDR")]
    tcp: Vec<SocketAddr>,
    /// Serve CoAP over DTLS on this address (repeatable); needs --psk-key, or --cert and --key.
    #[arg(long, value_name = "ADDR")]
    dtls: Vec<SocketAddr>,
    /// Serve CoAP over TLS on this address (repeatable); needs --cert and --key.
    #[arg(long, value_name = "ADDR")]
    tls: Vec<SocketAddr>,
    /// DTLS: the PSK identity clients use (any identity is given the key, as libcoap's -k does).
    #[arg(long, value_name = "ID", requires = "psk_key")]
    psk_identity: Option<String>,
    /// DTLS: the pre-shared key, as text. DTLS uses it instead of --cert when both are given.
    #[arg(long, value_name = "KEY")]
    psk_key: Option<String>,
    /// The server's certificate chain (PEM), for TLS and (without --psk-key) DTLS.
    #[arg(long, value_name = "PEM", requires = "key")]
    cert: Option<PathBuf>,
    /// The private key of --cert (PEM; ECDSA P-256 for DTLS).
    #[arg(long, value_name = "PEM", requires = "cert")]
    key: Option<PathBuf>,
    /// Require clients to present a certificate signed by this CA (PEM).
    #[arg(long, value_name = "PEM", requires = "cert")]
    ca: Option<PathBuf>,
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
    let (dtls_credentials, tls_credentials) = credentials(&args)?;
    let ServeArgs {
        mut udp,
        mut tcp,
        dtls,
        tls,
        keepalive,
        notify_every,
        quiet,
        ..
    } = args;
    if udp.is_empty() && tcp.is_empty() && dtls.is_empty() && tls.is_empty() {
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
    for addr in dtls {
        let credentials = dtls_credentials
            .clone()
            .ok_or_else(|| Error::Config("--dtls needs --psk-key, or --cert and --key".into()))?;
        let mode = mode(&credentials);
        let endpoint = ctx.listen_dtls(addr, credentials).await?;
        println!("serving coaps://{} (dtls, {mode})", endpoint.local_addr);
    }
    for addr in tls {
        let credentials = tls_credentials.clone().ok_or_else(|| {
            Error::Config(
                "--tls needs --cert and --key (TLS with a PSK is not supported: rustls has no PSK \
                 cipher suites)"
                    .into(),
            )
        })?;
        let mode = mode(&credentials);
        let endpoint = ctx.listen_tls(addr, credentials).await?;
        println!("serving coaps+tcp://{} (tls, {mode})", endpoint.local_addr);
    }
    if keepalive > 0 {
        println!("pinging clients after {keepalive} idle seconds");
    }
    wait_for_signal().await;
    ctx.shutdown().await;
    let stats = ctx.stats();
    // One source for every figure: opened = closed + failed once all sessions ended.
    let sessions = ctx.session_counts();
    println!(
        "served {} sessions in {:.1}s ({} closed, {} failed): {} pings received, {} pings sent, {} pongs",
        sessions.opened,
        printer.elapsed().as_secs_f64(),
        sessions.closed,
        sessions.failed,
        stats.pings_received,
        stats.pings_sent,
        stats.pongs
    );
    Ok(ExitCode::SUCCESS)
}

/// The credentials of the DTLS and the TLS endpoints, from the options given: DTLS prefers the
/// PSK; TLS takes only certificates.
fn credentials(args: &ServeArgs) -> Result<(Option<ServerCredentials>, Option<ServerCredentials>)> {
    let certificate = match secure::identity(args.cert.as_deref(), args.key.as_deref())? {
        Some(identity) => Some(ServerCredentials::Certificate {
            identity,
            client_ca_pem: secure::ca(args.ca.as_deref())?,
        }),
        None => None,
    };
    let dtls = secure::psk(args.psk_identity.as_deref(), args.psk_key.as_deref())
        .map(ServerCredentials::Psk)
        .or_else(|| certificate.clone());
    Ok((dtls, certificate))
}

/// How an endpoint authenticates, for its "serving" line.
fn mode(credentials: &ServerCredentials) -> &'static str {
    match credentials {
        ServerCredentials::Psk(_) => "PSK",
        ServerCredentials::Certificate {
            client_ca_pem: Some(_),
            ..
        } => "certificate, client certificate required",
        _ => "certificate",
    }
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
