//! `coap-keepalive demo` as a newcomer runs it: every line names both ends of its session,
//! the server pings a quiet client over every transport, and what happens to the quiet
//! clients when the server goes silent is said.

mod support;

use std::time::Duration;

use support::cli::{lines, run, text};

#[test]
fn demo_labels_both_ends_and_the_server_pings_quiet_clients_on_every_transport() {
    let output = run(&["demo", "--alive-secs", "3"], Duration::from_secs(40));
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let lines = lines(&output);
    let events: Vec<&String> = lines.iter().filter(|l| l.starts_with('[')).collect();
    for line in events.iter().skip(1).filter(|l| !l.contains(" --- ")) {
        assert!(
            line.contains(" client ") && line.contains(" server ") && line.contains(" -> "),
            "both ends named: {line}\n{}",
            text(&output)
        );
    }
    for transport in ["udp ", "dtls", "tcp ", "tls "] {
        let server_pinged = |l: &&&String| {
            l.contains(&format!("] {transport} server ")) && l.ends_with("ping sent")
        };
        assert!(
            events.iter().any(|l| server_pinged(&l)),
            "the server pings a {transport} client\n{}",
            text(&output)
        );
        assert!(
            events
                .iter()
                .any(|l| l.contains(&format!("] {transport} client "))
                    && l.ends_with("ping received, answered (quiet client)")),
            "the quiet {transport} client answers\n{}",
            text(&output)
        );
    }
    assert!(
        lines.iter().any(|l| l.starts_with("quiet clients: ")
            && l.ends_with("udp established, dtls established, tcp established, tls established")),
        "{}",
        text(&output)
    );
}
