//! Bodies larger than a block from the command line, as a user runs them: `put -f FILE` and
//! `get -o FILE` against a `serve` process, byte-identical over UDP and TCP with `-b 64` and the
//! default block size; `/echo` keeping what was PUT (answering 2.04 alone) up to
//! `serve --max-body-size`, beyond which the PUT gets 4.13; and the refusals (`-e` with `-f`, a
//! block size RFC 7959 cannot say, `-f` on a GET, `-o` on observe, a file that cannot be read);
//! `-f -` reading stdin.

mod support;

use std::net::{Ipv4Addr, UdpSocket};
use std::path::Path;
use std::time::Duration;

use support::cli::{lines, run, text, Running};

const LIMIT: Duration = Duration::from_secs(30);

/// `serve` with `args`; returns it and the URI of its first listener.
fn serve(args: &[&str]) -> (Running, String) {
    let mut all = vec!["-v", "serve", "--notify-every", "0"];
    all.extend_from_slice(args);
    let mut server = Running::spawn(&all);
    let line = server.wait_line(LIMIT, |l| l.starts_with("serving "));
    let uri = line.split_whitespace().nth(1).unwrap().to_owned();
    (server, uri)
}

/// Interrupts the server and returns its stdout lines.
fn stop(mut server: Running) -> Vec<String> {
    server.interrupt();
    let output = server.wait(LIMIT);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    lines(&output)
}

/// `len` bytes that do not repeat with any block size's period.
fn body(len: usize) -> Vec<u8> {
    (0..len).map(|i| ((i * 7919) % 251) as u8).collect()
}

