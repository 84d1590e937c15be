//! `coap-keepalive ping` as a user runs it, against raw UDP peers whose answers the test
//! chooses: it always ends, numbers every ping it sends, summarises like ping(8) and exits as
//! ping(8) does; it refuses multicast and flags the URI's transport would ignore.

mod support;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::cli::{lines, run, text, Running};

/// Generous bound on any one run: the runs below take well under a second or two.
const LIMIT: Duration = Duration::from_secs(20);

/// What a raw peer does with one datagram it received: the bytes to send back, if any.
type Policy = Box<dyn FnMut(&[u8]) -> Option<Vec<u8>> + Send>;

/// A UDP socket on loopback answering as its policy says, in a thread of its own; it records
/// every datagram it received.
struct RawPeer {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Vec<u8>>>>,
    first: mpsc::Receiver<()>,
}

impl RawPeer {
    fn start(mut policy: Policy) -> RawPeer {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = socket.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = received.clone();
        let (tx, first) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            // The thread ends with the test process; a test's peer outlives its run only idle.
            while let Ok((n, from)) = socket.recv_from(&mut buf) {
                log.lock().unwrap().push(buf[..n].to_vec());
                let _ = tx.send(());
                if let Some(reply) = policy(&buf[..n]) {
                    let _ = socket.send_to(&reply, from);
                }
            }
        });
        RawPeer {
            addr,
            received,
            first,
        }
    }

    /// Answers nothing.
    fn silent() -> RawPeer {
        RawPeer::start(Box::new(|_| None))
    }

    fn uri(&self) -> String {
        format!("coap://{}", self.addr)
    }

    /// The distinct Message IDs of the empty CONs received, in order.
    fn ping_ids(&self) -> Vec<u16> {
        let mut ids = Vec::new();
        for datagram in self.received.lock().unwrap().iter() {
            assert_eq!(
                &datagram[..2],
                &[0x40, 0x00],
                "an empty CON: {datagram:02x?}"
            );
            let id = u16::from_be_bytes([datagram[2], datagram[3]]);
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        ids
    }
}

/// node-coap's answer to an empty CON: an ACK with its Message ID carrying a 2.05, no token.
fn ack_with_content(ping: &[u8]) -> Option<Vec<u8>> {
    let mut ack = vec![0x60, 0x45, ping[2], ping[3], 0xff];
    ack.extend_from_slice(b"hello");
    Some(ack)
}

/// The RST answering `ping`.
fn rst(ping: &[u8]) -> Option<Vec<u8>> {
    Some(vec![0x70, 0x00, ping[2], ping[3]])
}

fn pong_seqs(output: &std::process::Output) -> Vec<u64> {
    seqs(output, "pong from ")
}

