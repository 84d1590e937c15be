//! `coap-keepalive demo`: the embedded default. A server and clients on loopback over every
//! transport (UDP, DTLS with a PSK, TCP, TLS with certificates generated at start); pings and
//! pongs both ways; then the server goes silent and the clients' nacks ("too many retries")
//! appear.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use coap_keepalive::certs::{CertificateSet, ClientCredentials, PskCredentials, ServerCredentials};
use coap_keepalive::config::{KeepaliveConfig, TransmissionParams};
use coap_keepalive::context::Context;
use coap_keepalive::error::{NackReason, Result};
use coap_keepalive::handler::PingDecision;
use coap_keepalive::session::{Session, Transport};
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
                printer.session(session, "server: ping ignored (silent)");
                PingDecision::Suppress
            } else {
                printer.session(session, "server: ping answered");
                PingDecision::Answer
            }
        });
    }
    server.register_pong_handler(move |session, rtt| {
        printer.session(session, &format!("server: pong in {}", ms(rtt)));
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
        printer.session(session, &format!("client: pong in {}", ms(rtt)));
    });
    let (nack_tx, mut nacks) = mpsc::unbounded_channel::<(Session, NackReason)>();
    client.register_nack_handler(move |session, reason| {
        printer.session(session, &format!("client: NACK {reason}"));
        let _ = nack_tx.send((session.clone(), reason));
    });
    let verify_with_ca = ClientCredentials::Certificate {
        ca_pem: Some(certificates.ca_cert_pem.clone()),
        identity: None,
        insecure: false,
    };
    let clients = [
        client.connect_udp(udp.local_addr).await?,
        client
            .connect_dtls(dtls.local_addr, &ClientCredentials::Psk(psk))
            .await?,
        client.connect_tcp(tcp.local_addr).await?,
        client
            .connect_tls(tls.local_addr, "localhost", &verify_with_ca)
            .await?,
    ];
    for session in &clients {
        let how = match session.transport() {
            Transport::Dtls => ", PSK handshake done",
            Transport::Tls => ", server certificate verified",
            _ => "",
        };
        printer.session(session, &format!("client: connected{how}, keepalive 1 s"));
    }
    // A quiet client that never pings: the server's own keepalive pings it, and it answers.
    // Over UDP the server learns of a client from its first message: one ping introduces it.
    let quiet = client.connect_udp(udp.local_addr).await?;
    quiet.ping();
    quiet.set_keepalive(0);
    printer.session(
        &quiet,
        "client: connected, keepalive off (the server pings this one)",
    );

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
    quiet.close();
    let client_stats = client.stats();
    let server_stats = server.stats();
    client.shutdown().await;
    server.shutdown().await;

    println!("--- summary ---");
    println!(
        "clients: {} pings, {} pongs, {} retransmissions, {} failed",
        client_stats.pings_sent,
        client_stats.pongs,
        client_stats.retransmissions,
        client_stats.failures
    );
    println!(
        "server:  {} pings answered or ignored, {} pings sent, {} pongs",
        server_stats.pings_received, server_stats.pings_sent, server_stats.pongs
    );
    for (session, reason) in &failed {
        println!(
            "nack:    {} client of {}: {reason}",
            session.transport().name(),
            session.peer()
        );
    }
    let all_noticed = failed.len() == clients.len()
        && failed
            .iter()
            .all(|(_, reason)| *reason == NackReason::TooManyRetries);
    if all_noticed {
        println!(
            "every client noticed the silent server ({:.1}s in all)",
            printer.elapsed().as_secs_f64()
        );
        Ok(ExitCode::SUCCESS)
    } else {
        println!(
            "only {} of {} clients noticed the silent server",
            failed.len(),
            clients.len()
        );
        Ok(ExitCode::FAILURE)
    }
}
