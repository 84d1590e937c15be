//! Block2 with Observe (RFC 7959 §3.4) against libcoap 4.3.1's coap-server, over UDP and TCP:
//! its `/example_data` holds a 3000-byte representation (PUT by us), so the response to our
//! registration and the notification after a second PUT both come as block 0 with Observe.
//! Our client fetches the rest with GETs that carry no Observe and a token other than the
//! registration's (read from coap-server's `-v 7` log), and the Observation yields both
//! versions whole.

mod support;

use std::time::Duration;

use coap_keepalive::Context;
use support::bounded;
use support::libcoap::{Build, LibcoapServer};

const TEST_LIMIT: Duration = Duration::from_secs(30);
const WAIT: Duration = Duration::from_secs(10);

/// The token (`{...}` in libcoap's log) of a line.
fn token(line: &str) -> &str {
    let start = line.find('{').map_or(0, |i| i + 1);
    let end = line[start..].find('}').map_or(start, |i| start + i);
    &line[start..end]
}

async fn observe_example_data(scheme: &str) {
    bounded(TEST_LIMIT, async {
        let mut server = LibcoapServer::start(Build::Notls, &["-v", "7"]).await;
        let uri = format!("{scheme}://{}", server.addr());
        // Over TCP the base Max-Message-Size makes coap-server use blocks too.
        let ctx = Context::builder().max_message_size(1152).build().unwrap();
        let session = ctx.connect(&uri).await.unwrap();
        let first: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
        let second: Vec<u8> = first.iter().map(|b| b ^ 0x55).collect();
        assert!(session
            .put("/example_data", first.clone())
            .await
            .unwrap()
            .is_success());

        let mut observation = tokio::time::timeout(WAIT, session.observe("/example_data"))
            .await
            .expect("the registration's response")
            .unwrap();
        assert!(observation.first().observe.is_some(), "{}", server.report());
        assert!(
            observation.first().payload == first,
            "{scheme}: first response of {} bytes\n{}",
            observation.first().payload.len(),
            server.report()
        );
        // Another client changes it: coap-server notifies us, in blocks.
        let other = Context::new();
        let writer = other.connect(&uri).await.unwrap();
        assert!(writer
            .put("/example_data", second.clone())
            .await
            .unwrap()
            .is_success());
        let notification = tokio::time::timeout(WAIT, observation.next())
            .await
            .expect("a notification")
            .expect("the observation goes on");
        assert!(notification.observe.is_some());
        assert!(
            notification.payload == second,
            "{scheme}: notification of {} bytes\n{}",
            notification.payload.len(),
            server.report()
        );

        let log = server.process().log();
        let registration = log
            .lines()
            .find(|l| l.contains("c:GET") && l.contains("Observe:0"))
            .map(token)
            .expect("the registration in coap-server's log");
        let fetches: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("c:GET") && l.contains("Block2:1/"))
            .collect();
        assert_eq!(fetches.len(), 2, "{scheme}: block 1, twice\n{log}");
        for line in &fetches {
            assert!(!line.contains("Observe"), "{scheme}: {line}");
            assert_ne!(token(line), registration, "{scheme}: {line}");
        }
        ctx.shutdown().await;
        other.shutdown().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_observe_of_coap_servers_example_data_in_blocks() {
    observe_example_data("coap").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_observe_of_coap_servers_example_data_in_blocks() {
    observe_example_data("coap+tcp").await;
}
