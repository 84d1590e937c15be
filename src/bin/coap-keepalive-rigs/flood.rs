//! `coap-keepalive-rigs flood N`: one datagram (a CoAP ping) from each of N distinct loopback
//! source addresses and ports at a UDP server with default settings, then the server's peak RSS
//! (VmHWM) and session count: what a server's session table costs when a flood of peers arrives,
//! and proof that an established client is still answered during it.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use coap_keepalive::Context;
use coap_keepalive::{Error, Result};
use tokio::net::UdpSocket;

use crate::proc::{net_counter, status_kb};

/// Arguments of `flood`.
#[derive(Debug, Args)]
pub struct FloodArgs {
    /// Distinct source addresses and ports, one datagram from each.
    #[arg(value_name = "N", default_value_t = 100_000)]
    sources: usize,
    /// The UDP address of a server running elsewhere (`coap-keepalive serve --udp`) instead of
    /// one in this process.
    #[arg(long, value_name = "ADDR")]
    target: Option<SocketAddr>,
    /// With --target: the server's process id, whose peak RSS is reported.
    #[arg(long, value_name = "PID", requires = "target")]
    server_pid: Option<u32>,
}

/// Runs the flood.
pub async fn run(args: FloodArgs) -> Result<ExitCode> {
    flood(args.sources, args.target, args.server_pid).await
}

/// Source sockets open at once: each sends its ping, waits for the answer, and is closed
/// before the next window opens, so the flood needs no more descriptors than this and does not
/// overrun the server's socket buffer (which would measure the kernel, not the server).
const FLOOD_WINDOW: usize = 128;
/// How long a window waits for its answers.
const FLOOD_WINDOW_WAIT: Duration = Duration::from_millis(50);
/// Source ports used on each loopback address (127.0.0.2, .3, ...): every source is a distinct
/// address and port, never reused, so each datagram looks like a new peer.
const SOURCE_PORTS: std::ops::RangeInclusive<u16> = 10_000..=60_999;

