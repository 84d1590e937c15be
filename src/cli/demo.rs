//! `coap-keepalive demo`: the embedded default. A server and clients on loopback over every
//! transport (UDP, DTLS with a PSK, TCP, TLS with certificates generated at start): busy
//! clients that ping every idle second, and quiet ones that never ping, which the server
//! pings instead. Every line names both ends (`client ADDR -> server ADDR`). Then the server
//! goes silent and the busy clients' nacks ("too many retries") appear, while the quiet
//! clients, with nothing of theirs unanswered, notice nothing.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use coap_keepalive::credentials::{
    CertificateSet, ClientCredentials, PskCredentials, ServerCredentials,
};
use coap_keepalive::Context;
use coap_keepalive::{KeepaliveConfig, TransmissionParams};
use coap_keepalive::{NackReason, Result};
use coap_keepalive::{PingDecision, SessionEvent};
use coap_keepalive::{Session, SessionState, Transport};
use tokio::sync::mpsc;

use super::output::{ms, Printer};

/// Arguments of `demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Seconds of normal keepalive before the server goes silent.
    #[arg(long, default_value_t = 4)]
    alive_secs: u64,
}

/// Runs the demo; exits 0 when every client noticed the silent server.
pub async fn run(args: DemoArgs) -> Result<ExitCode> {
    let printer = Printer::new();
    let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();

    // The server pings its clients after 2 idle seconds and answers theirs until silenced.
    let server = Context::new();
    server.set_keepalive(2);
    let silent = Arc::new(AtomicBool::new(false));
    {
        let silent = silent.clone();
        server.register_ping_handler(move |session, _| {
            if silent.load(Ordering::Relaxed) {
                printer.session_ends(session, "ping received, ignored (silent)");
                PingDecision::Suppress
            } else {
                printer.session_ends(session, "ping received, answered");
                PingDecision::Answer
            }
        });
    }
    server.register_pong_handler(move |session, rtt| {
        printer.session_ends(session, &format!("pong in {}", ms(rtt)));
    });
    server.register_event_handler(move |session, event| {
        if let SessionEvent::PingSent { .. } = event {
            printer.session_ends(session, &event.to_string());
        }
    });
    server.register_nack_handler(move |session, reason| {
        printer.session_ends(session, &format!("session failed: {reason}"));
    });
    // DTLS with a pre-shared key; TLS with a CA and a server certificate made just now.
    let psk = PskCredentials::new("demo-client", "demo-secret");
    let certificates = CertificateSet::generate()?;
    let udp = server.listen_udp(loopback).await?;
    let dtls = server
        .listen_dtls(loopback, ServerCredentials::Psk(psk.clone()))
        .await?;
    let tcp = server.listen_tcp(loopback).await?;
    let tls = server
        .listen_tls(
            loopback,
            ServerCredentials::Certificate {
                identity: certificates.server_identity(),
                client_ca_pem: None,
            },
        )
        .await?;
    printer.line(&format!(
        "server on coap://{} coaps://{} (PSK) coap+tcp://{} coaps+tcp://{} (certificate), \
         pinging clients after 2 idle seconds",
        udp.local_addr, dtls.local_addr, tcp.local_addr, tls.local_addr
    ));
    let addresses = Addresses {
        udp: udp.local_addr,
        dtls: dtls.local_addr,
        tcp: tcp.local_addr,
        tls: tls.local_addr,
    };

    // The clients ping every idle second; UDP and DTLS give up after 2 retransmissions 250 ms
    // apart and doubling, TCP and TLS when a Pong is 1 s late.
    let client = Context::new();
    client.set_keepalive_config(
        KeepaliveConfig::default()
            .with_interval_secs(1)
            .with_transmission(
                TransmissionParams::default()
                    .with_ack_timeout(Duration::from_millis(250))
                    .with_max_retransmit(2),
            )
            .with_pong_timeout(Duration::from_secs(1)),
    )?;
    client.register_pong_handler(move |session, rtt| {
        printer.session_ends(session, &format!("pong in {}", ms(rtt)));
    });
    client.register_event_handler(move |session, event| {
        if let SessionEvent::PingSent {
            retransmission: true,
        }
        | SessionEvent::PingUnanswered { .. } = event
        {
            printer.session_ends(session, &event.to_string());
        }
    });
    let (nack_tx, mut nacks) = mpsc::unbounded_channel::<(Session, NackReason)>();
    client.register_nack_handler(move |session, reason| {
        printer.session_ends(session, &format!("session failed: {reason}"));
        let _ = nack_tx.send((session.clone(), reason));
    });
    // The quiet clients never ping (keepalive off): the server's keepalive pings them.
    let quiet_client = Context::new();
    quiet_client.register_ping_handler(move |session, _| {
        printer.session_ends(session, "ping received, answered (quiet client)");
        PingDecision::Answer
    });
    quiet_client.register_nack_handler(move |session, reason| {
        printer.session_ends(session, &format!("session failed: {reason}"));
    });
    let verify_with_ca = ClientCredentials::Certificate {
        ca_pem: Some(certificates.ca_cert_pem.clone()),
        identity: None,
        insecure: false,
    };
    let clients = connect_all(&client, &addresses, &psk, &verify_with_ca).await?;
    for session in &clients {
        let how = match session.transport() {
            Transport::Dtls => ", PSK handshake done",
            Transport::Tls => ", server certificate verified",
            _ => "",
        };
        printer.session_ends(
            session,
            &format!("connected{how}, pinging every idle second"),
        );
    }
    let quiet = connect_all(&quiet_client, &addresses, &psk, &verify_with_ca).await?;
    for session in &quiet {
        // Over UDP the server learns of a client from its first message: one ping introduces
        // it. Every other transport's handshake or CSM does.
        if session.transport() == Transport::Udp {
            session.ping();
        }
        printer.session_ends(
            session,
            "connected, keepalive off (quiet: the server pings this one)",
        );
    }

    tokio::time::sleep(Duration::from_secs(args.alive_secs)).await;
    printer.line("--- the server goes silent: it stops answering and stops pinging ---");
    silent.store(true, Ordering::Relaxed);
    for session in server.sessions() {
        session.set_keepalive(0);
    }

    let mut failed = Vec::new();
    let deadline = tokio::time::sleep(Duration::from_secs(15));
    tokio::pin!(deadline);
    while failed.len() < clients.len() {
        tokio::select! {
            Some((session, reason)) = nacks.recv() => failed.push((session, reason)),
            _ = &mut deadline => break,
        }
    }
    let quiet_stats = quiet_client.stats();
    let quiet_states: Vec<String> = quiet
        .iter()
        .map(|session| {
            format!(
                "{} {}",
                session.transport().name(),
                state_name(session.state())
            )
        })
        .collect();
    let client_stats = client.stats();
    let server_stats = server.stats();
    quiet_client.shutdown().await;
    client.shutdown().await;
    server.shutdown().await;

    println!("--- summary ---");
    println!(
        "pinging clients: {} pings, {} pongs, {} retransmissions, {} failed",
        client_stats.pings_sent,
        client_stats.pongs,
        client_stats.retransmissions,
        client_stats.failures
    );
    println!(
        "server: {} pings answered or ignored, {} pings sent, {} pongs",
        server_stats.pings_received, server_stats.pings_sent, server_stats.pongs
    );
    println!(
        "quiet clients: {} pings from the server answered, {} sent (the UDP one's introduction); \
         at the end: {}",
        quiet_stats.pings_received,
        quiet_stats.pings_sent,
        quiet_states.join(", ")
    );
    println!(
        "  (with keepalive off they send nothing more, so nothing of theirs goes unanswered: a \
         client with keepalive off does not notice a silent server)"
    );
    for (session, reason) in &failed {
        println!(
            "nack: {} client {} of server {}: {reason}",
            session.transport().name(),
            session.local_addr(),
            session.peer()
        );
    }
    let all_noticed = failed.len() == clients.len()
        && failed
            .iter()
            .all(|(_, reason)| *reason == NackReason::TooManyRetries);
    if all_noticed {
        println!(
            "every pinging client noticed the silent server ({:.1}s in all)",
            printer.elapsed().as_secs_f64()
        );
        Ok(ExitCode::SUCCESS)
    } else {
        println!(
            "only {} of {} pinging clients noticed the silent server",
            failed.len(),
            clients.len()
        );
        Ok(ExitCode::FAILURE)
    }
}

/// The server's four endpoints.
struct Addresses {
    udp: SocketAddr,
    dtls: SocketAddr,
    tcp: SocketAddr,
    tls: SocketAddr,
}

/// One session of `ctx` to each endpoint: UDP, DTLS (PSK), TCP, TLS (verified with the CA).
async fn connect_all(
    ctx: &Context,
    addresses: &Addresses,
    psk: &PskCredentials,
    verify_with_ca: &ClientCredentials,
) -> Result<Vec<Session>> {
    Ok(vec![
        ctx.connect_udp(addresses.udp).await?,
        ctx.connect_dtls(addresses.dtls, &ClientCredentials::Psk(psk.clone()))
            .await?,
        ctx.connect_tcp(addresses.tcp).await?,
        ctx.connect_tls(addresses.tls, "localhost", verify_with_ca)
            .await?,
    ])
}

/// A session state in words.
fn state_name(state: SessionState) -> String {
    match state {
        SessionState::Connecting => "connecting".into(),
        SessionState::Established => "established".into(),
        SessionState::Closed => "closed".into(),
        SessionState::Failed(reason) => format!("failed ({reason})"),
        _ => "ended".into(),
    }
}
