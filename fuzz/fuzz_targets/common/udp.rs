//! The `udp_classify` harness: `wire::udp::classify` on arbitrary bytes, then a
//! `DatagramSession` fed arbitrary datagrams (cut from the same input) at arbitrary times, with
//! its deadlines, answers to the requests it hands up, separate responses and notifications in
//! between.
//!
//! Checked: classification is consistent with the header bits (Message ID, type, emptiness, who
//! gets an RST), and the session keeps the invariants of [`DatagramChecker`].

use std::time::Instant;

use coap_keepalive::proto::datagram::DatagramSession;
use coap_keepalive::proto::rng::Rng;
use coap_keepalive::proto::wire::udp::{self, Datagram, DatagramError};
use coap_keepalive::proto::ProtocolEvent;
use coap_keepalive::Response;
use coap_keepalive::{KeepaliveConfig, TransmissionParams};

use super::{ms, settle, Cursor, DatagramChecker, ACK, CON, NON, RST};

pub fn check_classify(bytes: &[u8]) {
    let result = udp::classify(bytes);
    let [first, code, high, low, ..] = *bytes else {
        assert!(matches!(result, Err(DatagramError::TooShort { .. })));
        return;
    };
    let message_id = u16::from_be_bytes([high, low]);
    let kind = (first >> 4) & 0x03;
    if first >> 6 != 1 {
        assert!(matches!(result, Err(DatagramError::BadVersion { .. })));
        return;
    }
    match &result {
        Ok(datagram) => {
            assert_eq!(datagram.message_id(), message_id);
            let expected_kind = match datagram {
                Datagram::Ping { .. } => Some(CON),
                Datagram::EmptyNon { .. } => Some(NON),
                Datagram::EmptyAck { .. } => Some(ACK),
                Datagram::Reset { .. } => Some(RST),
                Datagram::Message(message) => {
                    assert_ne!(code, 0, "a 0.00 message is never a full message");
                    assert_ne!(kind, RST, "an RST is always empty");
                    assert_eq!(message.code(), code);
                    assert_eq!(message.message_id(), message_id);
                    assert_eq!(message.token().len(), usize::from(first & 0x0F));
                    None
                }
                _ => None,
            };
            if let Some(expected) = expected_kind {
                assert_eq!(kind, expected);
                assert_eq!(bytes.len(), 4, "an empty message is exactly its header");
                assert_eq!((first & 0x0F, code), (0, 0));
            }
            match datagram.empty_reply() {
                Some(reply) => {
                    assert_eq!(reply, udp::reset(message_id));
                    assert!(kind == CON || kind == NON);
                }
                None => assert!(!matches!(
                    datagram,
                    Datagram::Ping { .. } | Datagram::EmptyNon { .. }
                )),
            }
        }
        Err(error) => {
            if let Some(rst) = error.rejection() {
                assert_eq!(rst, udp::reset(message_id));
                assert_eq!(
                    kind, CON,
                    "only a Confirmable message is rejected with an RST"
                );
            }
        }
    }
}

pub fn drive_session(data: &[u8]) {
    let mut u = Cursor::new(data);
    let t0 = Instant::now();
    let ack_timeout = ms(u.below(5_001).max(1));
    let max_retransmit = u.below(7) as u32;
    let params = TransmissionParams::default()
        .with_ack_timeout(ack_timeout)
        .with_ack_random_factor(1.0 + u.below(101) as f64 / 100.0)
        .with_max_retransmit(max_retransmit);
    let interval = u.below(120_001);
    let config = KeepaliveConfig::default()
        .with_interval(Some(ms(interval)))
        .with_transmission(params);
    let mut session = DatagramSession::new(config, Rng::seeded(u.u64()), t0);
    if u.bool() {
        session.set_idle_timeout(Some(ms(u.below(600_000) + 1)));
    }
    let mut checker = DatagramChecker::new(ack_timeout, max_retransmit);
    let mut now = t0;
    let mut last_request = None;
    while !u.is_empty() {
        let mut incoming = None;
        match u.below(6) {
            0 | 1 => {
                now += ms(u.below(10_001));
                let len = u.below(201) as usize;
                let bytes = u.take(len);
                checker.incoming(bytes);
                session.handle_datagram(now, bytes);
                incoming = Some(bytes);
            }
            2 => {
                if let Some(at) = session.poll_timeout() {
                    now = now.max(at);
                }
                settle(
                    &mut session,
                    now,
                    DatagramSession::poll_timeout,
                    DatagramSession::handle_timeout,
                    |s| checker.after(s, now, None),
                );
                continue;
            }
            3 => {
                if let Some(request) = &last_request {
                    session.respond(request, &Response::content_text("ok"));
                }
            }
            4 => {
                if let Some(request) = &last_request {
                    session.respond_later(request);
                    let token = request.request().token.clone();
                    let confirmable = u.bool();
                    session.respond_separate(
                        now,
                        &token,
                        confirmable,
                        &Response::content_text("later"),
                    );
                }
            }
            _ => {
                if let Some(request) = &last_request {
                    let token = request.request().token.clone();
                    session.notify(&token, &Response::content_text("n"));
                }
            }
        }
        checker.after(&mut session, now, incoming);
        for event in &checker.events {
            if let ProtocolEvent::Request(request) = event {
                last_request = Some((**request).clone());
            }
        }
    }
}
