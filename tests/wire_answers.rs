//! Raw sockets against a library server: the exact bytes it answers (or does not answer) over
//! UDP (RFC 7252) and TCP (RFC 8323).
//!
//! "Gets nothing" is checked twice over: a quiet wait, then a ping whose RST must be the very
//! next datagram (the server handles one peer's datagrams in order, so anything sent for the
//! earlier ones would arrive first).

use std::time::Duration;

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};

use coap_keepalive::proto::wire::decode_uint;
use coap_keepalive::proto::wire::signal::{
    Signal, ABORT, CSM, OPTION_BAD_CSM_OPTION, OPTION_CUSTODY, OPTION_MAX_MESSAGE_SIZE, PONG,
    RELEASE,
};
use coap_keepalive::proto::wire::tcp::Frame;
use coap_keepalive::Context;
use coap_keepalive::NackReason;
use coap_keepalive::Transport;

mod support;

use support::{bounded, expect_nack, listen, loopback, nacks, RawDatagram, RawStream};

/// The most any test here may take.
const TEST_LIMIT: Duration = Duration::from_secs(5);
/// How long to wait for an answer that should come.
const ANSWER_LIMIT: Duration = Duration::from_secs(1);

// ---- UDP ----

/// A library UDP server and a raw peer of it.
async fn udp_pair() -> (Context, RawDatagram) {
    let server = Context::new();
    let addr = listen(&server, Transport::Udp, None).await;
    let peer = RawDatagram::udp(addr, ANSWER_LIMIT).await;
    (server, peer)
}

#[tokio::test]
async fn udp_ping_gets_rst_with_its_message_id() {
    bounded(TEST_LIMIT, async {
        let (_server, peer) = udp_pair().await;
        peer.send(&[0x40, 0x00, 0x12, 0x34]).await;
        assert_eq!(peer.recv().await, vec![0x70, 0x00, 0x12, 0x34]);
    })
    .await
}

#[tokio::test]
async fn udp_empty_non_gets_rst() {
    bounded(TEST_LIMIT, async {
        let (_server, peer) = udp_pair().await;
        peer.send(&[0x50, 0x00, 0xab, 0xcd]).await;
        assert_eq!(peer.recv().await, vec![0x70, 0x00, 0xab, 0xcd]);
    })
    .await
}

#[tokio::test]
async fn udp_ack_and_rst_for_unknown_ids_get_nothing() {
    bounded(TEST_LIMIT, async {
        let (_server, peer) = udp_pair().await;
        peer.send(&[0x60, 0x00, 0x00, 0x01]).await;
        peer.send(&[0x70, 0x00, 0x00, 0x02]).await;
        peer.assert_quiet("an ACK and an RST").await;
        peer.assert_next_answer_is_rst_to_ping(0x0003).await;
    })
    .await
}

#[tokio::test]
async fn udp_empty_con_with_a_token_gets_rst() {
    bounded(TEST_LIMIT, async {
        let (_server, peer) = udp_pair().await;
        peer.send(&[0x41, 0x00, 0x12, 0x34, 0x99]).await;
        assert_eq!(peer.recv().await, vec![0x70, 0x00, 0x12, 0x34]);
    })
    .await
}

#[tokio::test]
async fn udp_short_datagram_and_version_2_get_nothing() {
    bounded(TEST_LIMIT, async {
        let (server, peer) = udp_pair().await;
        peer.send(&[0x40, 0x00, 0x12]).await;
        peer.send(&[0x80, 0x00, 0x12, 0x35]).await;
        peer.assert_quiet("a 3-byte datagram and a version-2 header")
            .await;
        peer.assert_next_answer_is_rst_to_ping(0x1236).await;
        assert_eq!(server.sessions().len(), 1);
    })
    .await
}

#[tokio::test]
async fn udp_con_get_gets_piggybacked_not_found() {
    bounded(TEST_LIMIT, async {
        let (_server, peer) = udp_pair().await;
        let mut request = Packet::new();
        request.header.set_type(MessageType::Confirmable);
        request.header.code = MessageClass::Request(RequestType::Get);
        request.header.message_id = 0x4242;
        request.set_token(vec![0xde, 0xad, 0xbe, 0xef]);
        request.add_option(CoapOption::UriPath, b"x".to_vec());
        peer.send(&request.to_bytes().unwrap()).await;

        let response = Packet::from_bytes(&peer.recv().await).unwrap();
        assert_eq!(response.header.get_type(), MessageType::Acknowledgement);
        assert_eq!(
            response.header.code,
            MessageClass::Response(ResponseType::NotFound)
        );
        assert_eq!(response.header.message_id, 0x4242);
        assert_eq!(response.get_token(), &[0xde, 0xad, 0xbe, 0xef]);
    })
    .await
}

