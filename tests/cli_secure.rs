//! The built `coap-keepalive` binary over DTLS and TLS: `ping` against libcoap 4.3.1's
//! `coap-server-openssl` (PSK and certificates) and against our own `serve`, `certs`, and the
//! one-line causes of failed handshakes.
//!
//! Every child is killed when its guard drops, also on panic; readiness is polled, never
//! slept for; every test has its own ports.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_coap-keepalive");
/// How long a server gets to come up.
const STARTUP: Duration = Duration::from_secs(10);

/// A child process killed and reaped when dropped.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// True when `program` is installed; otherwise says the test is skipped.
fn installed(program: &str) -> bool {
    let found = Command::new(program)
        .arg("-?")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        eprintln!("skipped: {program} is not installed");
    }
    found
}

/// A port P such that UDP and TCP P and P+1 on loopback are free right now.
fn free_port_pair() -> u16 {
    for _ in 0..100 {
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = udp.local_addr().unwrap().port();
        if port >= u16::MAX - 1 {
            continue;
        }
        let free = UdpSocket::bind((Ipv4Addr::LOCALHOST, port + 1)).is_ok()
            && TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
            && TcpListener::bind((Ipv4Addr::LOCALHOST, port + 1)).is_ok();
        if free {
            return port;
        }
    }
    panic!("no free port pair on loopback");
}

