//! `coap-keepalive serve` as a user runs it: a line in words for every event (its own pings
//! included, requests at `-v`), a consistent summary, `/time` notifying every second (also to
//! libcoap's coap-client), clear refusals (multicast, unused credentials, a port in use);
//! `observe` and the request commands' refusals.

mod support;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use support::cli::{lines, run, text, Running};
use support::libcoap::LibcoapProcess;

const LIMIT: Duration = Duration::from_secs(20);

/// `serve` with `args` (`listeners` of them addresses to serve), and each "serving
/// SCHEME://ADDR" line with its address, in order.
fn serve(args: &[&str], listeners: usize) -> (Running, Vec<(String, SocketAddr)>) {
    let mut all = vec!["serve"];
    all.extend_from_slice(args);
    let mut server = Running::spawn(&all);
    let mut serving: Vec<(String, SocketAddr)> = Vec::new();
    while serving.len() < listeners {
        let line = server.wait_line(LIMIT, |l| {
            l.starts_with("serving ") && !serving.iter().any(|(s, _)| s == l)
        });
        let uri = line.split_whitespace().nth(1).unwrap().to_string();
        let addr = uri.split("://").nth(1).unwrap().parse().unwrap();
        serving.push((line, addr));
    }
    (server, serving)
}

/// Interrupts the server and returns its output.
fn stop(mut server: Running) -> std::process::Output {
    server.interrupt();
    let output = server.wait(LIMIT);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    output
}

/// Asserts that no event line carries Rust Debug text.
fn assert_no_debug_text(output: &std::process::Output) {
    for line in lines(output).iter().filter(|l| l.starts_with('[')) {
        let words = &line[12..];
        assert!(
            !words.contains(['{', '}']),
            "Debug text in {line:?}\n{}",
            text(output)
        );
        for debug in [
            "Some",
            "None",
            "PingUnanswered",
            "Established",
            "Closed",
            "count:",
        ] {
            assert!(
                !words.contains(debug),
                "{debug} in {line:?}\n{}",
                text(output)
            );
        }
    }
}

fn line_with<'a>(lines: &'a [String], words: &str) -> &'a String {
    lines
        .iter()
        .find(|l| l.contains(words))
        .unwrap_or_else(|| panic!("no line with {words:?} in\n{}", lines.join("\n")))
}

#[test]
fn serve_prints_every_event_in_words_with_its_own_pings() {
    let (mut server, serving) = serve(
        &["--udp", "127.0.0.1:0", "--tcp", "127.0.0.1:0", "-K", "1"],
        2,
    );
    let udp_addr = serving[0].1;
    let tcp_addr = serving[1].1;
    // A UDP client pings once, then answers the server's pings with RST.
    let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    udp.set_read_timeout(Some(LIMIT)).unwrap();
    udp.send_to(&[0x40, 0x00, 0x12, 0x34], udp_addr).unwrap();
    let mut buf = [0u8; 64];
    let (n, _) = udp.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], &[0x70, 0x00, 0x12, 0x34]);
    let (n, _) = udp.recv_from(&mut buf).unwrap();
    assert_eq!(
        &buf[..2],
        &[0x40, 0x00],
        "the server's ping: {:02x?}",
        &buf[..n]
    );
    udp.send_to(&[0x70, 0x00, buf[2], buf[3]], udp_addr)
        .unwrap();
    server.wait_line(LIMIT, |l| l.contains("pong in "));
    // A TCP client: CSM, a Ping, then it closes.
    let mut tcp = TcpStream::connect(tcp_addr).unwrap();
    tcp.set_read_timeout(Some(LIMIT)).unwrap();
    tcp.write_all(&[0x00, 0xe1, 0x00, 0xe2]).unwrap();
    server.wait_line(LIMIT, |l| {
        l.starts_with('[') && l.contains("tcp ") && l.contains("ping received")
    });
    let _ = tcp.read(&mut buf);
    drop(tcp);
    server.wait_line(LIMIT, |l| {
        l.contains("tcp ") && l.contains("session ") && !l.contains("established")
    });
    let output = stop(server);
    assert_no_debug_text(&output);
    let lines = lines(&output);
    let established = line_with(&lines, "udp  client 127.0.0.1:");
    assert!(
        established.ends_with("session established"),
        "{established}"
    );
    line_with(&lines, "ping received (MID 0x1234), answered");
    line_with(&lines, "ping sent");
    line_with(&lines, "tcp  client ");
    let summary = line_with(&lines, "served 2 sessions in ");
    // Each session counts once: the UDP one was open at exit, the TCP one ended.
    // (Until a peer's close with nothing outstanding is a close, not a nack, it may count
    // as failed; either way once.)
    assert!(
        (summary.contains("(1 closed, 1 open at exit)") && summary.ends_with(", 0 failed"))
            || (summary.contains("(0 closed, 1 open at exit)") && summary.ends_with(", 1 failed")),
        "{summary}"
    );
    assert!(summary.contains(" 2 pings received, "), "{summary}");
}

