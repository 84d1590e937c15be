//! Hostile input over real sockets against a library server, on every transport: malformed
//! datagrams over UDP and inside a DTLS session, and malformed, oversized, unknown or unfinished
//! frames over TCP and TLS (and garbage where a TLS handshake belongs).
//!
//! Each case asserts the protocol's answer (an RST, nothing, a 7.05 Abort naming what was wrong
//! followed by the close of the connection) and then that the server still answers a
//! well-formed ping from *another* session. Cases `wire_answers.rs` and `robustness.rs` already
//! cover over plain UDP or TCP are run here only over DTLS or TLS.
//!
//! "Gets nothing" is checked as in `wire_answers.rs`: a quiet wait, then a ping whose RST must be
//! the very next datagram of that session (a session's datagrams are handled in order).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use coap_keepalive::proto::wire::decode_uint;
use coap_keepalive::proto::wire::signal::{ABORT, CSM, OPTION_BAD_CSM_OPTION, PONG};
use coap_keepalive::proto::wire::tcp::Frame;
use coap_keepalive::{
    Context, ContextBuilder, NackReason, PskCredentials, ServerCredentials, Transport,
};

mod support;

use support::{bounded, expect_nack, listen, listen_stream, nacks, Nack, RawDatagram, RawStream};

/// The most any test here may take; each takes well under a second when all is well (the
/// unfinished-frame cases wait for their input timeout).
const TEST_LIMIT: Duration = Duration::from_secs(10);
/// How long to wait for an answer that should come.
const ANSWER_LIMIT: Duration = Duration::from_secs(2);
/// The input timeout of servers whose peers stop mid-frame.
const INPUT_TIMEOUT: Duration = Duration::from_millis(300);
/// Our servers' Max-Message-Size (the default).
const MAX_MESSAGE_SIZE: u32 = 65_536;

fn psk() -> PskCredentials {
    PskCredentials::new("hostile", "secret")
}

// ---- UDP and DTLS ----

/// A library server on a datagram transport.
struct DatagramServer {
    _ctx: Context,
    transport: Transport,
    addr: SocketAddr,
}

impl DatagramServer {
    async fn start(transport: Transport) -> DatagramServer {
        let ctx = Context::new();
        let addr = listen(&ctx, transport, Some(ServerCredentials::Psk(psk()))).await;
        DatagramServer {
            _ctx: ctx,
            transport,
            addr,
        }
    }

    /// A raw peer of a new session: a fresh UDP port, or a fresh DTLS connection.
    async fn peer(&self) -> RawDatagram {
        match self.transport {
            Transport::Udp => RawDatagram::udp(self.addr, ANSWER_LIMIT).await,
            _ => RawDatagram::dtls_psk(self.addr, &psk(), ANSWER_LIMIT).await,
        }
    }

    /// A well-formed ping from another session is answered.
    async fn assert_serves_another_session(&self) {
        let other = self.peer().await;
        other.assert_next_answer_is_rst_to_ping(0x7e57).await;
        other.close().await;
    }
}

/// Sends each datagram, expects no answer to any, and the session still answers a ping.
async fn datagrams_get_nothing(transport: Transport, what: &str, datagrams: &[Vec<u8>]) {
    bounded(TEST_LIMIT, async {
        let server = DatagramServer::start(transport).await;
        let peer = server.peer().await;
        for datagram in datagrams {
            peer.send(datagram).await;
        }
        peer.assert_quiet(what).await;
        peer.assert_next_answer_is_rst_to_ping(0x0bad).await;
        peer.close().await;
        server.assert_serves_another_session().await;
    })
    .await
}

/// Sends each datagram and expects, for each, an RST carrying its Message ID.
async fn datagrams_get_rst(transport: Transport, datagrams: &[Vec<u8>]) {
    bounded(TEST_LIMIT, async {
        let server = DatagramServer::start(transport).await;
        let peer = server.peer().await;
        for datagram in datagrams {
            peer.send(datagram).await;
            assert_eq!(
                peer.recv().await,
                vec![0x70, 0x00, datagram[2], datagram[3]],
                "answer to {datagram:02x?}"
            );
        }
        peer.assert_quiet("the last rejected datagram").await;
        peer.close().await;
        server.assert_serves_another_session().await;
    })
    .await
}

