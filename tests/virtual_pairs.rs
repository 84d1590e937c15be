//! Keepalive scenarios in virtual time: two protocol cores joined by an in-memory link
//! (`support::pair`), every instant asserted exactly.

mod support;

use std::time::Duration;

use coap_keepalive::KeepaliveConfig;
use coap_keepalive::NackReason;

use support::ms;
use support::pair::{keepalive_every, secs, Pair, Side};

/// An empty Confirmable message: a UDP ping.
fn is_ping(bytes: &[u8]) -> bool {
    bytes.len() == 4 && bytes[0] == 0x40 && bytes[1] == 0x00
}

#[test]
fn datagram_pings_follow_the_idle_interval_from_each_answer() {
    let mut pair = Pair::datagram(keepalive_every(1), KeepaliveConfig::default(), 1);
    pair.link.delay = ms(10);
    pair.run_for(ms(3_500));

    // Each ping goes out one interval after the last answer arrived (1.000, 2.020, 3.040) and
    // its RST returns 20 ms later.
    let expected: Vec<_> = [1_020, 2_040, 3_060]
        .iter()
        .map(|&at| (pair.at(ms(at)), ms(20)))
        .collect();
    assert_eq!(pair.a.pongs(), expected);
    assert_eq!(
        pair.b.pings_received(),
        [1_010, 2_030, 3_050].map(|at| pair.at(ms(at)))
    );
    assert_eq!(pair.a.failure(), None);
    assert!(pair.b.pongs().is_empty(), "B has keepalive off");
}

#[test]
fn datagram_ping_to_a_dead_peer_fails_after_the_whole_rfc7252_schedule() {
    let mut pair = Pair::datagram(keepalive_every(1), KeepaliveConfig::default(), 2);
    pair.link.down = true;
    assert!(pair.run_until_that(secs(120), |p| p.a.failure().is_some()));

    // First ping at 1 s; retransmissions after 2, 4, 8 and 16 s (ACK_TIMEOUT 2 s, factor 1.0,
    // MAX_RETRANSMIT 4); the last one's 32 s pass at 63 s.
    let sent: Vec<_> = pair.a.sent.iter().map(|(at, _)| *at).collect();
    assert_eq!(sent, [1, 3, 7, 15, 31].map(|s| pair.at(secs(s))));
    assert!(pair.a.sent.iter().all(|(_, bytes)| is_ping(bytes)));
    let message_ids: Vec<_> = pair.a.sent.iter().map(|(_, b)| [b[2], b[3]]).collect();
    assert!(
        message_ids.windows(2).all(|w| w[0] == w[1]),
        "a retransmission keeps its Message ID"
    );
    assert_eq!(
        pair.a.failure(),
        Some((pair.at(secs(63)), NackReason::TooManyRetries))
    );
    assert_eq!(pair.a.core.keepalive().stats().retransmissions, 4);
}

#[test]
fn a_lost_ping_is_retransmitted_and_its_answer_timed_from_the_retransmission() {
    let mut pair = Pair::datagram(keepalive_every(1), KeepaliveConfig::default(), 3);
    pair.link.delay = ms(10);
    let mut dropped = false;
    pair.link.drop_if = Some(Box::new(move |from, bytes| {
        let drop = from == Side::A && is_ping(bytes) && !dropped;
        dropped |= drop;
        drop
    }));
    pair.run_for(ms(3_100));

    // Lost at 1 s, retransmitted at 3 s, answered at 3.020 s.
    assert_eq!(pair.a.pongs(), [(pair.at(ms(3_020)), ms(20))]);
    assert_eq!(pair.a.core.keepalive().stats().retransmissions, 1);
    assert_eq!(pair.b.pings_received(), [pair.at(ms(3_010))]);
}

#[test]
fn both_ends_ping_and_answer_each_other() {
    let mut pair = Pair::datagram(keepalive_every(1), keepalive_every(1), 4);
    pair.link.delay = ms(10);
    pair.run_for(ms(3_500));

    // Both are due at 1 s; each ping reaches the other at 1.010 s (activity for it) and each
    // answer returns at 1.020 s, after which both are due again one interval later.
    for end in [&pair.a.pongs(), &pair.b.pongs()] {
        let at: Vec<_> = end.iter().map(|(at, _)| *at).collect();
        assert_eq!(at, [1_020, 2_040, 3_060].map(|t| pair.at(ms(t))));
    }
    assert_eq!(pair.a.pings_received().len(), 3);
    assert_eq!(pair.b.pings_received().len(), 3);
}

