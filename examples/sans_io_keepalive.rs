//! Keeps a CoAP-over-UDP session alive with a blocking `std::net::UdpSocket` and the crate's
//! sans-IO protocol core: no tokio runtime, no async, one thread.
//!
//! ```text
//! cargo run --example sans_io_keepalive -- ADDR [INTERVAL_SECS] [MAX_PONGS] [FLAGS]
//! cargo run --example sans_io_keepalive -- 127.0.0.1:5683 2 5
//! ```
//! pings the CoAP server at ADDR (`coap-keepalive serve`, libcoap's `coap-server`, ...) after
//! every INTERVAL_SECS idle seconds (default 2, fractions allowed: `0.2`), answers the server's
//! own pings, prints one line per event, and exits 0 after MAX_PONGS pongs (default: run until
//! the session fails). When the session fails it prints `nack: REASON` (for instance "too many
//! retries", or "destination unreachable (ICMP)" once the server's port is closed) and exits 1.
//!
//! Flags, for tests and lossy links (the RFC 7252 defaults otherwise):
//! - `--ack-timeout-ms N`: ACK_TIMEOUT of each ping, in milliseconds (default 2000);
//! - `--max-retransmit N`: MAX_RETRANSMIT, retransmissions of an unanswered ping (default 4).
//!
//! The loop is the libssh2 `keepalive_send` pattern: the core says, with `poll_timeout`, how long
//! the program may block; the program blocks in `recv` that long at most, and hands the core
//! whatever happened (a datagram, the deadline, an ICMP error) with the current time.

use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use coap_keepalive::proto::datagram::DatagramSession;
use coap_keepalive::proto::keepalive::PingTransmit;
use coap_keepalive::proto::rng::Rng;
use coap_keepalive::proto::ProtocolEvent;
use coap_keepalive::{KeepaliveConfig, NackReason, PeerPing, TransmissionParams};

/// A CoAP message is at most 1152 bytes over UDP (RFC 7252 §4.6); anything longer is not ours.
const MAX_DATAGRAM: usize = 1152;

const USAGE: &str = "usage: sans_io_keepalive ADDR [INTERVAL_SECS] [MAX_PONGS] \
                     [--ack-timeout-ms N] [--max-retransmit N]";

/// The command line, parsed.
struct Args {
    server: SocketAddr,
    interval: Duration,
    max_pongs: Option<u64>,
    transmission: TransmissionParams,
}