/// 0 to 3 bytes: no header, nothing to answer.
fn too_short() -> Vec<Vec<u8>> {
    vec![vec![], vec![0x40], vec![0x40, 0x00], vec![0x40, 0x00, 0x12]]
}

/// Versions 0, 2 and 3, as a ping and as a GET: silently ignored (RFC 7252 §3).
fn bad_versions() -> Vec<Vec<u8>> {
    [0x00u8, 0x80, 0xc0]
        .iter()
        .flat_map(|version| {
            [
                vec![*version, 0x00, 0x12, 0x34],
                vec![*version | 0x01, 0x01, 0x12, 0x35, 0xaa],
            ]
        })
        .collect()
}

/// A CON GET with TKL 9..=15 (reserved) and that many bytes behind the header: a message
/// format error, rejected with an RST (RFC 7252 §3, §4.2).
fn reserved_token_lengths_in_con() -> Vec<Vec<u8>> {
    (9u8..=15)
        .map(|tkl| {
            let mut datagram = vec![0x40 | tkl, 0x01, 0x09, tkl];
            datagram.extend(std::iter::repeat_n(0xaa, usize::from(tkl)));
            datagram
        })
        .collect()
}

/// The same in a NON: RFC 7252 §4.3 lets it be ignored, and we do.
fn reserved_token_lengths_in_non() -> Vec<Vec<u8>> {
    reserved_token_lengths_in_con()
        .into_iter()
        .map(|mut datagram| {
            datagram[0] = 0x50 | (datagram[0] & 0x0f);
            datagram
        })
        .collect()
}

/// Empty CONs (code 0.00) with something after the header: a format error, RST (§4.1, §4.2).
fn empty_con_with_content() -> Vec<Vec<u8>> {
    vec![
        vec![0x41, 0x00, 0x20, 0x01, 0x99],                   // a token
        vec![0x40, 0x00, 0x20, 0x02, 0xff, b'x'],             // a payload
        vec![0x40, 0x00, 0x20, 0x03, 0xb1, b'x'],             // an option
        vec![0x48, 0x00, 0x20, 0x04, 1, 2, 3, 4, 5, 6, 7, 8], // an 8-byte token
    ]
}

/// An ACK and an RST for Message IDs nobody sent: never answered (§4.2, §4.3).
fn answers_to_nothing() -> Vec<Vec<u8>> {
    vec![
        vec![0x60, 0x00, 0x30, 0x01],
        vec![0x70, 0x00, 0x30, 0x02],
        // A piggybacked 2.05 for a request never sent, and an RST with content.
        vec![0x61, 0x45, 0x30, 0x03, 0xaa],
        vec![0x70, 0x00, 0x30, 0x04, 0xff, b'x'],
    ]
}

/// CON requests whose token or options run past the end of the datagram: RST.
fn truncated_in_con() -> Vec<Vec<u8>> {
    vec![
        vec![0x44, 0x01, 0x40, 0x01, 0xaa], // TKL 4, one token byte
        vec![0x40, 0x01, 0x40, 0x02, 0xb5, b'a', b'b'], // Uri-Path of 5 bytes, 2 present
        vec![0x40, 0x01, 0x40, 0x03, 0xd0], // delta 13, its extension byte missing
        vec![0x40, 0x01, 0x40, 0x04, 0xbe, 0x01], // length 14, one of two bytes
        vec![0x40, 0x01, 0x40, 0x05, 0xb1, b'a', 0xff], // payload marker, no payload
        vec![0x40, 0x01, 0x40, 0x06, 0xf0], // reserved delta 15
    ]
}