fn seqs(output: &std::process::Output, prefix: &str) -> Vec<u64> {
    lines(output)
        .iter()
        .filter(|line| line.starts_with(prefix))
        .filter_map(|line| {
            let rest = line.split("seq=").nth(1)?;
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

fn summary(output: &std::process::Output) -> String {
    lines(output)
        .into_iter()
        .find(|line| line.contains(" pings sent, "))
        .unwrap_or_else(|| panic!("no summary\n{}", text(output)))
}

#[test]
fn ping_answered_by_acks_carrying_a_response_ends_after_its_count() {
    let peer = RawPeer::start(Box::new(ack_with_content));
    let output = run(&["ping", &peer.uri(), "-c", "3", "-i", "0.02"], LIMIT);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert_eq!(pong_seqs(&output), [1, 2, 3], "{}", text(&output));
    assert!(
        summary(&output).starts_with("3 pings sent, 3 pongs received, 0 retransmissions, 0% loss"),
        "{}",
        text(&output)
    );
    assert!(
        lines(&output)
            .iter()
            .any(|l| l.starts_with("rtt min/avg/max/mdev = ")),
        "{}",
        text(&output)
    );
    assert_eq!(peer.ping_ids().len(), 3, "three pings, not one more");
}

#[test]
fn interrupted_ping_to_a_silent_peer_exits_1_and_counts_the_ping_out() {
    let peer = RawPeer::silent();
    let mut ping = Running::spawn(&["ping", &peer.uri()]);
    ping.wait_line(LIMIT, |l| l.starts_with("PING "));
    peer.first
        .recv_timeout(LIMIT)
        .expect("the first ping reaches the peer");
    ping.interrupt();
    let output = ping.wait(LIMIT);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(
        summary(&output)
            .starts_with("1 pings sent, 0 pongs received, 0 retransmissions, 100% loss"),
        "{}",
        text(&output)
    );

    // Interrupted after retransmissions: they are counted as they happen.
    let peer = RawPeer::silent();
    let mut ping = Running::spawn(&["ping", &peer.uri(), "--ack-timeout", "0.05"]);
    ping.wait_line(LIMIT, |l| l.starts_with("PING "));
    for _ in 0..3 {
        peer.first.recv_timeout(LIMIT).expect("a transmission");
    }
    ping.interrupt();
    let output = ping.wait(LIMIT);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let retransmissions = peer.received.lock().unwrap().len() - 1;
    assert_eq!(peer.ping_ids().len(), 1);
    assert!(
        summary(&output).starts_with(&format!(
            "1 pings sent, 0 pongs received, {retransmissions} retransmissions, 100% loss"
        )),
        "the peer got {retransmissions} retransmissions\n{}",
        text(&output)
    );
}

#[test]
fn interrupted_ping_with_pongs_exits_0() {
    let peer = RawPeer::start(Box::new(rst));
    let mut ping = Running::spawn(&["ping", &peer.uri(), "-i", "0.05"]);
    ping.wait_line(LIMIT, |l| {
        l.starts_with("pong from ") && l.contains("seq=2 ")
    });
    ping.interrupt();
    let output = ping.wait(LIMIT);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let sent = peer.ping_ids().len();
    let pongs = pong_seqs(&output).len();
    assert!(
        summary(&output).starts_with(&format!("{sent} pings sent, {pongs} pongs received, ")),
        "the peer got {sent} pings\n{}",
        text(&output)
    );
}

#[test]
fn count_ends_the_run_after_that_many_pings_to_a_silent_peer() {
    let peer = RawPeer::silent();
    let started = Instant::now();
    let output = run(
        &[
            "ping",
            &peer.uri(),
            "-c",
            "3",
            "-i",
            "0.02",
            "--ack-timeout",
            "0.05",
            "--max-retransmit",
            "1",
            "--max-unanswered",
            "5",
        ],
        LIMIT,
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert_eq!(
        seqs(&output, "no answer from "),
        [1, 2, 3],
        "{}",
        text(&output)
    );
    assert!(
        summary(&output)
            .starts_with("3 pings sent, 0 pongs received, 3 retransmissions, 100% loss"),
        "{}",
        text(&output)
    );
    assert_eq!(
        peer.ping_ids().len(),
        3,
        "three pings, each retransmitted once"
    );
    assert_eq!(peer.received.lock().unwrap().len(), 6);
}

#[test]
fn a_given_up_ping_fails_the_session_by_default_and_says_why() {
    let peer = RawPeer::silent();
    let output = run(
        &[
            "ping",
            &peer.uri(),
            "-c",
            "3",
            "--ack-timeout",
            "0.05",
            "--max-retransmit",
            "1",
        ],
        LIMIT,
    );
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(
        lines(&output)
            .iter()
            .any(|l| l.contains("seq=1: too many retries")),
        "{}",
        text(&output)
    );
    assert!(summary(&output).starts_with("1 pings sent, 0 pongs received, 1 retransmissions"));
}

#[test]
fn deadline_ends_the_run() {
    let peer = RawPeer::silent();
    let started = Instant::now();
    let output = run(&["ping", &peer.uri(), "-w", "0.5"], LIMIT);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(summary(&output).starts_with("1 pings sent, 0 pongs received"));
}

#[test]
fn deadline_with_count_exits_1_unless_all_came_back() {
    let peer = RawPeer::start(Box::new(rst));
    let output = run(
        &["ping", &peer.uri(), "-c", "50", "-i", "0.05", "-w", "0.4"],
        LIMIT,
    );
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(!pong_seqs(&output).is_empty(), "{}", text(&output));
    let output = run(
        &["ping", &peer.uri(), "-c", "2", "-i", "0.05", "-w", "5"],
        LIMIT,
    );
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
}

#[test]
fn quiet_prints_only_the_summary() {
    let peer = RawPeer::start(Box::new(rst));
    let output = run(&["ping", &peer.uri(), "-c", "3", "-i", "0.02", "-q"], LIMIT);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let lines = lines(&output);
    assert_eq!(lines.len(), 4, "{}", text(&output));
    assert!(lines[0].starts_with("PING "), "as ping(8) -q");
    assert!(lines[1].starts_with("--- ") && lines[1].ends_with(" ping statistics ---"));
    assert!(lines[2].starts_with("3 pings sent, 3 pongs received"));
    assert!(lines[3].starts_with("rtt min/avg/max/mdev = "));
}

#[test]
fn a_lost_ping_leaves_a_gap_in_seq() {
    // Answers the first ping and the third, never the second (nor its retransmission).
    let mut ids: Vec<u16> = Vec::new();
    let peer = RawPeer::start(Box::new(move |ping| {
        let id = u16::from_be_bytes([ping[2], ping[3]]);
        if !ids.contains(&id) {
            ids.push(id);
        }
        let nth = ids.iter().position(|&i| i == id).unwrap() + 1;
        if nth == 2 {
            None
        } else {
            rst(ping)
        }
    }));
    let output = run(
        &[
            "ping",
            &peer.uri(),
            "-c",
            "3",
            "-i",
            "0.02",
            "--ack-timeout",
            "0.05",
            "--max-retransmit",
            "1",
            "--max-unanswered",
            "2",
        ],
        LIMIT,
    );
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert_eq!(pong_seqs(&output), [1, 3], "{}", text(&output));
    assert_eq!(seqs(&output, "no answer from "), [2], "{}", text(&output));
    assert!(
        summary(&output).starts_with("3 pings sent, 2 pongs received, 1 retransmissions, 33% loss"),
        "{}",
        text(&output)
    );
}

/// Asserts a usage error (exit 2, clap's status) whose message contains `says`, and that
/// nothing was sent.
fn assert_refused(args: &[&str], says: &str) {
    let output = run(args, LIMIT);
    assert_eq!(output.status.code(), Some(2), "{args:?}\n{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(says), "{args:?}\n{}", text(&output));
    assert!(output.stdout.is_empty(), "{args:?}\n{}", text(&output));
}

#[test]
fn multicast_addresses_are_refused() {
    for uri in [
        "coap://224.0.1.187",
        "coap://224.0.1.187:5999",
        "coap://239.255.255.250:7000",
        "coap://[ff02::fd]:5999",
        "coap://[ff05::fd]",
        "coap://[::ffff:224.0.1.187]:5999",
        "coap+tcp://224.0.1.187:5999",
    ] {
        assert_refused(&["ping", uri, "-c", "1"], "multicast");
    }
}

#[test]
fn flags_the_transport_ignores_are_refused() {
    let peer = RawPeer::silent();
    let uri = peer.uri();
    assert_refused(
        &["ping", &uri, "--psk-identity", "id", "--psk-key", "k"],
        "--psk-key does not apply to coap://",
    );
    assert_refused(&["ping", &uri, "--insecure"], "--insecure does not apply");
    assert_refused(
        &["ping", &uri, "--pong-timeout", "1"],
        "--pong-timeout applies to coap+tcp://",
    );
    let tcp = format!("coap+tcp://{}", peer.addr);
    assert_refused(
        &["ping", &tcp, "--ack-timeout", "1"],
        "--ack-timeout applies to coap://",
    );
    let tls = format!("coaps+tcp://{}", peer.addr);
    assert_refused(
        &["ping", &tls, "--psk-identity", "id", "--psk-key", "k"],
        "TLS has no PSK mode",
    );
    assert!(peer.received.lock().unwrap().is_empty());
}
