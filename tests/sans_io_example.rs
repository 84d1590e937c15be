//! `examples/sans_io_keepalive.rs`, the sans-IO core driven over a blocking `std::net::UdpSocket`
//! with no tokio runtime, against a real `coap-keepalive serve`: it keeps the session alive, and
//! reports the nack and exits 1 once the server is stopped (issue 12, item 5).
//!
//! The test builds the example itself with the cargo that runs it (a no-op when it is fresh), so
//! `cargo nextest run --test sans_io_example` needs no `--examples`.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use coap_keepalive::NackReason;
use support::cli::{text, Running};

const EXAMPLE: &str = "sans_io_keepalive";
/// Starting a process, its first round trips, and a (fresh, so no-op) cargo build.
const LIMIT: Duration = Duration::from_secs(20);
/// Building the example from scratch on a busy machine.
const BUILD_LIMIT: Duration = Duration::from_secs(300);

/// Builds the example for the profile this test was built with, and returns its path.
fn example_binary() -> PathBuf {
    // target/<profile>/deps/sans_io_example-HASH → target/<profile>
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable under target/<profile>/deps");
    let target_dir = profile_dir.parent().expect("target directory");
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .expect("profile directory name");
    let cargo_profile = match profile {
        "debug" => "dev",
        other => other,
    };
    let mut build = Command::new(env!("CARGO"));
    // The variables cargo sets for a test run are not the user's: a build script that tracks one
    // (ring's tracks CARGO_MANIFEST_DIR) would see it change and rebuild half the tree, twice
    // per run, once here and once in the next `cargo test`.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_BIN_")
            || [
                "CARGO_MANIFEST_DIR",
                "CARGO_MANIFEST_PATH",
                "CARGO_MANIFEST_LINKS",
                "CARGO_CRATE_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "CARGO_RUSTC_CURRENT_DIR",
            ]
            .contains(&name.as_ref())
        {
            build.env_remove(name.as_ref());
        }
    }
    let mut build = build
        .args(["build", "--quiet", "--example", EXAMPLE, "--profile"])
        .arg(cargo_profile)
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .spawn()
        .expect("run cargo build --example");
    let deadline = Instant::now() + BUILD_LIMIT;
    let status = loop {
        if let Some(status) = build.try_wait().expect("wait for cargo build") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = build.kill();
            let _ = build.wait();
            panic!("cargo build --example {EXAMPLE} ran longer than {BUILD_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        status.success(),
        "cargo build --example {EXAMPLE}: {status}"
    );
    let binary = profile_dir
        .join("examples")
        .join(format!("{EXAMPLE}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        binary.exists(),
        "{} missing after the build",
        binary.display()
    );
    binary
}

/// `coap-keepalive serve --udp 127.0.0.1:0` and the address it reports.
fn serve_udp() -> (Running, SocketAddr) {
    let mut server = Running::spawn(&["serve", "--udp", "127.0.0.1:0"]);
    let line = server.wait_line(LIMIT, |l| l.starts_with("serving coap://"));
    let addr = line
        .split_whitespace()
        .nth(1)
        .and_then(|uri| uri.strip_prefix("coap://"))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    (server, addr)
}

#[test]
fn sans_io_example_keeps_a_session_alive_and_reports_the_nack_when_the_server_stops() {
    let source = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("examples/{EXAMPLE}.rs")),
    )
    .expect("read the example's source");
    assert!(
        !source.contains("use tokio") && !source.contains("tokio::"),
        "the sans-IO example must not touch tokio"
    );

    let binary = example_binary();
    let (mut server, addr) = serve_udp();
    let addr = addr.to_string();
    // A ping after 0.2 s idle; millisecond retransmissions, so that a dead server is declared
    // within about half a second (50 ms * 1.5 * (1 + 2 + 4)) when no ICMP error comes first.
    let mut example = Running::spawn_program(
        &binary,
        &[
            &addr,
            "0.2",
            "--ack-timeout-ms",
            "50",
            "--max-retransmit",
            "2",
        ],
    );

    // Alive: the first pong answers the ping sent at once, the second one sent after 0.2 s idle.
    let second = example.wait_line(LIMIT, |l| l.starts_with("pong 2 from "));
    assert!(second.contains(" time="), "{second}");
    let seen = example.seen().to_vec();
    assert!(
        seen.iter()
            .filter(|l| l.starts_with("ping sent to "))
            .count()
            >= 2,
        "{seen:?}"
    );
    let served = server.wait_line(LIMIT, |l| l.contains("ping received"));
    assert!(served.contains("answered"), "{served}");

    server.interrupt();
    let stopped = server.wait(LIMIT);
    assert_eq!(stopped.status.code(), Some(0), "{}", text(&stopped));

    // Dead: the next ping meets a closed port. The stack says which way it learnt it (the
    // ICMP port unreachable on the connected socket, or the retransmissions running out).
    let started = Instant::now();
    let output = example.wait(Duration::from_secs(10));
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let nack = stdout
        .lines()
        .find_map(|l| l.strip_prefix("nack: "))
        .unwrap_or_else(|| panic!("no nack line\n{}", text(&output)));
    assert!(
        nack == NackReason::IcmpError.as_str() || nack == NackReason::TooManyRetries.as_str(),
        "a stopped server is unreachable or unanswering, not {nack:?}\n{}",
        text(&output)
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}