// Over UDP, `wire_answers.rs` covers short datagrams, bad versions, an empty CON with a token,
// ACK / RST for unknown IDs and the largest datagrams; these are the rest.

#[tokio::test]
async fn udp_reserved_token_length_in_a_con_gets_rst() {
    datagrams_get_rst(Transport::Udp, &reserved_token_lengths_in_con()).await
}

#[tokio::test]
async fn udp_reserved_token_length_in_a_non_gets_nothing() {
    let datagrams = reserved_token_lengths_in_non();
    datagrams_get_nothing(Transport::Udp, "a NON with TKL > 8", &datagrams).await
}

#[tokio::test]
async fn udp_empty_con_with_content_gets_rst() {
    datagrams_get_rst(Transport::Udp, &empty_con_with_content()).await
}

#[tokio::test]
async fn udp_truncated_token_or_option_in_a_con_gets_rst() {
    datagrams_get_rst(Transport::Udp, &truncated_in_con()).await
}

#[tokio::test]
async fn dtls_short_datagrams_get_nothing() {
    datagrams_get_nothing(Transport::Dtls, "records of 0-3 bytes", &too_short()).await
}

#[tokio::test]
async fn dtls_unknown_versions_get_nothing() {
    datagrams_get_nothing(Transport::Dtls, "versions 0, 2, 3", &bad_versions()).await
}

#[tokio::test]
async fn dtls_reserved_token_length_in_a_con_gets_rst() {
    datagrams_get_rst(Transport::Dtls, &reserved_token_lengths_in_con()).await
}

#[tokio::test]
async fn dtls_reserved_token_length_in_a_non_gets_nothing() {
    let datagrams = reserved_token_lengths_in_non();
    datagrams_get_nothing(Transport::Dtls, "a NON with TKL > 8", &datagrams).await
}

#[tokio::test]
async fn dtls_empty_con_with_content_gets_rst() {
    datagrams_get_rst(Transport::Dtls, &empty_con_with_content()).await
}

#[tokio::test]
async fn dtls_ack_and_rst_for_unknown_ids_get_nothing() {
    let datagrams = answers_to_nothing();
    datagrams_get_nothing(Transport::Dtls, "an ACK and an RST", &datagrams).await
}

#[tokio::test]
async fn dtls_truncated_token_or_option_in_a_con_gets_rst() {
    datagrams_get_rst(Transport::Dtls, &truncated_in_con()).await
}

/// A DTLS server reads each record into a 1,536-byte buffer (RFC 7252 §4.6: a message goes
/// in one datagram of at most 1,152 bytes unless more is known to fit; libcoap's is 1,472): a
/// record that fills most of it is a CoAP message like any other, and larger ones — up to what
/// one UDP datagram carries — are dropped (and logged) without harming the connection.
#[tokio::test]
async fn dtls_largest_records_do_not_kill_the_session() {
    bounded(TEST_LIMIT, async {
        let server = DatagramServer::start(Transport::Dtls).await;
        let peer = server.peer().await;
        // A CON POST with a 1,500-byte payload: a 4.04 piggybacked (no resource here).
        let mut post = vec![0x40, 0x02, 0x77, 0x01, 0xff];
        post.resize(1_500, b'a');
        peer.send(&post).await;
        assert_eq!(peer.recv().await, vec![0x60, 0x84, 0x77, 0x01]);
        // 8,000 bytes of CON POST: above the buffer, dropped.
        let mut big = vec![0x40, 0x02, 0x77, 0x05, 0xff];
        big.resize(8_000, b'a');
        peer.send(&big).await;
        // 60,000 bytes of CON POST and of garbage behind a CON header (within one UDP datagram
        // once encrypted): too large for the DTLS layer, dropped.
        let mut huge = vec![0x40, 0x02, 0x77, 0x02, 0xff];
        huge.resize(60_000, b'a');
        peer.send(&huge).await;
        let mut garbage = vec![0x40, 0x01, 0x77, 0x03, 0xf0];
        garbage.extend((0..60_000 - 5).map(|i| (i * 7 + 3) as u8));
        peer.send(&garbage).await;
        peer.assert_quiet("60,000-byte records").await;
        peer.assert_next_answer_is_rst_to_ping(0x7704).await;
        peer.close().await;
        server.assert_serves_another_session().await;
    })
    .await
}

