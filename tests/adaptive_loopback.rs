//! The adaptive keepalive over real loopback sockets, with millisecond settings: a client
//! behind a relay that forgets idle mappings (`support::udp_nat`, the stand-in for a NAT)
//! finds the relay's binding lifetime through a server's probe resource, keeps its session
//! alive at the safety fraction of it, falls back against a server without the resource, and
//! searches again after a keepalive failure. The resource's answers to bad input and its caps
//! are checked byte for byte against a raw peer.

mod support;

use std::time::Duration;

use coap_keepalive::proto::adaptive::{
    AdaptiveConfig, AdaptiveEvent, AdaptiveState, FallbackReason, RestartReason,
};
use coap_keepalive::proto::keepalive_probe::{probe_request, PROBE_PATH};
use coap_keepalive::{
    AdaptiveKeepalive, Context, EventKind, KeepaliveConfig, ProbeLimits, Request, Status,
    TransmissionParams,
};

use support::udp_nat::UdpNat;
use support::{bounded, loopback, ms};

/// A server serving probes on a loopback UDP port.
async fn probe_server(limits: ProbeLimits) -> (Context, std::net::SocketAddr) {
    let server = Context::new();
    server.serve_keepalive_probes(limits).expect("valid limits");
    let endpoint = server.listen_udp(loopback()).await.expect("listen");
    (server, endpoint.local_addr)
}

/// A client context with quick retransmissions (so an unanswered ping is known within 100 ms)
/// and sessions that survive one unanswered ping.
fn quick_client() -> Context {
    let transmission = TransmissionParams::default()
        .with_ack_timeout(ms(30))
        .with_ack_random_factor(1.0)
        .with_max_retransmit(1);
    let config = KeepaliveConfig::default()
        .with_transmission(transmission)
        .with_max_unanswered(3);
    Context::builder()
        .keepalive_config(config)
        .build()
        .expect("valid settings")
}

fn search_config() -> AdaptiveConfig {
    AdaptiveConfig::new(ms(40), ms(1280))
        .with_grace(ms(60))
        .with_fallback_interval(ms(100))
        .with_probe_budget(100, Duration::from_secs(3600))
}

