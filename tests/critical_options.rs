//! RFC 7252 §5.4.1 over real sockets: what the stack does with a critical (odd-numbered)
//! option it does not recognise, as a server (raw UDP, DTLS and TCP peers sending such
//! requests) and as a client (raw UDP and TCP peers answering our requests with such responses).
//!
//! - A Confirmable request gets 4.02 Bad Option piggybacked on its ACK (over TCP a 4.02
//!   response), with a diagnostic naming the option; a Non-confirmable one an RST; no handler
//!   runs. Block1 (27) is recognised (RFC 7959): the first block of a PUT gets 2.31 Continue and
//!   is never stored as the whole body.
//! - A response carrying one is not delivered: the request fails with
//!   `Error::UnrecognisedOption`; a Confirmable response gets an RST, an ACK nothing.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, UdpSocket};

use coap_keepalive::proto::wire::tcp::Frame;
use coap_keepalive::{
    Context, Error, PskCredentials, Resource, Response, ServerCredentials, Status, Transport,
};

mod support;

use support::{bounded, listen, loopback, RawDatagram, RawStream};

/// The most any test here may take; each takes well under a second when all is well.
const TEST_LIMIT: Duration = Duration::from_secs(10);
/// How long to wait for an answer that should come.
const ANSWER_LIMIT: Duration = Duration::from_secs(2);

/// A library server with `/echo`: GET returns what was PUT (initially "initial"); the calls of
/// each handler are counted.
struct Server {
    _ctx: Context,
    addr: SocketAddr,
    gets: Arc<AtomicUsize>,
    puts: Arc<AtomicUsize>,
}

impl Server {
    async fn start(transport: Transport) -> Server {
        let ctx = Context::new();
        let stored = Arc::new(Mutex::new(b"initial".to_vec()));
        let (gets, puts) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (read, write) = (stored.clone(), stored);
        let (g, p) = (gets.clone(), puts.clone());
        ctx.add_resource(
            Resource::new("/echo")
                .get(move |_, _| {
                    g.fetch_add(1, Ordering::SeqCst);
                    Response::new(Status::Content).with_payload(read.lock().unwrap().clone())
                })
                .put(move |request, _| {
                    p.fetch_add(1, Ordering::SeqCst);
                    *write.lock().unwrap() = request.payload.clone();
                    Response::new(Status::Changed)
                }),
        );
        let addr = listen(&ctx, transport, Some(ServerCredentials::Psk(psk()))).await;
        Server {
            _ctx: ctx,
            addr,
            gets,
            puts,
        }
    }

    fn handler_calls(&self) -> (usize, usize) {
        (
            self.gets.load(Ordering::SeqCst),
            self.puts.load(Ordering::SeqCst),
        )
    }
}

fn psk() -> PskCredentials {
    PskCredentials::new("options", "secret")
}

/// A CON GET /echo with Message ID `mid` and token `c0 de`, then `extra` (options after
/// Uri-Path, delta-encoded from 11).
fn con_get_echo(mid: u16, extra: &[u8]) -> Vec<u8> {
    let [high, low] = mid.to_be_bytes();
    let mut datagram = vec![0x42, 0x01, high, low, 0xc0, 0xde, 0xb4];
    datagram.extend_from_slice(b"echo");
    datagram.extend_from_slice(extra);
    datagram
}

/// Option 13 (odd: critical; unassigned), empty, after Uri-Path: delta 2.
const OPTION_13: [u8; 1] = [0x20];

/// The first block of a PUT of a larger body: Block1 NUM 0, M 1, SZX 2 (64 bytes), after
/// Uri-Path (option 27: delta 16 = 13 + 3), and 64 bytes of payload.
fn block1_first_block() -> Vec<u8> {
    let mut rest = vec![0xd1, 0x03, 0x0a, 0xff];
    rest.extend_from_slice(&[b'b'; 64]);
    rest
}

/// Splits a piggybacked or stream answer's payload off at the marker.
fn diagnostic(bytes: &[u8]) -> String {
    let at = bytes.iter().position(|&b| b == 0xff).expect("a payload");
    String::from_utf8_lossy(&bytes[at + 1..]).into_owned()
}