/// The server keeps no reader per DTLS connection: it reads a connection's decrypted records
/// when the connection's waker says one is there, one at a time (webrtc-dtls queues one record
/// and holds the rest back). Records sent back to back on several connections at once, and
/// again after a pause, are each read and answered once.
#[tokio::test]
async fn dtls_records_sent_back_to_back_are_all_read() {
    const PINGS: u16 = 48;
    bounded(TEST_LIMIT, async {
        let server = DatagramServer::start(Transport::Dtls).await;
        let peers = [
            server.peer().await,
            server.peer().await,
            server.peer().await,
        ];
        for round in 0..2u16 {
            for ping in 0..PINGS {
                for (n, peer) in peers.iter().enumerate() {
                    let [high, low] = (round << 12 | (n as u16) << 8 | ping).to_be_bytes();
                    peer.send(&[0x40, 0x00, high, low]).await;
                }
            }
            for (n, peer) in peers.iter().enumerate() {
                for ping in 0..PINGS {
                    let [high, low] = (round << 12 | (n as u16) << 8 | ping).to_be_bytes();
                    assert_eq!(peer.recv().await, vec![0x70, 0x00, high, low]);
                }
                peer.assert_quiet("the answered pings").await;
            }
            // Idle: every connection's waker waits for the next record.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for peer in peers {
            peer.close().await;
        }
        server.assert_serves_another_session().await;
    })
    .await
}

// ---- TCP and TLS ----

/// A library server on a stream transport, with its nacks.
struct StreamServer {
    ctx: Context,
    transport: Transport,
    addr: SocketAddr,
    ca_pem: String,
    nacks: mpsc::UnboundedReceiver<Nack>,
}

impl StreamServer {
    async fn start(transport: Transport) -> StreamServer {
        StreamServer::with_settings(transport, Context::builder()).await
    }

    async fn with_settings(transport: Transport, settings: ContextBuilder) -> StreamServer {
        let ctx = settings.build().unwrap();
        let nacks = nacks(&ctx);
        let (addr, ca_pem) = listen_stream(&ctx, transport).await;
        StreamServer {
            ctx,
            transport,
            addr,
            ca_pem,
            nacks,
        }
    }

    /// A raw connection of a new session (TLS handshake done), nothing sent yet.
    async fn connect(&self) -> RawStream {
        RawStream::connect(self.transport, self.addr, &self.ca_pem, ANSWER_LIMIT).await
    }

    /// A connection whose CSM exchange is done: the server's read, ours (`00 e1`) sent.
    async fn established(&self) -> RawStream {
        let mut raw = self.connect().await;
        raw.exchange_csms().await;
        raw
    }

    /// A well-formed ping from another session is answered.
    async fn assert_serves_another_session(&self) {
        let mut other = self.established().await;
        other.send(&[0x00, 0xe2]).await;
        assert_eq!(other.frame().await.encode(), vec![0x00, 0xe3]);
    }

    async fn expect_nack(&mut self, reason: NackReason) {
        expect_nack(&mut self.nacks, ANSWER_LIMIT, reason).await;
    }