#[tokio::test]
async fn finds_the_binding_lifetime_of_a_forgetful_relay_and_keeps_the_session_alive() {
    bounded(Duration::from_secs(30), async {
        let (server, server_addr) = probe_server(ProbeLimits::default()).await;
        let lifetime = ms(330);
        let nat = UdpNat::start(server_addr, lifetime).await;
        let client = quick_client();
        let mut events = client.events();
        let session = client.connect_udp(nat.addr).await.unwrap();
        // 60 %: room for a ping delayed on a busy machine, so the binding is never lost below.
        let config = search_config().with_safety_percent(60);
        let adaptive = AdaptiveKeepalive::start(&client, &session, config).unwrap();
        let found = bounded(Duration::from_secs(20), adaptive.settled()).await;
        assert_eq!(found.state, AdaptiveState::Settled, "{found:?}");
        let lower = found.lower.expect("a lifetime found");
        // A probe-back cannot arrive after a longer idle time than the binding lives (the
        // server's ACK passes the relay a fraction of a millisecond after it starts its timer).
        assert!(lower <= lifetime + ms(2), "{found:?}");
        // Loss on loopback is nil; only a late timer on a busy machine can cost a step.
        assert!(lower >= lifetime * 7 / 10, "{found:?}");
        assert!(found.upper.is_some_and(|u| u > lower), "{found:?}");
        assert_eq!(found.interval, lower * 60 / 100);
        assert_eq!(session.adaptive(), Some(adaptive.stats()));
        println!(
            "lifetime {lifetime:?}: settled at {lower:?} (interval {:?}) after {} probes",
            found.interval, found.search_probes
        );

        // The events told the same story: probes, then the finding.
        let mut seen = Vec::new();
        while let Some(Ok(event)) = events.try_recv() {
            if let EventKind::Adaptive(event) = event.kind {
                seen.push(event);
            }
        }
        assert!(matches!(seen[0], AdaptiveEvent::ProbeSent { delay } if delay == ms(40)));
        assert!(seen.contains(&AdaptiveEvent::Settled {
            lifetime: Some(lower),
            interval: found.interval,
            probes: found.search_probes,
        }));

        // The session keeps pinging at that interval: its binding is never forgotten, so the
        // relay made exactly one mapping for it, however long it idles.
        let pongs_before = session.stats().pongs;
        tokio::time::sleep(lifetime * 4).await;
        assert!(
            session.stats().pongs >= pongs_before + 3,
            "{:?}",
            session.stats()
        );
        let as_seen_by_relay =
            std::net::SocketAddr::from(([127, 0, 0, 1], session.local_addr().port()));
        assert_eq!(nat.mappings_of(as_seen_by_relay), 1);
        assert_eq!(session.stats().failures, 0);
        drop(adaptive);
        client.shutdown().await;
        server.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn falls_back_to_the_fixed_interval_against_a_server_without_the_resource() {
    bounded(Duration::from_secs(10), async {
        let server = Context::new();
        let endpoint = server.listen_udp(loopback()).await.unwrap();
        let client = quick_client();
        let mut events = client.events();
        let session = client.connect_udp(endpoint.local_addr).await.unwrap();
        let adaptive = AdaptiveKeepalive::start(&client, &session, search_config()).unwrap();
        let found = bounded(Duration::from_secs(5), adaptive.settled()).await;
        assert_eq!(found.state, AdaptiveState::Fallback);
        assert_eq!(found.interval, ms(100));
        assert_eq!(found.probes_sent, 1);
        let fallback = loop {
            let event = events.recv().await.unwrap().unwrap();
            if let EventKind::Adaptive(AdaptiveEvent::Fallback { reason }) = event.kind {
                break reason;
            }
        };
        assert_eq!(fallback, FallbackReason::Unsupported);
        // The session pings at the fixed interval meanwhile.
        tokio::time::sleep(ms(350)).await;
        assert!(session.stats().pongs >= 2, "{:?}", session.stats());
        drop(adaptive);
        client.shutdown().await;
        server.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn an_unanswered_ping_of_the_session_restarts_the_search() {
    bounded(Duration::from_secs(40), async {
        let (server, server_addr) = probe_server(ProbeLimits::default()).await;
        let nat = UdpNat::start(server_addr, ms(330)).await;
        let client = quick_client();
        let mut events = client.events();
        let session = client.connect_udp(nat.addr).await.unwrap();
        let adaptive = AdaptiveKeepalive::start(&client, &session, search_config()).unwrap();
        let first = bounded(Duration::from_secs(20), adaptive.settled()).await;
        assert_eq!(first.state, AdaptiveState::Settled, "{first:?}");
        // The path goes away for longer than a ping's retransmissions take.
        nat.set_blackhole(true);
        let restarted = loop {
            let event = events.recv().await.unwrap().unwrap();
            if event.session.id() != session.id() {
                continue;
            }
            if let EventKind::Adaptive(AdaptiveEvent::Restarted { reason }) = event.kind {
                break reason;
            }
        };
        assert_eq!(
            restarted,
            RestartReason::KeepaliveFailed {
                interval: first.interval
            }
        );
        assert_eq!(adaptive.stats().state, AdaptiveState::Searching);
        assert!(adaptive.stats().upper.is_some_and(|u| u <= first.interval));
        nat.set_blackhole(false);
        let again = bounded(Duration::from_secs(20), adaptive.settled()).await;
        assert_eq!(again.state, AdaptiveState::Settled, "{again:?}");
        assert!(again.lower.is_some_and(|l| l < first.interval), "{again:?}");
        drop(adaptive);
        client.shutdown().await;
        server.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn the_resource_refuses_bad_input_and_caps_each_address() {
    bounded(Duration::from_secs(10), async {
        let limits = ProbeLimits::default().with_max_delay(ms(500));
        let (server, server_addr) = probe_server(limits).await;
        let client = Context::new();
        let session = client.connect_udp(server_addr).await.unwrap();
        let post = |payload: &str| Request::post(PROBE_PATH, payload.as_bytes().to_vec());

        let answer = session.request(post("soon")).await.unwrap();
        assert_eq!(answer.status, Status::BadRequest);
        assert_eq!(answer.payload_str(), "delay: ms as digits");
        let answer = session.request(post("501")).await.unwrap();
        assert_eq!(answer.status, Status::BadRequest);
        assert_eq!(answer.payload_str(), "max delay 0.5 s");
        let answer = session.request(post("0")).await.unwrap();
        assert_eq!(answer.status, Status::BadRequest);
        let answer = session
            .request(post("10").with_content_format(50))
            .await
            .unwrap();
        assert_eq!(answer.status, Status::UnsupportedContentFormat);
        let answer = session.request(Request::get(PROBE_PATH)).await.unwrap();
        assert_eq!(answer.status, Status::MethodNotAllowed);

        // One probe-back at a time per address: the second is told when to come back.
        let first = {
            let session = session.clone();
            tokio::spawn(async move { session.request(probe_request(ms(300))).await })
        };
        tokio::time::sleep(ms(50)).await;
        let busy = session.request(probe_request(ms(10))).await.unwrap();
        assert_eq!(busy.status, Status::TooManyRequests);
        assert_eq!(busy.max_age, Some(1));
        let started = std::time::Instant::now();
        let back = first.await.unwrap().unwrap();
        assert_eq!(back.status, Status::Changed);
        assert!(back.payload.is_empty());
        assert!(started.elapsed() >= ms(240), "{:?}", started.elapsed());
        // And afterwards the address may ask again.
        let again = session.request(probe_request(ms(20))).await.unwrap();
        assert_eq!(again.status, Status::Changed);
        client.shutdown().await;
        server.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn the_resource_caps_probe_backs_per_ip_address() {
    bounded(Duration::from_secs(10), async {
        let limits = ProbeLimits::default().with_per_ip(2);
        let (server, server_addr) = probe_server(limits).await;
        let client = Context::new();
        let mut waiting = Vec::new();
        for _ in 0..2 {
            let session = client.connect_udp(server_addr).await.unwrap();
            waiting.push(tokio::spawn(async move {
                session.request(probe_request(ms(300))).await
            }));
        }
        tokio::time::sleep(ms(50)).await;
        let third = client.connect_udp(server_addr).await.unwrap();
        let refused = third.request(probe_request(ms(10))).await.unwrap();
        assert_eq!(refused.status, Status::ServiceUnavailable);
        assert_eq!(refused.max_age, Some(1));
        for probe in waiting {
            assert_eq!(probe.await.unwrap().unwrap().status, Status::Changed);
        }
        let now_free = third.request(probe_request(ms(10))).await.unwrap();
        assert_eq!(now_free.status, Status::Changed);
        client.shutdown().await;
        server.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn the_servers_own_pings_do_not_refresh_the_binding_under_test() {
    bounded(Duration::from_secs(10), async {
        let (server, server_addr) = probe_server(ProbeLimits::default()).await;
        // The server pings idle clients every 40 ms: were the probe socket among them, its
        // binding (200 ms) would never expire and every probe-back would arrive.
        server.set_keepalive_interval(Some(ms(40)));
        let nat = UdpNat::start(server_addr, ms(200)).await;
        let client = Context::new();
        let probe = client.connect_udp(nat.addr).await.unwrap();
        let short = probe
            .request_with_timeout(probe_request(ms(100)), ms(400))
            .await
            .unwrap();
        assert_eq!(short.status, Status::Changed);
        let long = probe
            .request_with_timeout(probe_request(ms(300)), ms(500))
            .await;
        assert!(long.is_err(), "{long:?}");
        assert_eq!(probe.stats().pings_received, 0);
        assert!(nat.dropped_down() >= 1);
        client.shutdown().await;
        server.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_change_of_network_searches_again_from_nothing() {
    bounded(Duration::from_secs(30), async {
        let (server, server_addr) = probe_server(ProbeLimits::default()).await;
        let nat = UdpNat::start(server_addr, ms(330)).await;
        let client = quick_client();
        let mut events = client.events();
        let session = client.connect_udp(nat.addr).await.unwrap();
        let config = AdaptiveConfig::new(ms(40), ms(640))
            .with_grace(ms(60))
            .with_fallback_interval(ms(100))
            .with_probe_budget(100, Duration::from_secs(3600));
        let adaptive = AdaptiveKeepalive::start(&client, &session, config).unwrap();
        let first = bounded(Duration::from_secs(20), adaptive.settled()).await;
        assert_eq!(first.state, AdaptiveState::Settled, "{first:?}");
        // The new network keeps bindings for 150 ms only.
        nat.set_lifetime(ms(150));
        adaptive.network_changed();
        loop {
            let event = events.recv().await.unwrap().unwrap();
            if event.kind
                == EventKind::Adaptive(AdaptiveEvent::Restarted {
                    reason: RestartReason::NetworkChanged,
                })
            {
                break;
            }
        }
        let stats = adaptive.stats();
        assert_eq!((stats.lower, stats.upper), (None, None), "{stats:?}");
        // Nothing known yet: the fixed interval.
        assert_eq!(stats.interval, ms(100));
        let again = bounded(Duration::from_secs(20), adaptive.settled()).await;
        assert_eq!(again.state, AdaptiveState::Settled, "{again:?}");
        let lower = again.lower.expect("a lifetime");
        assert!(lower <= ms(152) && lower >= ms(100), "{again:?}");
        drop(adaptive);
        client.shutdown().await;
        server.shutdown().await;
    })
    .await;
}

/// The smallest probe request: CON POST, no token, Uri-Path ".well-known" and
/// "keepalive-probe" (33 bytes), then the payload.
fn raw_probe(message_id: u16, payload: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0x40, 0x02];
    bytes.extend_from_slice(&message_id.to_be_bytes());
    bytes.push(0xbb); // Uri-Path (11), 11 bytes
    bytes.extend_from_slice(b".well-known");
    bytes.extend_from_slice(&[0x0d, 0x02]); // Uri-Path again, 13 + 2 = 15 bytes
    bytes.extend_from_slice(b"keepalive-probe");
    if !payload.is_empty() {
        bytes.push(0xff);
        bytes.extend_from_slice(payload);
    }
    bytes
}

#[tokio::test]
async fn no_answer_is_larger_than_its_request() {
    bounded(Duration::from_secs(10), async {
        let (server, server_addr) = probe_server(ProbeLimits::default()).await;
        let peer = support::RawDatagram::udp(server_addr, Duration::from_secs(2)).await;
        let cases: [(&[u8], u8); 4] = [
            (b"", 0x80),       // 4.00: no delay
            (b"x", 0x80),      // 4.00: not digits
            (b"0", 0x80),      // 4.00: zero
            (b"999999", 0x80), // 4.00: longer than the maximum
        ];
        for (i, (payload, code)) in cases.into_iter().enumerate() {
            let request = raw_probe(0x1000 + i as u16, payload);
            peer.send(&request).await;
            let answer = peer.recv().await;
            assert_eq!(answer[0], 0x60, "a piggybacked ACK: {answer:02x?}");
            assert_eq!(answer[1], code, "{answer:02x?}");
            assert_eq!(&answer[2..4], &(0x1000 + i as u16).to_be_bytes());
            assert!(
                answer.len() < request.len(),
                "{} >= {}",
                answer.len(),
                request.len()
            );
        }
        // Accepted: an empty ACK now, one NON 2.04 (no token, no payload) after the delay.
        peer.send(&raw_probe(0x2000, b"50")).await;
        assert_eq!(peer.recv().await, [0x60, 0x00, 0x20, 0x00]);
        let back = peer.recv().await;
        assert_eq!(
            (back[0], back[1], back.len()),
            (0x50, 0x44, 4),
            "{back:02x?}"
        );
        // A second probe while one is out: 4.29 with Max-Age 1, still shorter.
        let long = raw_probe(0x2001, b"300");
        peer.send(&long).await;
        assert_eq!(peer.recv().await, [0x60, 0x00, 0x20, 0x01]);
        let busy = raw_probe(0x2002, b"5");
        peer.send(&busy).await;
        let answer = peer.recv().await;
        assert_eq!((answer[0], answer[1]), (0x60, 0x9d), "{answer:02x?}");
        assert!(answer.len() < busy.len(), "{answer:02x?}");
        server.shutdown().await;
    })
    .await;
}