// ---- our server ----

#[tokio::test]
async fn udp_get_with_an_unrecognised_critical_option_gets_a_piggybacked_4_02() {
    bounded(TEST_LIMIT, async {
        let server = Server::start(Transport::Udp).await;
        let peer = RawDatagram::udp(server.addr, ANSWER_LIMIT).await;
        peer.send(&con_get_echo(0x1301, &OPTION_13)).await;
        let answer = peer.recv().await;
        // ACK 4.02, the request's Message ID and token, and a diagnostic naming 13.
        assert_eq!(&answer[..7], &[0x62, 0x82, 0x13, 0x01, 0xc0, 0xde, 0xff]);
        assert_eq!(diagnostic(&answer), "unrecognised critical option 13");
        assert_eq!(server.handler_calls(), (0, 0), "no handler ran");
        // A retransmission gets the same answer; the session serves a clean GET.
        peer.send(&con_get_echo(0x1301, &OPTION_13)).await;
        assert_eq!(peer.recv().await, answer);
        peer.send(&con_get_echo(0x1302, &[])).await;
        let ok = peer.recv().await;
        assert_eq!(&ok[..6], &[0x62, 0x45, 0x13, 0x02, 0xc0, 0xde]);
        assert_eq!(diagnostic(&ok), "initial");
        assert_eq!(server.handler_calls(), (1, 0));
    })
    .await
}

/// The same inside a DTLS session: the decision is the datagram core's, whatever carries it.
#[tokio::test]
async fn dtls_get_with_an_unrecognised_critical_option_gets_a_piggybacked_4_02() {
    bounded(TEST_LIMIT, async {
        let server = Server::start(Transport::Dtls).await;
        let peer = RawDatagram::dtls_psk(server.addr, &psk(), ANSWER_LIMIT).await;
        peer.send(&con_get_echo(0x1701, &OPTION_13)).await;
        let answer = peer.recv().await;
        assert_eq!(&answer[..7], &[0x62, 0x82, 0x17, 0x01, 0xc0, 0xde, 0xff]);
        assert_eq!(diagnostic(&answer), "unrecognised critical option 13");
        assert_eq!(server.handler_calls(), (0, 0));
        peer.close().await;
    })
    .await
}

/// RFC 7252 §4.3 lets a rejected NON be answered with an RST or not at all: we send the RST.
#[tokio::test]
async fn udp_non_with_an_unrecognised_critical_option_gets_rst_and_no_handler_runs() {
    bounded(TEST_LIMIT, async {
        let server = Server::start(Transport::Udp).await;
        let peer = RawDatagram::udp(server.addr, ANSWER_LIMIT).await;
        let mut non = con_get_echo(0x1401, &OPTION_13);
        non[0] = 0x52; // NON, TKL 2
        peer.send(&non).await;
        assert_eq!(peer.recv().await, vec![0x70, 0x00, 0x14, 0x01]);
        peer.assert_quiet("the RST").await;
        assert_eq!(server.handler_calls(), (0, 0));
    })
    .await
}

/// Block1 (RFC 7959) is recognised: the first block of a PUT is held and answered 2.31
/// Continue, never stored as the whole body and answered 2.04 Changed.
#[tokio::test]
async fn udp_block1_first_block_gets_2_31_and_stores_nothing() {
    bounded(TEST_LIMIT, async {
        let server = Server::start(Transport::Udp).await;
        let peer = RawDatagram::udp(server.addr, ANSWER_LIMIT).await;
        let mut put = con_get_echo(0x1501, &block1_first_block());
        put[1] = 0x03; // PUT
        peer.send(&put).await;
        let answer = peer.recv().await;
        // ACK 2.31, echoing Block1 0/1/64 (option 27: 13 + 14).
        assert_eq!(
            answer,
            vec![0x62, 0x5f, 0x15, 0x01, 0xc0, 0xde, 0xd1, 0x0e, 0x0a]
        );
        assert_eq!(server.handler_calls(), (0, 0), "the PUT handler never ran");
        peer.send(&con_get_echo(0x1502, &[])).await;
        assert_eq!(diagnostic(&peer.recv().await), "initial", "nothing stored");
    })
    .await
}