/// Starts `coap-server-openssl -A 127.0.0.1 -p P` with `args` and waits until it serves; its
/// DTLS and TLS endpoints are on P+1, which is returned.
fn libcoap_server(args: &[&str]) -> (ChildGuard, u16) {
    let port = free_port_pair();
    let child = Command::new("coap-server-openssl")
        .args(["-A", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start coap-server-openssl");
    let mut guard = ChildGuard(child);
    // libcoap opens UDP, DTLS, TCP and TLS in that order: once TCP P accepts, DTLS P+1 is bound.
    let deadline = Instant::now() + STARTUP;
    while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
        assert!(
            guard.0.try_wait().unwrap().is_none(),
            "coap-server-openssl exited"
        );
        assert!(
            Instant::now() < deadline,
            "coap-server-openssl did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (guard, port + 1)
}

/// Runs the binary to completion, at most `limit`.
fn run(args: &[&str], limit: Duration) -> Output {
    let child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start coap-keepalive");
    let (tx, rx) = mpsc::channel();
    let id = child.id();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(output) => output.unwrap(),
        Err(_) => {
            // The waiting thread owns the child: kill it by its id, then collect it.
            let _ = Command::new("kill").arg(id.to_string()).status();
            let output = rx.recv().unwrap().unwrap();
            panic!(
                "coap-keepalive {args:?} ran longer than {limit:?}\n{}",
                text(&output)
            );
        }
    }
}

fn text(output: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn pong_lines(output: &Output) -> usize {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| line.starts_with("pong from"))
        .count()
}

/// Asserts a successful `ping -c 3`.
fn assert_three_pongs(output: &Output) {
    assert!(output.status.success(), "{}", text(output));
    assert_eq!(pong_lines(output), 3, "{}", text(output));
}

/// Asserts a failed ping that said why in one line on stderr containing `cause`.
fn assert_failed_with(output: &Output, cause: &str) {
    assert!(!output.status.success(), "{}", text(output));
    assert_eq!(pong_lines(output), 0, "{}", text(output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{}", text(output));
    assert!(lines[0].contains(cause), "{}", text(output));
}

/// `coap-keepalive certs --out DIR` in a fresh temporary directory.
fn certs() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("certs");
    let output = run(
        &["certs", "--out", dir.to_str().unwrap()],
        Duration::from_secs(10),
    );
    assert!(output.status.success(), "{}", text(&output));
    (tmp, dir)
}

fn file(dir: &Path, name: &str) -> String {
    dir.join(name).to_str().unwrap().to_owned()
}

// ---- against libcoap ----

#[test]
fn dtls_psk_ping_against_libcoap() {
    if !installed("coap-server-openssl") {
        return;
    }
    let (_server, port) = libcoap_server(&["-k", "secret"]);
    let uri = format!("coaps://127.0.0.1:{port}");
    // libcoap answers at most one ping per 250 ms: space them a little more.
    let output = run(
        &[
            "ping",
            &uri,
            "--psk-identity",
            "id",
            "--psk-key",
            "secret",
            "-c",
            "3",
            "-i",
            "0.3",
        ],
        Duration::from_secs(15),
    );
    assert_three_pongs(&output);
}

#[test]
fn tls_ping_against_libcoap() {
    if !installed("coap-server-openssl") {
        return;
    }
    let (_tmp, dir) = certs();
    let (_server, port) = libcoap_server(&[
        "-c",
        &file(&dir, "server.pem"),
        "-j",
        &file(&dir, "server.key"),
    ]);
    let uri = format!("coaps+tcp://127.0.0.1:{port}");
    let output = run(
        &[
            "ping",
            &uri,
            "--ca",
            &file(&dir, "ca.pem"),
            "-c",
            "3",
            "-i",
            "0.3",
        ],
        Duration::from_secs(15),
    );
    assert_three_pongs(&output);
}

#[test]
fn wrong_psk_against_libcoap_fails_within_the_timeout() {
    if !installed("coap-server-openssl") {
        return;
    }
    let (_server, port) = libcoap_server(&["-k", "secret"]);
    let uri = format!("coaps://127.0.0.1:{port}");
    let started = Instant::now();
    // libcoap drops the Finished it cannot decrypt: the handshake times out mid-way.
    let output = run(
        &[
            "ping",
            &uri,
            "--psk-identity",
            "id",
            "--psk-key",
            "wrong",
            "-c",
            "3",
            "--handshake-timeout",
            "1",
        ],
        Duration::from_secs(10),
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_failed_with(&output, "DTLS handshake failed: wrong PSK");
}

#[test]
fn missing_client_certificate_against_libcoap() {
    if !installed("coap-server-openssl") {
        return;
    }
    let (_tmp, dir) = certs();
    let (_server, port) = libcoap_server(&[
        "-c",
        &file(&dir, "server.pem"),
        "-j",
        &file(&dir, "server.key"),
        "-C",
        &file(&dir, "ca.pem"),
    ]);
    for scheme in ["coaps", "coaps+tcp"] {
        let uri = format!("{scheme}://127.0.0.1:{port}");
        let output = run(
            &["ping", &uri, "--ca", &file(&dir, "ca.pem"), "-c", "1"],
            Duration::from_secs(10),
        );
        assert_failed_with(&output, "handshake failed: missing client certificate");
    }
}

// ---- our serve against our ping ----

/// `coap-keepalive serve` with `args`; returns it and the addresses it printed, by scheme.
fn serve(args: &[&str]) -> (ChildGuard, Vec<(String, String)>) {
    let mut child = Command::new(BIN)
        .arg("serve")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start coap-keepalive serve");
    let stdout: ChildStdout = child.stdout.take().unwrap();
    let guard = ChildGuard(child);
    let expected = args
        .iter()
        .filter(|a| a.starts_with("--") && matches!(**a, "--udp" | "--tcp" | "--dtls" | "--tls"))
        .count();
    // Read the "serving SCHEME://ADDR" lines on a thread, so that a silent server cannot hang
    // the test; the thread keeps draining stdout afterwards.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("serving ") {
                let uri = rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                let scheme = uri.split("://").next().unwrap_or_default().to_owned();
                let _ = tx.send((scheme, uri));
            }
        }
    });
    let mut endpoints = Vec::new();
    while endpoints.len() < expected {
        endpoints.push(
            rx.recv_timeout(STARTUP)
                .expect("serve printed its endpoints"),
        );
    }
    (guard, endpoints)
}

fn uri_of(endpoints: &[(String, String)], scheme: &str) -> String {
    endpoints
        .iter()
        .find(|(s, _)| s == scheme)
        .map(|(_, uri)| uri.clone())
        .unwrap_or_else(|| panic!("no {scheme} endpoint in {endpoints:?}"))
}