#[test]
fn a_silent_peer_that_still_receives_fails_exactly_like_a_dead_link() {
    let mut pair = Pair::datagram(keepalive_every(1), KeepaliveConfig::default(), 5);
    pair.b.answer_pings = false;
    assert!(pair.run_until_that(secs(120), |p| p.a.failure().is_some()));
    assert_eq!(
        pair.a.failure(),
        Some((pair.at(secs(63)), NackReason::TooManyRetries))
    );
    assert_eq!(
        pair.b.pings_received().len(),
        5,
        "one ping and four retransmissions"
    );
}

#[test]
fn a_lossy_reordering_link_keeps_a_session_alive_with_max_unanswered_3() {
    let config = keepalive_every(5).with_max_unanswered(3);
    let mut pair = Pair::datagram(config, KeepaliveConfig::default(), 6);
    pair.link.delay = ms(20);
    pair.link.jitter = ms(400); // wider than the first retransmission gap: answers reorder
    pair.link.loss = 0.3;
    pair.run_for(secs(1_000));

    assert_eq!(pair.a.failure(), None, "seeded run: no false failure");
    let stats = pair.a.core.keepalive().stats();
    assert!(stats.retransmissions > 0, "the link lost pings");
    assert!(
        stats.pongs >= 90,
        "most cycles answered: {stats:?} over 1,000 s at one ping per 5 idle seconds"
    );
    assert!(pair.a.pongs().iter().all(|(_, rtt)| *rtt <= ms(840)));
}

#[test]
fn stream_pings_start_after_the_csm_exchange_and_are_ponged() {
    let mut pair = Pair::stream(keepalive_every(1), KeepaliveConfig::default(), 7);
    pair.link.delay = ms(10);
    pair.run_for(ms(2_500));

    // The CSMs cross at once and arrive at 10 ms: both established then.
    assert_eq!(pair.a.established(), Some(pair.at(ms(10))));
    assert_eq!(pair.b.established(), Some(pair.at(ms(10))));
    // Idle since the peer's CSM arrived: pings at 1.010 and 2.030, pongs 20 ms later.
    let expected: Vec<_> = [1_030, 2_050]
        .iter()
        .map(|&at| (pair.at(ms(at)), ms(20)))
        .collect();
    assert_eq!(pair.a.pongs(), expected);
}

#[test]
fn stream_ping_without_a_pong_fails_after_the_pong_timeout() {
    let config = keepalive_every(1).with_pong_timeout(ms(300));
    let mut pair = Pair::stream(config, KeepaliveConfig::default(), 8);
    pair.link.delay = ms(10);
    pair.run_for(ms(1_500));
    assert_eq!(pair.a.pongs().len(), 1);

    // The path dies after the first pong (1.030 s): the next ping goes out at 2.030 s and its
    // pong timeout passes at 2.330 s.
    pair.link.down = true;
    assert!(pair.run_until_that(secs(10), |p| p.a.failure().is_some()));

    assert_eq!(
        pair.a.failure(),
        Some((pair.at(ms(2_330)), NackReason::TooManyRetries))
    );
}

#[test]
fn a_pair_replays_exactly_from_its_seed() {
    let run = |seed| {
        let mut pair = Pair::datagram(keepalive_every(2), keepalive_every(3), seed);
        pair.link.delay = ms(5);
        pair.link.jitter = ms(50);
        pair.link.loss = 0.2;
        pair.run_for(secs(300));
        let offsets = |pongs: Vec<(std::time::Instant, Duration)>| {
            pongs
                .into_iter()
                .map(|(at, rtt)| (at - pair.start, rtt))
                .collect::<Vec<_>>()
        };
        (offsets(pair.a.pongs()), offsets(pair.b.pongs()))
    };
    assert_eq!(run(9), run(9));
    assert_ne!(run(9), run(10));
}