/// RFC 7252 §5.10.2: an endpoint that is not a forward-proxy answers Proxy-Uri with 5.05.
#[tokio::test]
async fn udp_proxy_uri_gets_5_05() {
    bounded(TEST_LIMIT, async {
        let server = Server::start(Transport::Udp).await;
        let peer = RawDatagram::udp(server.addr, ANSWER_LIMIT).await;
        // CON GET, token c0 de, Proxy-Uri (35: delta 13 + 22) "coap://h/x".
        let mut get = vec![0x42, 0x01, 0x16, 0x01, 0xc0, 0xde, 0xda, 0x16];
        get.extend_from_slice(b"coap://h/x");
        peer.send(&get).await;
        let answer = peer.recv().await;
        assert_eq!(&answer[..6], &[0x62, 0xa5, 0x16, 0x01, 0xc0, 0xde]);
        assert!(diagnostic(&answer).contains("Proxy-Uri"), "{answer:02x?}");
    })
    .await
}

#[tokio::test]
async fn tcp_get_with_an_unrecognised_critical_option_gets_4_02() {
    bounded(TEST_LIMIT, async {
        let server = Server::start(Transport::Tcp).await;
        let mut raw = RawStream::tcp(server.addr, ANSWER_LIMIT).await;
        raw.exchange_csms().await;
        let mut get = Frame::new(0x01);
        get.token = vec![0xc0, 0xde];
        get.options = vec![(11, b"echo".to_vec()), (13, vec![])];
        raw.send(&get.encode()).await;
        let answer = raw.frame().await;
        assert_eq!(
            (answer.code, answer.token.as_slice()),
            (0x82, &[0xc0, 0xde][..])
        );
        assert_eq!(answer.payload, b"unrecognised critical option 13");
        assert_eq!(server.handler_calls(), (0, 0));
        // The connection stays up: the first block of a Block1 PUT gets 2.31 Continue (RFC
        // 7959), a ping is answered, and no handler has run.
        let mut put = Frame::new(0x03);
        put.token = vec![0x27];
        put.options = vec![(11, b"echo".to_vec()), (27, vec![0x0a])];
        put.payload = vec![b'b'; 64];
        raw.send(&put.encode()).await;
        let answer = raw.frame().await;
        assert_eq!((answer.code, answer.token.as_slice()), (0x5f, &[0x27][..]));
        assert_eq!(answer.options, vec![(27, vec![0x0a])]);
        raw.send(&[0x00, 0xe2]).await;
        assert_eq!(raw.frame().await.encode(), vec![0x00, 0xe3]);
        assert_eq!(server.handler_calls(), (0, 0));
    })
    .await
}

// ---- our client ----

/// A raw UDP "server" and a library client session to it.
async fn udp_client_and_raw_server() -> (Context, coap_keepalive::Session, UdpSocket) {
    let raw = UdpSocket::bind(loopback()).await.unwrap();
    let ctx = Context::new();
    let session = ctx.connect_udp(raw.local_addr().unwrap()).await.unwrap();
    (ctx, session, raw)
}

/// The next datagram on `raw` and where it came from.
async fn recv_from(raw: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = vec![0u8; 2048];
    let (n, from) = tokio::time::timeout(ANSWER_LIMIT, raw.recv_from(&mut buf))
        .await
        .expect("a datagram from our client")
        .unwrap();
    buf.truncate(n);
    (buf, from)
}

/// Message ID and token of a request datagram.
fn mid_and_token(request: &[u8]) -> ([u8; 2], Vec<u8>) {
    let tkl = usize::from(request[0] & 0x0f);
    ([request[2], request[3]], request[4..4 + tkl].to_vec())
}