#[test]
fn our_ping_against_our_serve() {
    let (_tmp, dir) = certs();
    let (_server, endpoints) = serve(&[
        "--dtls",
        "127.0.0.1:0",
        "--tls",
        "127.0.0.1:0",
        "--psk-identity",
        "id",
        "--psk-key",
        "secret",
        "--cert",
        &file(&dir, "server.pem"),
        "--key",
        &file(&dir, "server.key"),
    ]);
    let dtls = uri_of(&endpoints, "coaps");
    let tls = uri_of(&endpoints, "coaps+tcp");
    let limit = Duration::from_secs(10);
    let psk = ["--psk-identity", "id", "--psk-key", "secret"];

    let output = run(
        &[&["ping", &dtls, "-c", "3", "-i", "0.05"][..], &psk].concat(),
        limit,
    );
    assert_three_pongs(&output);
    let ca = file(&dir, "ca.pem");
    let output = run(&["ping", &tls, "--ca", &ca, "-c", "3", "-i", "0.05"], limit);
    assert_three_pongs(&output);

    // Our server answers a wrong key with an alert: the cause is named at once.
    let output = run(
        &[
            "ping",
            &dtls,
            "--psk-identity",
            "id",
            "--psk-key",
            "wrong",
            "-c",
            "1",
        ],
        limit,
    );
    assert_failed_with(&output, "wrong PSK");
    // A CA that did not sign the server's certificate.
    let (_other_tmp, other) = certs();
    let output = run(
        &["ping", &tls, "--ca", &file(&other, "ca.pem"), "-c", "1"],
        limit,
    );
    assert_failed_with(&output, "untrusted server certificate");
    // Insecure mode connects, and says that it does not verify.
    let output = run(&["ping", &tls, "--insecure", "-c", "1"], limit);
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("not verified"),
        "{}",
        text(&output)
    );
    // No credentials at all: refused, never plaintext.
    let output = run(&["ping", &tls, "-c", "1"], limit);
    assert_failed_with(&output, "needs credentials");
}

#[test]
fn serve_with_ca_requires_client_certificates() {
    let (_tmp, dir) = certs();
    let (_server, endpoints) = serve(&[
        "--tls",
        "127.0.0.1:0",
        "--cert",
        &file(&dir, "server.pem"),
        "--key",
        &file(&dir, "server.key"),
        "--ca",
        &file(&dir, "ca.pem"),
    ]);
    let tls = uri_of(&endpoints, "coaps+tcp");
    let ca = file(&dir, "ca.pem");
    let limit = Duration::from_secs(10);
    let output = run(&["ping", &tls, "--ca", &ca, "-c", "1"], limit);
    assert_failed_with(&output, "missing client certificate");
    let output = run(
        &[
            "ping",
            &tls,
            "--ca",
            &ca,
            "--cert",
            &file(&dir, "client.pem"),
            "--key",
            &file(&dir, "client.key"),
            "-c",
            "2",
            "-i",
            "0.05",
        ],
        limit,
    );
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(pong_lines(&output), 2, "{}", text(&output));
}

#[test]
fn handshake_timeout_against_a_silent_listener() {
    let silent = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let uri = format!("coaps+tcp://{}", silent.local_addr().unwrap());
    let started = Instant::now();
    let output = run(
        &[
            "ping",
            &uri,
            "--insecure",
            "-c",
            "1",
            "--handshake-timeout",
            "0.5",
        ],
        Duration::from_secs(5),
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(!output.status.success(), "{}", text(&output));
    // The insecure warning, then the cause.
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr
            .lines()
            .last()
            .unwrap_or_default()
            .contains("TLS handshake failed: handshake timeout"),
        "{}",
        text(&output)
    );
}

#[test]
fn certs_writes_six_pem_files() {
    let (_tmp, dir) = certs();
    for name in [
        "ca.pem",
        "ca.key",
        "server.pem",
        "server.key",
        "client.pem",
        "client.key",
    ] {
        let contents = std::fs::read_to_string(dir.join(name)).unwrap();
        assert!(contents.starts_with("-----BEGIN "), "{name}");
    }
}