async fn flood(n: usize, target: Option<SocketAddr>, server_pid: Option<u32>) -> Result<ExitCode> {
    // In this process unless told otherwise: a server as `serve` runs it, default settings.
    let local = match target {
        Some(_) => None,
        None => {
            let ctx = Context::new();
            crate::server::install_resources(&ctx);
            let endpoint = ctx.listen_udp(([127, 0, 0, 1], 0).into()).await?;
            Some((ctx, endpoint.local_addr))
        }
    };
    let target = match (&local, target) {
        (Some((_, addr)), _) => *addr,
        (None, Some(addr)) => addr,
        (None, None) => unreachable!("a target or a local server"),
    };
    let pid = match (&local, server_pid) {
        (Some(_), _) => Some(std::process::id()),
        (None, pid) => pid,
    };
    let status_of = |field: &str| pid.and_then(|pid| status_kb(&pid.to_string(), field));

    // A regular client, heard from twice before the flood: an established session.
    let regular = UdpSocket::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    regular.connect(target).await?;
    for id in [1u16, 2] {
        ping_answered(&regular, id).await;
    }
    let rss_before = status_of("VmRSS:");
    println!(
        "flood: {n} sources at {target}; server rss {} kB before",
        show(rss_before)
    );

    let drops_before = rcvbuf_errors();
    let started = Instant::now();
    let most_sessions = Arc::new(AtomicU64::new(0));
    let watcher = local.as_ref().map(|(ctx, _)| {
        let ctx = ctx.clone();
        let most = Arc::clone(&most_sessions);
        tokio::spawn(async move {
            loop {
                most.fetch_max(ctx.sessions().len() as u64, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    });
    let answered = tokio::task::spawn_blocking(move || send_flood(n, target))
        .await
        .map_err(|e| Error::Config(format!("flood task: {e}")))??;
    let elapsed = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    if let Some(watcher) = watcher {
        watcher.abort();
    }
    let regular_answered = ping_answered(&regular, 3).await;
    let kernel_drops = rcvbuf_errors()
        .zip(drops_before)
        .map(|(after, before)| after.saturating_sub(before));

    println!(
        "flood: {n} datagrams from {n} distinct source addresses and ports in {:.1} s, \
         {answered} answered; the kernel dropped {} datagrams (Udp RcvbufErrors)",
        elapsed.as_secs_f64(),
        show(kernel_drops)
    );
    let (rss_after, peak) = (status_of("VmRSS:"), status_of("VmHWM:"));
    println!(
        "flood: server peak rss (VmHWM) {} kB, rss now {} kB (before the flood {} kB)",
        show(peak),
        show(rss_after),
        show(rss_before)
    );
    match &local {
        Some((ctx, _)) => println!(
            "flood: sessions in the table: {} now, at most {} seen (max_sessions {})",
            ctx.sessions().len(),
            most_sessions.load(Ordering::Relaxed),
            ctx.settings().max_sessions
        ),
        None => println!("flood: session count: see the server's own summary"),
    }
    println!(
        "flood: the established client is {}",
        if regular_answered {
            "still answered"
        } else {
            "NOT answered"
        }
    );
    print_result(
        n,
        answered,
        elapsed,
        [rss_before, rss_after, peak],
        kernel_drops,
        regular_answered,
    );
    if let Some((ctx, _)) = local {
        ctx.shutdown().await;
    }
    Ok(if regular_answered {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The `RESULT key=value ...` line `scripts/bench` reads: the server's RSS before and after
/// the flood and what each source cost it, `bytes_per_source` = (RSS after − RSS before) /
/// sources, so a row needs no arithmetic of its own (`-` when the server's /proc was not read).
/// The RSS figures are VmRSS before and after and VmHWM, in kB; `kernel_drops` is what
/// [`rcvbuf_errors`] counted over the flood.
fn print_result(
    n: usize,
    answered: usize,
    elapsed: Duration,
    [rss_before, rss_after, peak]: [Option<u64>; 3],
    kernel_drops: Option<u64>,
    regular_answered: bool,
) {
    let per_source = rss_before.zip(rss_after).map_or_else(
        || "-".to_string(),
        |(before, after)| {
            let grown = (after as i64 - before as i64) * 1024;
            format!("{:.0}", grown as f64 / n as f64)
        },
    );
    println!(
        "RESULT sources={n} answered={answered} elapsed_s={:.1} rss_before_kb={} \
         rss_after_kb={} hwm_kb={} bytes_per_source={per_source} kernel_drops={} \
         regular_answered={}",
        elapsed.as_secs_f64(),
        show(rss_before),
        show(rss_after),
        show(peak),
        show(kernel_drops),
        u8::from(regular_answered),
    );
}

/// Datagrams the kernel dropped because a UDP socket's receive buffer was full, machine-wide:
/// during a flood on loopback they are the server's (the sources' sockets each receive one
/// answer), and they tell a server that did not answer from one that never got the datagram.
fn rcvbuf_errors() -> Option<u64> {
    net_counter("/proc/net/snmp", "Udp:", "RcvbufErrors")
}

fn show(kb: Option<u64>) -> String {
    kb.map_or_else(|| "?".into(), |kb| kb.to_string())
}

async fn ping_answered(socket: &UdpSocket, message_id: u16) -> bool {
    let [high, low] = message_id.to_be_bytes();
    if socket.send(&[0x40, 0x00, high, low]).await.is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_secs(1), socket.recv(&mut buf)).await,
        Ok(Ok(4)) if buf[..4] == [0x70, 0x00, high, low]
    )
}

/// The distinct source addresses: 127.0.0.2 with every port of [`SOURCE_PORTS`], then
/// 127.0.0.3, and so on.
fn sources() -> impl Iterator<Item = SocketAddr> {
    (2..=254u8)
        .flat_map(|host| SOURCE_PORTS.map(move |port| SocketAddr::from(([127, 0, 0, host], port))))
}

/// Sends one ping from each of `n` sources, a window at a time, and counts the RSTs that came
/// back. A source address already in use on this machine is skipped for the next one.
fn send_flood(n: usize, target: SocketAddr) -> Result<usize> {
    let mut answered = 0;
    let mut sent = 0;
    let mut sources = sources();
    let mut buf = [0u8; 64];
    while sent < n {
        let mut window = Vec::with_capacity(FLOOD_WINDOW);
        while window.len() < FLOOD_WINDOW.min(n - sent) {
            let source = sources
                .next()
                .ok_or_else(|| Error::Config(format!("flood {n}: out of source addresses")))?;
            if let Ok(socket) = std::net::UdpSocket::bind(source) {
                socket.set_nonblocking(true)?;
                let [high, low] = ((sent + window.len()) as u16).to_be_bytes();
                if socket.send_to(&[0x40, 0x00, high, low], target).is_ok() {
                    window.push(socket);
                }
            }
        }
        sent += window.len();
        let deadline = Instant::now() + FLOOD_WINDOW_WAIT;
        while !window.is_empty() && Instant::now() < deadline {
            window.retain(|socket| match socket.recv(&mut buf) {
                Ok(_) => {
                    answered += 1;
                    false
                }
                Err(_) => true,
            });
            if !window.is_empty() {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    }
    Ok(answered)
}
