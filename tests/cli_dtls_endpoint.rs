//! One `serve --dtls` port for PSK clients and certificate clients (issue 14): libcoap 4.3.1's
//! `coap-client-openssl` and `coap-client-gnutls` with `-u/-k`, with `-C` and with a client
//! certificate, and our own `ping coaps://`, all in one run; a PSK file of three identities;
//! and each handshake failure named on both sides.
//!
//! Every child is killed when its guard drops, also on panic; readiness is polled, never slept
//! for; ports are the kernel's (port 0).

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_coap-keepalive");
const STARTUP: Duration = Duration::from_secs(10);
const LIMIT: Duration = Duration::from_secs(15);

/// A child process killed and reaped when dropped.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running `serve` and every line it printed so far.
struct Serve {
    _child: ChildGuard,
    lines: Arc<Mutex<Vec<String>>>,
    endpoints: Vec<String>,
}

impl Serve {
    fn start(args: &[&str]) -> Serve {
        let mut child = Command::new(BIN)
            .arg("serve")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start coap-keepalive serve");
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let all = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let uri = line
                    .strip_prefix("serving ")
                    .and_then(|rest| rest.split_whitespace().next())
                    .map(str::to_owned);
                all.lock().unwrap().push(line);
                if let Some(uri) = uri {
                    let _ = tx.send(uri);
                }
            }
        });
        let expected = args
            .iter()
            .filter(|a| matches!(**a, "--udp" | "--tcp" | "--dtls" | "--tls"))
            .count();
        let endpoints = (0..expected)
            .map(|_| {
                rx.recv_timeout(STARTUP)
                    .expect("serve printed its endpoints")
            })
            .collect();
        Serve {
            _child: ChildGuard(child),
            lines,
            endpoints,
        }
    }

    fn uri(&self, scheme: &str) -> String {
        self.endpoints
            .iter()
            .find(|u| u.starts_with(&format!("{scheme}://")))
            .cloned()
            .unwrap_or_else(|| panic!("no {scheme} endpoint in {:?}", self.endpoints))
    }

    fn port(&self, scheme: &str) -> String {
        self.uri(scheme).rsplit(':').next().unwrap().to_owned()
    }

    fn text(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Waits until a line containing `needle` was printed; returns it.
    fn wait_for(&self, needle: &str) -> String {
        let deadline = Instant::now() + LIMIT;
        loop {
            if let Some(line) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
            {
                return line.clone();
            }
            assert!(
                Instant::now() < deadline,
                "serve never printed {needle:?}:\n{}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// How many printed lines contain `needle`.
    fn count(&self, needle: &str) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }
}

/// Runs `program` with `args`, killed after `limit`.
fn run_program(program: &str, args: &[&str], limit: Duration) -> Output {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {program}: {e}"));
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn ours(args: &[&str]) -> Output {
    run_program(BIN, args, LIMIT)
}

fn text(output: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn assert_failed_with(output: &Output, cause: &str) {
    assert!(!output.status.success(), "{}", text(output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains(cause),
        "expected {cause:?}:\n{}",
        text(output)
    );
}

fn assert_pongs(output: &Output, n: usize) {
    assert!(output.status.success(), "{}", text(output));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout)
            .matches("pong from")
            .count(),
        n,
        "{}",
        text(output)
    );
}

/// `coap-keepalive certs` into a temporary directory.
fn certs() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let output = ours(&["certs", "--out", dir.to_str().unwrap()]);
    assert!(output.status.success(), "{}", text(&output));
    (tmp, dir)
}

fn file(dir: &Path, name: &str) -> String {
    dir.join(name).to_str().unwrap().to_owned()
}

/// A libcoap client's GET of `path` with a keepalive ping after one idle second, observing for
/// `secs` seconds (serve's /time, with `--notify-every 0`, stays silent meanwhile).
fn libcoap_observe(program: &str, security: &[&str], uri: &str, path: &str, secs: &str) -> Output {
    let mut args = vec!["-K", "1", "-s", secs, "-B", "5"];
    args.extend_from_slice(security);
    let target = format!("{uri}{path}");
    args.extend_from_slice(&["-m", "get", &target]);
    run_program(program, &args, LIMIT)
}

/// A libcoap client's GET of /.well-known/core: its 2.05 with the resource list.
fn libcoap_client(program: &str, security: &[&str], uri: &str) -> Output {
    let mut args = vec!["-B", "5"];
    args.extend_from_slice(security);
    let target = format!("{uri}/.well-known/core");
    args.extend_from_slice(&["-m", "get", &target]);
    run_program(program, &args, LIMIT)
}

#[test]
fn one_dtls_port_serves_psk_and_certificate_clients() {
    let (_tmp, dir) = certs();
    let (cert, key, ca) = (
        file(&dir, "server.pem"),
        file(&dir, "server.key"),
        file(&dir, "ca.pem"),
    );
    let (client_cert, client_key) = (file(&dir, "client.pem"), file(&dir, "client.key"));
    let serve = Serve::start(&[
        "--dtls",
        "127.0.0.1:0",
        "--psk-key",
        "secret",
        "--cert",
        &cert,
        "--key",
        &key,
        "--ca",
        &ca,
        "--notify-every",
        "0",
        "-v",
    ]);
    assert!(
        serve.text().contains("(dtls, PSK and certificate"),
        "{}",
        serve.text()
    );
    let uri = serve.uri("coaps");

    let mut sessions = 0;
    for program in ["coap-client-openssl", "coap-client-gnutls"] {
        for security in [
            &["-u", "id", "-k", "secret"][..],
            &["-C", &ca, "-c", &client_cert, "-j", &client_key][..],
        ] {
            let output = libcoap_client(program, security, &uri);
            sessions += 1;
            let stdout = String::from_utf8_lossy(&output.stdout);
            assert!(
                stdout.contains("</time>"),
                "{program} {security:?}: no 2.05 with the resource list\n{}\nserve:\n{}",
                text(&output),
                serve.text()
            );
            assert_eq!(
                serve.count("session established"),
                sessions,
                "{}",
                serve.text()
            );
            // Observing the silent /time for 3 s with -K 1: keepalive pings, each answered.
            let before = serve.count("ping received (MID");
            let output = libcoap_observe(program, security, &uri, "/time", "3");
            sessions += 1;
            let answered = serve.count("ping received (MID") - before;
            assert!(
                answered >= 1,
                "{program} {security:?}: {answered} pings answered:\n{}\n{}",
                text(&output),
                serve.text()
            );
        }
    }

    // Our own client, with the PSK and with certificates.
    let output = ours(&[
        "ping",
        &uri,
        "--psk-identity",
        "id",
        "--psk-key",
        "secret",
        "-c",
        "2",
        "-i",
        "0.05",
    ]);
    assert_pongs(&output, 2);
    let output = ours(&[
        "ping",
        &uri,
        "--ca",
        &ca,
        "--cert",
        &client_cert,
        "--key",
        &client_key,
        "-c",
        "2",
        "-i",
        "0.05",
    ]);
    assert_pongs(&output, 2);
    // A certificate client without its certificate: refused, and both sides say why.
    let output = ours(&["ping", &uri, "--ca", &ca, "-c", "1"]);
    assert_failed_with(&output, "missing client certificate");
    serve.wait_for("missing client certificate");
}

/// A PSK file with three identities, one key as hex.
fn psk_file(dir: &Path) -> String {
    let path = dir.join("keys.txt");
    std::fs::write(
        &path,
        "# identity:key\nalpha:first key\nbeta:0x7365636f6e64\ngamma:third:key\n",
    )
    .unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn psk_file_with_three_identities() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = psk_file(tmp.path());
    let serve = Serve::start(&[
        "--dtls",
        "127.0.0.1:0",
        "--psk-file",
        &keys,
        "--psk-hint",
        "hi",
    ]);
    let uri = serve.uri("coaps");
    for (identity, key) in [
        ("alpha", "first key"),
        ("beta", "second"),
        ("gamma", "third:key"),
    ] {
        let output = ours(&[
            "ping",
            &uri,
            "--psk-identity",
            identity,
            "--psk-key",
            key,
            "-c",
            "1",
        ]);
        assert_pongs(&output, 1);
    }
    // libcoap's client too.
    let output = libcoap_client("coap-client-openssl", &["-u", "beta", "-k", "second"], &uri);
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("</time>"),
        "{}",
        text(&output)
    );

    let output = ours(&[
        "ping",
        &uri,
        "--psk-identity",
        "delta",
        "--psk-key",
        "first key",
        "-c",
        "1",
    ]);
    assert_failed_with(&output, "DTLS handshake failed: unknown PSK identity");
    let line = serve.wait_for(r#"unknown PSK identity "delta""#);
    assert!(
        line.contains("connection failed before it became a session"),
        "{line}"
    );

    let output = ours(&[
        "ping",
        &uri,
        "--psk-identity",
        "alpha",
        "--psk-key",
        "second",
        "-c",
        "1",
    ]);
    assert_failed_with(&output, "DTLS handshake failed: wrong PSK");
    let line = serve.wait_for(r#"bad PSK for identity "alpha""#);
    assert!(
        !line.contains("first key") && !line.contains("second"),
        "{line}"
    );
    assert!(!serve.text().contains("first key"), "a key in the log");
}

#[test]
fn handshake_failures_are_named_on_both_sides() {
    let (_tmp, dir) = certs();
    let ca = file(&dir, "ca.pem");
    let serve = Serve::start(&[
        "--udp",
        "127.0.0.1:0",
        "--dtls",
        "127.0.0.1:0",
        "--psk-key",
        "secret",
    ]);
    let dtls = serve.uri("coaps");

    // DTLS to the plain UDP port.
    let plain = format!("coaps://127.0.0.1:{}", serve.port("coap"));
    let output = ours(&[
        "ping",
        &plain,
        "--psk-identity",
        "id",
        "--psk-key",
        "secret",
        "-c",
        "1",
        "--handshake-timeout",
        "1",
    ]);
    assert!(!output.status.success(), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("wrong PSK"), "{stderr}");
    assert!(
        stderr.contains("not a DTLS server") || stderr.contains("no answer from the server"),
        "{stderr}"
    );

    // A certificate client at this PSK-only endpoint.
    let output = ours(&["ping", &dtls, "--ca", &ca, "-c", "1"]);
    assert_failed_with(
        &output,
        "no shared cipher suite: the server does not serve certificate (ECDHE-ECDSA) clients",
    );
    serve.wait_for("the client offered certificate (ECDHE-ECDSA) suites");

    // node-coap-client's ClientHello, without an extensions block: a limitation of webrtc-dtls,
    // said as such, and the endpoint serves others all the same.
    let raw = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let target = format!("127.0.0.1:{}", serve.port("coaps"));
    raw.send_to(&hello_without_extensions(), &target).unwrap();
    let mut buf = [0u8; 64];
    let n = raw.recv(&mut buf).expect("an alert");
    assert_eq!(
        &buf[..n],
        [21, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 80]
    );
    serve.wait_for(
        "ClientHello without extensions (RFC 5246 §7.4.1.2 allows it; node-coap-client sends \
         it): webrtc-dtls 0.12 cannot parse it (failed to fill whole buffer)",
    );
    let output = ours(&[
        "ping",
        &dtls,
        "--psk-identity",
        "id",
        "--psk-key",
        "secret",
        "-c",
        "1",
    ]);
    assert_pongs(&output, 1);

    // A silent server: a timeout, said as one.
    let silent = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let silent_uri = format!("coaps://{}", silent.local_addr().unwrap());
    let output = ours(&[
        "ping",
        &silent_uri,
        "--psk-identity",
        "id",
        "--psk-key",
        "secret",
        "-c",
        "1",
        "--handshake-timeout",
        "1",
    ]);
    assert_failed_with(&output, "handshake timeout: no answer from the server");
}

#[test]
fn bad_and_missing_certificates_are_named() {
    let (_tmp, dir) = certs();
    let (_other_tmp, other) = certs();
    let ca = file(&dir, "ca.pem");
    let serve = Serve::start(&[
        "--dtls",
        "127.0.0.1:0",
        "--cert",
        &file(&dir, "server.pem"),
        "--key",
        &file(&dir, "server.key"),
        "--ca",
        &ca,
    ]);
    let uri = serve.uri("coaps");
    // The server's certificate is not signed by the CA we trust.
    let output = ours(&["ping", &uri, "--ca", &file(&other, "ca.pem"), "-c", "1"]);
    assert_failed_with(&output, "untrusted server certificate");
    // Our certificate is signed by another CA.
    let output = ours(&[
        "ping",
        &uri,
        "--ca",
        &ca,
        "--cert",
        &file(&other, "client.pem"),
        "--key",
        &file(&other, "client.key"),
        "-c",
        "1",
    ]);
    assert!(!output.status.success(), "{}", text(&output));
    serve.wait_for("bad client certificate");
    // No certificate of ours at all.
    let output = ours(&["ping", &uri, "--ca", &ca, "-c", "1"]);
    assert_failed_with(&output, "missing client certificate");
    // A PSK client at this certificate-only endpoint.
    let output = ours(&[
        "ping",
        &uri,
        "--psk-identity",
        "id",
        "--psk-key",
        "k",
        "-c",
        "1",
    ]);
    assert_failed_with(
        &output,
        "the server does not serve PSK clients on this port",
    );
    serve.wait_for("serves certificate (ECDHE-ECDSA) suites only");
}

/// A DTLS 1.2 ClientHello offering TLS_PSK_WITH_AES_128_CCM_8 with no extensions block, as
/// node-coap-client sends it (RFC 5246 §7.4.1.2 allows leaving the block out).
fn hello_without_extensions() -> Vec<u8> {
    let mut body = vec![0xfe, 0xfd];
    body.extend([0x42; 32]); // random
    body.extend([0, 0]); // session_id, cookie
    body.extend([0, 2, 0xc0, 0xa8]); // cipher_suites
    body.extend([1, 0]); // compression_methods: null
    let len = body.len() as u32;
    let mut handshake = vec![1];
    handshake.extend(&len.to_be_bytes()[1..]);
    handshake.extend([0, 0, 0, 0, 0]);
    handshake.extend(&len.to_be_bytes()[1..]);
    handshake.extend(body);
    let mut record = vec![22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0];
    record.extend((handshake.len() as u16).to_be_bytes());
    record.extend(handshake);
    record
}