    /// Waits until the table holds exactly `n` sessions.
    async fn wait_for_sessions(&self, n: usize) {
        tokio::time::timeout(ANSWER_LIMIT, async {
            while self.ctx.sessions().len() != n {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{} sessions, not {n}", self.ctx.sessions().len()));
    }

    async fn wait_for_no_sessions(&self) {
        self.wait_for_sessions(0).await;
    }
}

/// Virtual size and resident set of this process, in kB (`/proc/self/status`).
fn memory_kb() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmSize:"), field("VmRSS:"))
}

async fn first_message_not_a_csm_is_aborted(transport: Transport) {
    bounded(TEST_LIMIT, async {
        let mut server = StreamServer::start(transport).await;
        let mut raw = server.connect().await;
        assert_eq!(raw.frame().await.code, CSM);
        raw.send(&[0x00, 0xe2]).await; // a Ping before any CSM
        let (bad_csm_option, diagnostic) = raw.assert_aborted().await;
        assert_eq!(bad_csm_option, None);
        assert!(diagnostic.contains("CSM"), "{diagnostic}");
        server.expect_nack(NackReason::ProtocolError).await;
        server.assert_serves_another_session().await;
    })
    .await
}

/// A header declaring 4 GiB is refused from the header alone: an Abort naming our limit, the
/// close, and no allocation for the declared length (the process's virtual size, which a
/// reservation of 4 GiB would grow even untouched, and its resident set stay put). Likewise for
/// a frame only just above the limit.
async fn oversized_frames_are_aborted(transport: Transport) {
    bounded(TEST_LIMIT, async {
        let mut server = StreamServer::start(transport).await;
        let (size_before, rss_before) = memory_kb();
        let mut raw = server.established().await;
        // Len 15, extended length 0xffffffff: 4 GiB + 65,805 bytes; code POST, then some body.
        raw.send(&[0xf0, 0xff, 0xff, 0xff, 0xff, 0x02]).await;
        let (bad_csm_option, diagnostic) = raw.assert_aborted().await;
        assert_eq!(bad_csm_option, None);
        assert!(
            diagnostic.contains(&MAX_MESSAGE_SIZE.to_string()),
            "the Abort names the limit: {diagnostic}"
        );
        let (size_after, rss_after) = memory_kb();
        assert!(
            size_after < size_before + 2 * 1024 * 1024,
            "virtual size grew from {size_before} kB to {size_after} kB"
        );
        assert!(
            rss_after < rss_before + 64 * 1024,
            "resident set grew from {rss_before} kB to {rss_after} kB"
        );
        server.expect_nack(NackReason::ProtocolError).await;

        // Len 15 with extended length 0: 65,805 bytes, the smallest such frame, above 65,536.
        let mut raw = server.established().await;
        raw.send(&[0xf0, 0x00, 0x00, 0x00, 0x00, 0x02]).await;
        raw.send(&[0u8; 1024]).await;
        let (_, diagnostic) = raw.assert_aborted().await;
        assert!(diagnostic.contains("65805"), "{diagnostic}");
        assert!(diagnostic.contains("65536"), "{diagnostic}");
        server.expect_nack(NackReason::ProtocolError).await;

        // One byte within the limit is fine: a 65,536-byte POST gets its 4.04.
        let mut raw = server.established().await;
        let mut post = Frame::new(0x02);
        post.token = vec![0x51];
        post.payload = vec![b'p'; 65_536 - 1 - 1]; // token byte and payload marker
        raw.send(&post.encode()).await;
        let answer = raw.frame().await;
        assert_eq!((answer.code, answer.token), (0x84, vec![0x51]));
        server.wait_for_sessions(1).await;
        server.assert_serves_another_session().await;
    })
    .await
}

/// RFC 8323 §5.2 with RFC 7252 §5.4.6: an odd signalling option is critical, and one the
/// receiver does not know aborts the connection; in a CSM, Bad-CSM-Option names it (§5.6).
async fn unknown_critical_signal_option_is_aborted(transport: Transport) {
    bounded(TEST_LIMIT, async {
        let mut server = StreamServer::start(transport).await;
        // A CSM carrying option 9: odd, so critical, and not defined for a CSM.
        let mut raw = server.connect().await;
        assert_eq!(raw.frame().await.code, CSM);
        raw.send(&[0x10, 0xe1, 0x90]).await;
        let (bad_csm_option, diagnostic) = raw.assert_aborted().await;
        assert_eq!(bad_csm_option, Some(9), "{diagnostic}");
        assert!(diagnostic.contains("option 9"), "{diagnostic}");
        server.expect_nack(NackReason::ProtocolError).await;

        // A Ping, a Pong and a Release carrying option 3 (critical, unknown in each) after the
        // CSM exchange: Abort, without Bad-CSM-Option (no CSM was at fault).
        for (signal, name) in [(0xe2, "7.02"), (0xe3, "7.03"), (0xe4, "7.04")] {
            let mut raw = server.established().await;
            raw.send(&[0x10, signal, 0x30]).await;
            let (bad_csm_option, diagnostic) = raw.assert_aborted().await;
            assert_eq!(bad_csm_option, None, "{diagnostic}");
            assert!(diagnostic.contains("option 3"), "{diagnostic}");
            assert!(diagnostic.contains(name), "{diagnostic}");
            server.expect_nack(NackReason::ProtocolError).await;
        }
        server.wait_for_no_sessions().await;
        server.assert_serves_another_session().await;
    })
    .await
}

/// Even signalling options are elective: a CSM carrying RFC 8974's Extended-Token-Length
/// (option 6) and option 4 in a Ping (Block-Wise-Transfer in a CSM, nothing in a Ping) are taken
/// as if they were absent: the session is established and its pings are answered.
async fn unknown_elective_signal_option_is_ignored(transport: Transport) {
    bounded(TEST_LIMIT, async {
        let mut server = StreamServer::start(transport).await;
        let mut raw = server.connect().await;
        assert_eq!(raw.frame().await.code, CSM);
        raw.send(&[0x20, 0xe1, 0x61, 0x08]).await; // CSM + Extended-Token-Length 8
        raw.send(&[0x21, 0xe2, 0x07, 0x41, 0x01]).await; // Ping, token 07, option 4 = 1
        let pong = raw.frame().await;
        assert_eq!(pong.code, PONG);
        assert_eq!(pong.token, vec![0x07]);
        assert!(pong.options.is_empty(), "{pong:?}");
        raw.send(&[0x00, 0xe2]).await; // and again
        assert_eq!(raw.frame().await.encode(), vec![0x00, 0xe3]);
        assert!(server.nacks.try_recv().is_err(), "no failure");
        assert_eq!(server.ctx.sessions().len(), 1);
        let session = &server.ctx.sessions()[0];
        assert_eq!(session.state(), coap_keepalive::SessionState::Established);
        server.assert_serves_another_session().await;
    })
    .await
}

/// An Abort from the peer ends the session even with an unknown critical option in it, and is
/// not answered with an Abort of ours: the peer is closing already.
#[tokio::test]
async fn tcp_abort_with_unknown_critical_option_is_not_answered() {
    bounded(TEST_LIMIT, async {
        let mut server = StreamServer::start(Transport::Tcp).await;
        let mut raw = server.established().await;
        raw.send(&[0x30, 0xe5, 0x30, 0xff, b'x']).await; // Abort, option 3, diagnostic "x"
        raw.assert_closed_or_reset().await;
        server.expect_nack(NackReason::NotDeliverable).await;
        server.wait_for_no_sessions().await;
        server.assert_serves_another_session().await;
    })
    .await
}

/// A frame started and never finished holds the session for the input timeout only.
async fn unfinished_frame_is_aborted_after_the_input_timeout(transport: Transport) {
    bounded(TEST_LIMIT, async {
        let settings = Context::builder().input_timeout(INPUT_TIMEOUT);
        let mut server = StreamServer::with_settings(transport, settings).await;
        let mut raw = server.established().await;
        // Len 13: 13 + 0x40 = 77 bytes of options and payload announced; 3 sent.
        raw.send(&[0xd1, 0x40, 0x02, 0xaa, 0xb1, b'x']).await;
        let started = Instant::now();
        let (_, diagnostic) = raw.assert_aborted().await;
        let waited = started.elapsed();
        assert!(
            waited >= INPUT_TIMEOUT - Duration::from_millis(50),
            "aborted after {waited:?}"
        );
        assert!(diagnostic.contains("not completed"), "{diagnostic}");
        server.expect_nack(NackReason::ProtocolError).await;
        server.wait_for_no_sessions().await;
        server.assert_serves_another_session().await;
    })
    .await
}

#[tokio::test]
async fn tls_first_message_not_a_csm_is_aborted() {
    first_message_not_a_csm_is_aborted(Transport::Tls).await
}

#[tokio::test]
async fn tcp_oversized_frames_are_aborted_without_allocating_them() {
    oversized_frames_are_aborted(Transport::Tcp).await
}

#[tokio::test]
async fn tls_oversized_frames_are_aborted_without_allocating_them() {
    oversized_frames_are_aborted(Transport::Tls).await
}

#[tokio::test]
async fn tcp_unknown_critical_signal_options_are_aborted() {
    unknown_critical_signal_option_is_aborted(Transport::Tcp).await
}

#[tokio::test]
async fn tls_unknown_critical_signal_options_are_aborted() {
    unknown_critical_signal_option_is_aborted(Transport::Tls).await
}

#[tokio::test]
async fn tcp_unknown_elective_signal_options_are_ignored() {
    unknown_elective_signal_option_is_ignored(Transport::Tcp).await
}

#[tokio::test]
async fn tls_unknown_elective_signal_options_are_ignored() {
    unknown_elective_signal_option_is_ignored(Transport::Tls).await
}

#[tokio::test]
async fn tls_unfinished_frame_is_aborted_after_the_input_timeout() {
    unfinished_frame_is_aborted_after_the_input_timeout(Transport::Tls).await
}

/// Plain bytes where a ClientHello belongs — an HTTP request, a CoAP CSM, random bytes —
/// fail the handshake: the connection is closed, the nack handler sees `TlsFailed`, and the
/// server keeps serving.
#[tokio::test]
async fn tls_garbage_before_the_handshake_fails_it() {
    bounded(TEST_LIMIT, async {
        let mut server = StreamServer::start(Transport::Tls).await;
        let random: Vec<u8> = (0..512u32).map(|i| (i * 131 + 7) as u8).collect();
        for garbage in [
            b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec(),
            vec![0x00, 0xe1, 0x00, 0xe2],
            random,
        ] {
            let mut tcp = TcpStream::connect(server.addr).await.unwrap();
            tcp.write_all(&garbage).await.unwrap();
            let mut answer = Vec::new();
            let read = tokio::time::timeout(ANSWER_LIMIT, tcp.read_to_end(&mut answer))
                .await
                .expect("the server closes the connection");
            // At most a TLS alert record (content type 21), never CoAP.
            if read.is_ok() && !answer.is_empty() {
                assert_eq!(answer[0], 21, "not an alert: {answer:02x?}");
            }
            server.expect_nack(NackReason::TlsFailed).await;
        }
        server.wait_for_no_sessions().await;
        server.assert_serves_another_session().await;
    })
    .await
}

#[tokio::test]
async fn tcp_extended_signal_option_numbers_are_judged_by_parity() {
    // Option numbers past 12 take an extension byte; 14 is even (elective), 13 odd (critical).
    bounded(TEST_LIMIT, async {
        let server = StreamServer::start(Transport::Tcp).await;
        let mut raw = server.connect().await;
        assert_eq!(raw.frame().await.code, CSM);
        raw.send(&[0x20, 0xe1, 0xd0, 0x01]).await; // option 13 + 1 = 14: even, ignored
        raw.send(&[0x20, 0xe1, 0xd0, 0x00]).await; // option 13: odd, unknown
        let abort = raw.frame().await;
        assert_eq!(abort.code, ABORT);
        assert_eq!(
            abort.option(OPTION_BAD_CSM_OPTION).and_then(decode_uint),
            Some(13)
        );
        raw.assert_closed_or_reset().await;
        server.assert_serves_another_session().await;
    })
    .await
}