fn parse_args() -> Result<Args, String> {
    let mut positional = Vec::new();
    let mut transmission = TransmissionParams::default();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--ack-timeout-ms" | "--max-retransmit" => {
                let value = args.next().ok_or(format!("{arg} needs a value"))?;
                let n: u32 = value
                    .parse()
                    .map_err(|_| format!("{arg}: {value:?} is not a whole number"))?;
                transmission = if arg == "--ack-timeout-ms" {
                    transmission.with_ack_timeout(Duration::from_millis(n.into()))
                } else {
                    transmission.with_max_retransmit(n)
                };
            }
            "-h" | "--help" => return Err(USAGE.into()),
            _ => positional.push(arg),
        }
    }
    let mut positional = positional.into_iter();
    let server = positional
        .next()
        .ok_or(USAGE)?
        .parse()
        .map_err(|e| format!("ADDR: {e} (an IP address and port, e.g. 127.0.0.1:5683)"))?;
    let interval = match positional.next() {
        None => Duration::from_secs(2),
        Some(s) => s
            .parse::<f64>()
            .ok()
            .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
            .filter(|d| !d.is_zero())
            .ok_or(format!("INTERVAL_SECS: {s:?} is not a positive number"))?,
    };
    let max_pongs = positional
        .next()
        .map(|s| s.parse().map_err(|_| format!("MAX_PONGS: {s:?}")))
        .transpose()?;
    if let Some(extra) = positional.next() {
        return Err(format!("unexpected argument {extra:?}\n{USAGE}"));
    }
    Ok(Args {
        server,
        interval,
        max_pongs,
        transmission,
    })
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(why) => {
            eprintln!("sans_io_keepalive: {why}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(reason) => {
            println!("nack: {reason}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the session until `max_pongs` pongs (`Ok`) or its failure (`Err` with the nack reason).
fn run(args: &Args) -> Result<(), NackReason> {
    let config = KeepaliveConfig::default()
        .with_interval(Some(args.interval))
        .with_transmission(args.transmission);
    // The core trusts its configuration; an invalid one is the user's mistake, said plainly.
    if let Err(e) = config.validate() {
        eprintln!("sans_io_keepalive: {e}");
        std::process::exit(2);
    }

    // Connected, so that the kernel drops datagrams from anyone else and reports an ICMP port
    // unreachable from the server as an error on this socket.
    let socket = UdpSocket::bind(if args.server.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    })
    .and_then(|s| s.connect(args.server).map(|()| s))
    .unwrap_or_else(|e| {
        eprintln!("sans_io_keepalive: {}: {e}", args.server);
        std::process::exit(2);
    });
    let peer = args.server;
    println!(
        "keeping {peer} alive over UDP without tokio: a ping after {} s idle",
        args.interval.as_secs_f64()
    );

    let mut session = DatagramSession::new(config, Rng::from_entropy(), Instant::now());
    // Ping at once rather than after the first idle interval: the server learns of the session
    // now, and a wrong address shows in the first round trip.
    session.ping_now(Instant::now());

    let mut pongs = 0u64;
    let mut buf = [0u8; MAX_DATAGRAM];
    loop {
        // 1. Everything the core wants sent. A send error is the core's to judge, like any input.
        while let Some(datagram) = session.poll_transmit() {
            if let Err(e) = socket.send(&datagram) {
                unreachable_or_failed(&mut session, &e);
            }
        }

        // 2. Everything that happened, in words. Answering a ping queues its RST: step 1 again
        // sends it before this loop sleeps.
        let mut answered = false;
        while let Some(event) = session.poll_event() {
            match event {
                ProtocolEvent::PingSent(PingTransmit::Datagram {
                    message_id,
                    retransmission,
                }) => {
                    let what = if retransmission {
                        "retransmitted"
                    } else {
                        "sent"
                    };
                    println!("ping {what} to {peer}: mid=0x{message_id:04x}");
                }
                ProtocolEvent::Pong { rtt } => {
                    pongs += 1;
                    println!(
                        "pong {pongs} from {peer}: time={:.3} ms",
                        rtt.as_secs_f64() * 1e3
                    );
                    if args.max_pongs.is_some_and(|max| pongs >= max) {
                        return Ok(());
                    }
                }
                ProtocolEvent::PeerPing(ping) => {
                    // The core queues the answer (an RST echoing the ping's Message ID); it
                    // leaves through poll_transmit with everything else. A program that wants
                    // to look dead to its peer leaves this call out.
                    session.answer_ping(&ping);
                    answered = true;
                    if let PeerPing::Datagram { message_id } = ping {
                        println!("ping from {peer} answered: mid=0x{message_id:04x}");
                    }
                }
                ProtocolEvent::PingUnanswered { count } => {
                    println!("ping unanswered ({count} in a row)");
                }
                ProtocolEvent::Failed(reason) => return Err(reason),
                ProtocolEvent::Closed => {
                    println!("session closed");
                    return Ok(());
                }
                ProtocolEvent::Rejected(why) => println!("rejected: {why}"),
                // Requests, responses and notifications: this program makes and serves none.
                other => println!("ignored: {other:?}"),
            }
        }
        if answered {
            continue;
        }
        // Failed and Closed returned above; a core that finished without saying so has no
        // deadline left (poll_timeout is None), and blocking in recv for ever would hang.
        if session.is_finished() {
            return Ok(());
        }

        // 3. Block until the core's next deadline at most, then give it what happened.
        let now = Instant::now();
        let wait = match session.poll_timeout() {
            Some(deadline) if deadline <= now => {
                session.handle_timeout(now);
                continue;
            }
            Some(deadline) => Some(deadline - now),
            None => None,
        };
        // Never Some(ZERO), which set_read_timeout refuses: a due deadline was handled above.
        socket
            .set_read_timeout(wait)
            .expect("a non-zero read timeout");
        match socket.recv(&mut buf) {
            Ok(len) => session.handle_datagram(Instant::now(), &buf[..len]),
            // The read timeout: WouldBlock on Unix, TimedOut on Windows.
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                session.handle_timeout(Instant::now());
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => unreachable_or_failed(&mut session, &e),
        }
    }
}

/// A socket error, told to the core: an ICMP error the kernel attributes to the connected peer
/// (Linux reports port unreachable as `ConnectionRefused` on the next send or recv) is the core's
/// `handle_unreachable`, which applies the configured ICMP policy; anything else means our
/// datagram never left, `NotDeliverable`.
fn unreachable_or_failed(session: &mut DatagramSession, error: &std::io::Error) {
    if matches!(
        error.kind(),
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionReset | ErrorKind::HostUnreachable
    ) {
        session.handle_unreachable(Instant::now(), &error.to_string());
    } else {
        session.fail(NackReason::NotDeliverable);
    }
}