#[tokio::test]
async fn udp_response_with_an_unrecognised_critical_option_fails_the_request() {
    bounded(TEST_LIMIT, async {
        let (_ctx, session, raw) = udp_client_and_raw_server().await;

        // A piggybacked 2.05 carrying option 13: the request fails, and the ACK is never
        // answered (RFC 7252 §4.2: an ACK is rejected by ignoring it).
        let get = tokio::spawn({
            let session = session.clone();
            async move { session.get("/x").await }
        });
        let (request, client) = recv_from(&raw).await;
        let ([high, low], token) = mid_and_token(&request);
        let mut ack = vec![0x60 | token.len() as u8, 0x45, high, low];
        ack.extend_from_slice(&token);
        ack.extend_from_slice(&[0xd0, 0x00, 0xff, b'?']); // option 13 (delta 13 + 0), "?"
        raw.send_to(&ack, client).await.unwrap();
        let result = get.await.unwrap();
        assert!(
            matches!(result, Err(Error::UnrecognisedOption { number: 13 })),
            "{result:?}"
        );
        let message = result.unwrap_err().to_string();
        assert!(message.contains("option 13"), "{message}");

        // A separate CON 2.05 carrying option 19 (Q-Block1, not implemented): the request fails,
        // the response gets an RST.
        let get = tokio::spawn({
            let session = session.clone();
            async move { session.get("/y").await }
        });
        let (request, client) = recv_from(&raw).await;
        let ([high, low], token) = mid_and_token(&request);
        raw.send_to(&[0x60, 0x00, high, low], client).await.unwrap(); // empty ACK
        let mut separate = vec![0x40 | token.len() as u8, 0x45, 0x5e, 0x01];
        separate.extend_from_slice(&token);
        separate.extend_from_slice(&[0xd0, 0x06, 0xff, b'p']); // option 19 (13 + 6), empty
        raw.send_to(&separate, client).await.unwrap();
        let (rst, _) = recv_from(&raw).await;
        assert_eq!(rst, vec![0x70, 0x00, 0x5e, 0x01]);
        let result = get.await.unwrap();
        assert!(
            matches!(result, Err(Error::UnrecognisedOption { number: 19 })),
            "{result:?}"
        );
        // Nothing else went out (no retransmission, no answer to the ACK), and the session is
        // still up.
        let mut buf = [0u8; 64];
        let quiet = tokio::time::timeout(support::QUIET, raw.recv_from(&mut buf)).await;
        assert!(quiet.is_err(), "unexpected datagram {:02x?}", &buf);
        assert!(!session.state().is_terminal(), "{:?}", session.state());
    })
    .await
}

#[tokio::test]
async fn tcp_response_with_an_unrecognised_critical_option_fails_the_request() {
    bounded(TEST_LIMIT, async {
        let listener = TcpListener::bind(loopback()).await.unwrap();
        let ctx = Context::new();
        let addr = listener.local_addr().unwrap();
        let connecting = tokio::spawn({
            let ctx = ctx.clone();
            async move { ctx.connect_tcp(addr).await }
        });
        let (stream, _) = listener.accept().await.unwrap();
        let mut raw = RawStream::new(Box::new(stream), ANSWER_LIMIT);
        raw.exchange_csms().await;
        let session = connecting.await.unwrap().unwrap();

        let get = tokio::spawn({
            let session = session.clone();
            async move { session.get("/x").await }
        });
        let request = raw.frame().await;
        assert_eq!(request.code, 0x01);
        let mut response = Frame::new(0x45);
        response.token = request.token.clone();
        response.options = vec![(13, vec![])];
        response.payload = b"?".to_vec();
        raw.send(&response.encode()).await;
        let result = get.await.unwrap();
        assert!(
            matches!(result, Err(Error::UnrecognisedOption { number: 13 })),
            "{result:?}"
        );

        // The connection lives on: the next request gets its clean response.
        let get = tokio::spawn({
            let session = session.clone();
            async move { session.get("/x").await }
        });
        let request = raw.frame().await;
        let mut response = Frame::new(0x45);
        response.token = request.token;
        response.payload = b"fine".to_vec();
        raw.send(&response.encode()).await;
        let response = get.await.unwrap().expect("a clean response is delivered");
        assert_eq!(response.payload, b"fine");
    })
    .await
}