#[tokio::test]
async fn udp_largest_datagrams_do_not_kill_the_server() {
    bounded(TEST_LIMIT, async {
        let (_server, peer) = udp_pair().await;
        // The largest UDP payload IPv4 carries (a 64 KiB datagram less the IP and UDP headers).
        const LARGEST: usize = 65_507;
        // A well-formed CON POST with a huge payload...
        let mut post = vec![0x40, 0x02, 0x77, 0x01, 0xff];
        post.resize(LARGEST, 0x61);
        peer.send(&post).await;
        // ...and as much garbage behind a CON header (option byte f0: reserved delta 15).
        let mut garbage = vec![0x40, 0x01, 0x77, 0x02, 0xf0];
        garbage.extend((0..LARGEST - 5).map(|i| (i * 7 + 3) as u8));
        peer.send(&garbage).await;
        peer.send(&[0x40, 0x00, 0x77, 0x03]).await;

        // Piggybacked 4.04, RST for the format error, RST for the ping: the server lives.
        assert_eq!(peer.recv().await, vec![0x60, 0x84, 0x77, 0x01]);
        assert_eq!(peer.recv().await, vec![0x70, 0x00, 0x77, 0x02]);
        assert_eq!(peer.recv().await, vec![0x70, 0x00, 0x77, 0x03]);
    })
    .await
}

// ---- TCP ----

/// Starts a TCP endpoint on `server` and connects a raw stream to it.
async fn connect_raw(server: &Context) -> RawStream {
    let addr = listen(server, Transport::Tcp, None).await;
    RawStream::tcp(addr, ANSWER_LIMIT).await
}

/// Connects, reads the server's CSM before writing anything, then sends ours.
async fn established(server: &Context) -> RawStream {
    let mut raw = connect_raw(server).await;
    raw.exchange_csms().await;
    raw
}

#[tokio::test]
async fn tcp_server_sends_its_csm_first() {
    bounded(TEST_LIMIT, async {
        let server = Context::new();
        let mut raw = connect_raw(&server).await;
        // Nothing written yet: the server must not wait for our CSM.
        let csm = raw.frame().await;
        assert_eq!(csm.code, 0xe1);
        assert!(csm.token.is_empty());
        let size = decode_uint(
            csm.option(OPTION_MAX_MESSAGE_SIZE)
                .expect("Max-Message-Size"),
        );
        assert_eq!(size, Some(server.settings().max_message_size));
        // With Block-Wise-Transfer: RFC 7959 both ways, and BERT (RFC 8323 §5.3.2, §6).
        assert!(matches!(
            Signal::parse(&csm),
            Ok(Signal::Csm {
                max_message_size: Some(65_536),
                block_wise_transfer: true,
                ..
            })
        ));
    })
    .await
}

#[tokio::test]
async fn tcp_ping_without_token_gets_pong_without_token() {
    bounded(TEST_LIMIT, async {
        let server = Context::new();
        let mut raw = established(&server).await;
        // An empty 0.00 message first: ignored, so the Pong is the next thing we get.
        raw.send(&[0x00, 0x00, 0x00, 0xe2]).await;
        let pong = raw.frame().await;
        assert_eq!(pong.encode(), vec![0x00, 0xe3]);
        assert!(pong.token.is_empty());
    })
    .await
}

#[tokio::test]
async fn tcp_ping_with_token_and_custody_gets_both_back() {
    bounded(TEST_LIMIT, async {
        let server = Context::new();
        let mut raw = established(&server).await;
        raw.send(&[0x12, 0xe2, 0x12, 0x34, 0x20]).await;
        let pong = raw.frame().await;
        assert_eq!(pong.code, PONG);
        assert_eq!(pong.token, vec![0x12, 0x34]);
        assert_eq!(pong.option(OPTION_CUSTODY), Some(&[][..]));
        assert_eq!(pong.encode(), vec![0x12, 0xe3, 0x12, 0x34, 0x20]);
    })
    .await
}

#[tokio::test]
async fn tcp_request_gets_not_found_with_its_token() {
    bounded(TEST_LIMIT, async {
        let server = Context::new();
        let mut raw = established(&server).await;
        let mut get = Frame::new(0x01);
        get.token = vec![0xaa, 0xbb, 0xcc];
        get.options.push((11, b"x".to_vec())); // Uri-Path
        raw.send(&get.encode()).await;
        let response = raw.frame().await;
        assert_eq!(response.code, 0x84, "4.04");
        assert_eq!(response.token, vec![0xaa, 0xbb, 0xcc]);
    })
    .await
}