fn path_arg(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// `put -f` then `get -o` of 100 kB through `serve`'s `/echo`: exit 0, one line per outcome,
/// the file back byte for byte, and `serve` saw the body once, whole.
fn put_then_get(listener: &str, block: Option<&str>) {
    let (server, base) = serve(&[listener, "127.0.0.1:0"]);
    let echo = format!("{base}/echo");
    let dir = tempfile::tempdir().unwrap();
    let (file, out) = (dir.path().join("body.bin"), dir.path().join("back.bin"));
    let sent = body(100_000);
    std::fs::write(&file, &sent).unwrap();
    let block_args: Vec<&str> = block.map(|b| vec!["-b", b]).unwrap_or_default();

    let mut put = vec!["put", echo.as_str(), "-f", path_arg(&file)];
    put.extend(&block_args);
    let output = run(&put, LIMIT);
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(
        lines(&output),
        ["2.04 Changed"],
        "no body echoed\n{}",
        text(&output)
    );

    let mut get = vec!["get", echo.as_str(), "-o", path_arg(&out)];
    get.extend(&block_args);
    let output = run(&get, LIMIT);
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(
        lines(&output),
        [
            "2.05 Content".to_owned(),
            format!("100000 bytes written to {}", out.display())
        ],
        "{}",
        text(&output)
    );
    let back = std::fs::read(&out).unwrap();
    assert!(back == sent, "{} bytes back, not identical", back.len());

    let served = stop(server);
    let puts: Vec<&String> = served.iter().filter(|l| l.contains("PUT /echo")).collect();
    assert!(
        puts.len() == 1 && puts[0].ends_with("PUT /echo with 100000 bytes -> 2.04, 0 bytes"),
        "{puts:?}"
    );
}

#[test]
fn udp_put_file_then_get_output_in_64_byte_blocks() {
    put_then_get("--udp", Some("64"));
}

#[test]
fn udp_put_file_then_get_output_in_default_blocks() {
    put_then_get("--udp", None);
}

#[test]
fn tcp_put_file_then_get_output_in_64_byte_blocks() {
    put_then_get("--tcp", Some("64"));
}

#[test]
fn tcp_put_file_then_get_output_in_default_blocks() {
    put_then_get("--tcp", None);
}

#[test]
fn echo_keeps_text_and_post_echoes_and_output_dash_prints() {
    let (server, base) = serve(&["--udp", "127.0.0.1:0"]);
    let echo = format!("{base}/echo");
    let output = run(&["put", &echo, "-e", "kept"], LIMIT);
    assert_eq!(lines(&output), ["2.04 Changed"], "{}", text(&output));
    // `-o -` prints, as without -o.
    let output = run(&["get", &echo, "-o", "-"], LIMIT);
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(
        lines(&output),
        ["2.05 Content", "kept"],
        "{}",
        text(&output)
    );
    let output = run(&["post", &echo, "-e", "posted"], LIMIT);
    assert_eq!(
        lines(&output),
        ["2.04 Changed", "posted"],
        "{}",
        text(&output)
    );
    let output = run(&["get", &echo], LIMIT);
    assert_eq!(
        lines(&output),
        ["2.05 Content", "posted"],
        "{}",
        text(&output)
    );
    stop(server);
}

#[test]
fn max_body_size_bounds_what_echo_keeps() {
    let (server, base) = serve(&["--udp", "127.0.0.1:0", "--max-body-size", "10000"]);
    let echo = format!("{base}/echo");
    let dir = tempfile::tempdir().unwrap();
    let (big, small) = (dir.path().join("big.bin"), dir.path().join("small.bin"));
    std::fs::write(&big, body(20_000)).unwrap();
    std::fs::write(&small, body(9_000)).unwrap();
    let output = run(&["put", &echo, "-f", path_arg(&big)], LIMIT);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let said = lines(&output);
    assert_eq!(
        said.first().map(String::as_str),
        Some("4.13 Request Entity Too Large"),
        "{}",
        text(&output)
    );
    assert_eq!(
        said.last().map(String::as_str),
        Some("(the server takes bodies of at most 10000 bytes: Size1)"),
        "{}",
        text(&output)
    );
    let output = run(&["put", &echo, "-f", path_arg(&small), "-b", "256"], LIMIT);
    assert_eq!(lines(&output), ["2.04 Changed"], "{}", text(&output));
    let out = dir.path().join("back.bin");
    let output = run(&["get", &echo, "-o", path_arg(&out)], LIMIT);
    assert!(output.status.success(), "{}", text(&output));
    assert!(std::fs::read(&out).unwrap() == body(9_000));
    stop(server);
}

#[test]
fn output_is_left_alone_when_the_answer_is_not_2_xx() {
    let (server, base) = serve(&["--tcp", "127.0.0.1:0"]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("missing.bin");
    let output = run(
        &["get", &format!("{base}/missing"), "-o", path_arg(&out)],
        LIMIT,
    );
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(lines(&output)[0].starts_with("4.04"), "{}", text(&output));
    assert!(!out.exists(), "a 4.04 wrote {}", out.display());
    stop(server);
}

/// Asserts a usage error (exit 2) whose stderr contains `says`, and that nothing was sent.
fn assert_refused(args: &[&str], says: &str) {
    let output = run(args, LIMIT);
    assert_eq!(output.status.code(), Some(2), "{args:?}\n{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(says), "{args:?}\n{}", text(&output));
}

#[test]
fn block_wise_flags_are_refused_where_they_do_not_fit() {
    let peer = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let uri = format!("coap://{}/echo", peer.local_addr().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("body.bin");
    std::fs::write(&file, b"body").unwrap();
    let file = path_arg(&file);
    assert_refused(
        &["put", &uri, "-e", "text", "-f", file],
        "cannot be used with",
    );
    assert_refused(
        &["get", &uri, "-f", file],
        "-f (--file) applies to PUT and POST only",
    );
    assert_refused(
        &["observe", &uri, "-f", file],
        "-f (--file) applies to PUT and POST only",
    );
    assert_refused(&["observe", &uri, "-o", "x"], "unexpected argument '-o'");
    for bad in ["100", "2048", "8", "0", "big"] {
        assert_refused(&["get", &uri, "-b", bad], "invalid value");
    }
    assert_refused(
        &["get", &uri, "-b", "100"],
        "RFC 7959 blocks are 16, 32, 64",
    );
    assert_refused(
        &["serve", "--udp", "127.0.0.1:0", "--max-body-size", "0"],
        "not a body size",
    );
    let mut buf = [0u8; 16];
    peer.set_nonblocking(true).unwrap();
    assert!(peer.recv_from(&mut buf).is_err(), "nothing was sent");

    // A file that cannot be read is an error of its own (exit 1), before anything is sent.
    let missing = dir.path().join("missing.bin");
    let output = run(&["put", &uri, "-f", path_arg(&missing)], LIMIT);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("cannot read {}", missing.display())),
        "{}",
        text(&output)
    );
    assert!(peer.recv_from(&mut buf).is_err(), "nothing was sent");
}

#[test]
fn put_file_dash_reads_stdin() {
    use std::io::Write;
    use std::process::{Command, Stdio};

    let (server, base) = serve(&["--tcp", "127.0.0.1:0"]);
    let echo = format!("{base}/echo");
    let sent = body(5_000);
    let mut put = Command::new(support::cli::BIN)
        .args(["put", &echo, "-f", "-", "-b", "128", "-t", "20"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    put.stdin.take().unwrap().write_all(&sent).unwrap();
    // stdin is closed when the handle drops: the command reads to its end.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(put.wait_with_output());
    });
    let output = rx
        .recv_timeout(LIMIT)
        .expect("put -f - ran too long")
        .unwrap();
    assert_eq!(lines(&output), ["2.04 Changed"], "{}", text(&output));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("back.bin");
    let output = run(&["get", &echo, "-o", path_arg(&out)], LIMIT);
    assert!(output.status.success(), "{}", text(&output));
    assert!(std::fs::read(&out).unwrap() == sent);
    stop(server);
}