#[test]
fn serve_prints_requests_at_v() {
    let (server, serving) = serve(&["--udp", "127.0.0.1:0"], 1);
    let uri = format!("coap://{}/time", serving[0].1);
    let output = run(&["get", &uri], LIMIT);
    assert!(output.status.success(), "{}", text(&output));
    let quiet = stop(server);
    assert!(
        !lines(&quiet).iter().any(|l| l.contains("GET /time")),
        "requests only at -v\n{}",
        text(&quiet)
    );

    let (server, serving) = serve(&["--udp", "127.0.0.1:0", "-v"], 1);
    let uri = format!("coap://{}/time", serving[0].1);
    let output = run(&["get", &uri], LIMIT);
    assert!(output.status.success(), "{}", text(&output));
    let verbose = stop(server);
    line_with(&lines(&verbose), "GET /time -> 2.05, 20 bytes");
    assert_no_debug_text(&verbose);
}

/// Asserts a usage error (exit 2) whose stderr contains `says`.
fn assert_refused(args: &[&str], says: &str) {
    let output = run(args, LIMIT);
    assert_eq!(output.status.code(), Some(2), "{args:?}\n{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(says), "{args:?}\n{}", text(&output));
    assert!(
        !String::from_utf8_lossy(&output.stdout).contains("serving"),
        "{}",
        text(&output)
    );
}

#[test]
fn serve_refuses_multicast_and_unused_credentials() {
    assert_refused(&["serve", "--udp", "224.0.1.187:5999"], "multicast");
    assert_refused(&["serve", "--udp", "[ff02::fd]:5999"], "multicast");
    assert_refused(
        &["serve", "--udp", "127.0.0.1:0", "--tcp", "239.1.2.3:5999"],
        "239.1.2.3 is a multicast address",
    );
    assert_refused(
        &["serve", "--udp", "127.0.0.1:0", "--psk-key", "k"],
        "--psk-key and --psk-file apply to --dtls only",
    );
    assert_refused(
        &["serve", "--dtls", "127.0.0.1:0"],
        "--dtls needs --psk-key",
    );
}

#[test]
fn serve_names_the_listener_that_failed_and_why() {
    let taken = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let addr = taken.local_addr().unwrap();
    let output = run(
        &["serve", "--udp", "127.0.0.1:0", "--tcp", &addr.to_string()],
        LIMIT,
    );
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("cannot serve coap+tcp://{addr} (tcp): "))
            && stderr.to_lowercase().contains("in use"),
        "{}",
        text(&output)
    );
}

#[test]
fn time_notifies_every_second_and_observe_counts_alike() {
    let (server, serving) = serve(&["--udp", "127.0.0.1:0"], 1);
    let uri = format!("coap://{}/time", serving[0].1);
    let output = run(&["observe", &uri, "-s", "3.5"], LIMIT);
    stop(server);
    assert!(output.status.success(), "{}", text(&output));
    let lines = lines(&output);
    assert!(
        lines[0].starts_with("2.05 Content (registered, observe "),
        "{}",
        text(&output)
    );
    let notifications = lines
        .iter()
        .filter(|l| l.starts_with("notification "))
        .count();
    assert!(notifications >= 3, "{}", text(&output));
    assert_eq!(
        lines.last().unwrap(),
        &format!("the first response and {notifications} notifications"),
        "{}",
        text(&output)
    );
}

#[test]
fn observe_that_ends_before_the_run_does_exits_1_and_says_why() {
    let (server, serving) = serve(&["--tcp", "127.0.0.1:0"], 1);
    let uri = format!("coap+tcp://{}/time", serving[0].1);
    let mut observer = Running::spawn(&["observe", &uri, "-s", "30"]);
    observer.wait_line(LIMIT, |l| l.starts_with("notification 1:"));
    // The server goes away (its shutdown releases the connection): the observation ends early.
    stop(server);
    let output = observer.wait(LIMIT);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let text = text(&output);
    assert!(
        text.contains("(observation ended early: the session closed)"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coap_client_observing_time_for_5_seconds_gets_at_least_4_notifications() {
    let (server, serving) = serve(&["--udp", "127.0.0.1:0"], 1);
    let uri = format!("coap://{}/time", serving[0].1);
    let mut client = LibcoapProcess::spawn("coap-client-notls", ["-w", "-s", "5", &uri]);
    client.wait_exit(LIMIT).await;
    stop(server);
    let times = client
        .log()
        .lines()
        .filter(|l| l.len() == 20 && l.ends_with('Z') && l.contains('T'))
        .count();
    assert!(
        times >= 5,
        "the first representation and at least 4 notifications\n{}",
        client.report()
    );
}

#[test]
fn request_commands_refuse_what_they_would_ignore() {
    let peer = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let uri = format!("coap://{}/echo", peer.local_addr().unwrap());
    assert_refused(
        &["get", &uri, "-e", "text"],
        "-e (--payload) applies to PUT and POST only",
    );
    assert_refused(
        &["delete", &uri, "-e", "text"],
        "a DELETE carries no payload",
    );
    assert_refused(&["observe", &uri, "-e", "text"], "-e (--payload)");
    assert_refused(
        &["get", &uri, "--psk-identity", "i", "--psk-key", "k"],
        "--psk-key does not apply to coap://",
    );
    assert_refused(
        &["get", "coap+tcp://127.0.0.1:1/x", "--non"],
        "--non applies to coap://",
    );
    assert_refused(&["get", "coap://224.0.1.187/.well-known/core"], "multicast");
    let mut buf = [0u8; 16];
    peer.set_nonblocking(true).unwrap();
    assert!(peer.recv_from(&mut buf).is_err(), "nothing was sent");
}