/// Reads an Abort, then the clean close; returns the Abort.
async fn assert_aborted(raw: &mut RawStream) -> Signal {
    let abort = raw.frame().await;
    assert_eq!(abort.code, ABORT);
    raw.assert_closed().await;
    Signal::parse(&abort).expect("a well-formed Abort")
}

#[tokio::test]
async fn tcp_first_message_not_a_csm_is_aborted() {
    bounded(TEST_LIMIT, async {
        let server = Context::new();
        let mut nack_rx = nacks(&server);
        let mut raw = connect_raw(&server).await;
        assert_eq!(raw.frame().await.code, CSM);
        raw.send(&[0x00, 0xe2]).await;
        let abort = assert_aborted(&mut raw).await;
        assert!(
            matches!(
                abort,
                Signal::Abort {
                    bad_csm_option: None,
                    ..
                }
            ),
            "{abort:?}"
        );
        expect_nack(&mut nack_rx, ANSWER_LIMIT, NackReason::ProtocolError).await;
    })
    .await
}

#[tokio::test]
async fn tcp_unknown_critical_csm_option_is_aborted_with_bad_csm_option() {
    bounded(TEST_LIMIT, async {
        let server = Context::new();
        let mut nack_rx = nacks(&server);
        let mut raw = connect_raw(&server).await;
        assert_eq!(raw.frame().await.code, CSM);
        // A CSM carrying option 9: odd, so critical, and not defined for a CSM.
        raw.send(&[0x10, 0xe1, 0x90]).await;
        let abort = raw.frame().await;
        assert_eq!(abort.code, ABORT);
        assert_eq!(
            abort.option(OPTION_BAD_CSM_OPTION).and_then(decode_uint),
            Some(9)
        );
        raw.assert_closed().await;
        expect_nack(&mut nack_rx, ANSWER_LIMIT, NackReason::ProtocolError).await;
    })
    .await
}

#[tokio::test]
async fn tcp_frame_declaring_4_gib_is_aborted() {
    bounded(TEST_LIMIT, async {
        let server = Context::new();
        let mut nack_rx = nacks(&server);
        let mut raw = established(&server).await;
        // Len 15, extended length 0xffffffff (4 GiB + 65805 bytes), code GET: the header alone.
        raw.send(&[0xf0, 0xff, 0xff, 0xff, 0xff, 0x01]).await;
        assert_aborted(&mut raw).await;
        expect_nack(&mut nack_rx, ANSWER_LIMIT, NackReason::ProtocolError).await;
        assert!(server.sessions().is_empty());
    })
    .await
}

#[tokio::test]
async fn tcp_server_keeps_serving_after_an_abort() {
    bounded(TEST_LIMIT, async {
        let server = Context::new();
        let endpoint = server.listen_tcp(loopback()).await.unwrap();
        for _ in 0..2 {
            let mut raw = RawStream::tcp(endpoint.local_addr, ANSWER_LIMIT).await;
            assert_eq!(raw.frame().await.code, CSM);
            raw.send(&[0x00, 0x01]).await; // a GET before any CSM
            assert_aborted(&mut raw).await;
        }
        let mut raw = RawStream::tcp(endpoint.local_addr, ANSWER_LIMIT).await;
        assert_eq!(raw.frame().await.code, CSM);
        raw.send(&[0x00, 0xe1, 0x00, 0xe2]).await;
        assert_eq!(raw.frame().await.encode(), vec![0x00, 0xe3]);
    })
    .await
}

#[tokio::test]
async fn tcp_server_shutdown_sends_release() {
    bounded(TEST_LIMIT, async {
        let server = Context::new();
        let mut nack_rx = nacks(&server);
        let mut raw = established(&server).await;
        // A ping round trip: the server has taken our CSM.
        raw.send(&[0x00, 0xe2]).await;
        assert_eq!(raw.frame().await.code, PONG);
        server.shutdown_within(ANSWER_LIMIT).await;
        let release = raw.frame().await;
        assert_eq!(release.code, RELEASE);
        assert!(matches!(
            Signal::parse(&release),
            Ok(Signal::Release { .. })
        ));
        raw.assert_closed().await;
        assert!(server.sessions().is_empty());
        assert!(nack_rx.try_recv().is_err(), "a graceful close is no nack");
    })
    .await
}
