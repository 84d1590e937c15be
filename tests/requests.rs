//! Requests, responses and Observe between our client and our server over UDP and TCP, real
//! sockets on loopback.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coap_keepalive::content_format::TEXT_PLAIN;
use coap_keepalive::credentials::{
    CertificateSet, ClientCredentials, PskCredentials, ServerCredentials,
};
use coap_keepalive::{
    Context, Error, Method, Request, Resource, Response, Session, Status, Transport,
};
use tokio::net::UdpSocket;
use tokio::time::timeout;

mod support;

const LIMIT: Duration = Duration::from_secs(10);

fn loopback() -> SocketAddr {
    ([127, 0, 0, 1], 0).into()
}

/// A server with /hello (GET), /store (GET/PUT/POST/DELETE), /slow (deferred GET), /counter
/// (observable), and a count of how often /store's PUT handler ran.
struct Server {
    ctx: Context,
    udp: SocketAddr,
    tcp: SocketAddr,
    dtls: SocketAddr,
    tls: SocketAddr,
    certs: CertificateSet,
    puts: Arc<AtomicUsize>,
    counter: Arc<AtomicUsize>,
}

async fn server() -> Server {
    let ctx = Context::new();
    let store = Arc::new(Mutex::new(b"initial".to_vec()));
    let puts = Arc::new(AtomicUsize::new(0));
    let counter = Arc::new(AtomicUsize::new(0));
    ctx.add_resource(Resource::new("/hello").get(|_, _| Response::content_text("hello world")));
    let (s1, s2, s3, s4) = (store.clone(), store.clone(), store.clone(), store.clone());
    let p = puts.clone();
    ctx.add_resource(
        Resource::new("/store")
            .get(move |_, _| {
                Response::new(Status::Content).with_payload(s1.lock().unwrap().clone())
            })
            .put(move |req, _| {
                p.fetch_add(1, Ordering::SeqCst);
                *s2.lock().unwrap() = req.payload.clone();
                Response::new(Status::Changed)
            })
            .post(move |req, _| {
                s3.lock().unwrap().extend_from_slice(&req.payload);
                Response::new(Status::Created)
            })
            .delete(move |_, _| {
                s4.lock().unwrap().clear();
                Response::new(Status::Deleted)
            }),
    );
    ctx.add_resource(
        Resource::new("/slow").method_deferred(Method::Get, |_, _, responder| {
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(150)).await;
                responder.respond(Response::content_text("worth the wait"));
            });
        }),
    );
    let c = counter.clone();
    ctx.add_resource(
        Resource::new("/counter")
            .observable()
            .get(move |_, _| Response::content_text(c.load(Ordering::SeqCst).to_string())),
    );
    let udp = ctx.listen_udp(loopback()).await.unwrap().local_addr;
    let tcp = ctx.listen_tcp(loopback()).await.unwrap().local_addr;
    let certs = CertificateSet::generate().unwrap();
    let dtls = ctx
        .listen_dtls(loopback(), ServerCredentials::Psk(psk()))
        .await
        .unwrap()
        .local_addr;
    let tls = ctx
        .listen_tls(
            loopback(),
            ServerCredentials::Certificate {
                identity: certs.server_identity(),
                client_ca_pem: None,
            },
        )
        .await
        .unwrap()
        .local_addr;
    Server {
        ctx,
        udp,
        tcp,
        dtls,
        tls,
        certs,
        puts,
        counter,
    }
}

fn psk() -> PskCredentials {
    PskCredentials::new("requests", "sesame")
}

/// Adds `/never`: a deferred GET whose responder is kept well past any client timeout here.
fn add_never(ctx: &Context) {
    ctx.add_resource(
        Resource::new("/never").method_deferred(Method::Get, |_, _, responder| {
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(5)).await;
                drop(responder);
            });
        }),
    );
}

async fn client(server: &Server, transport: Transport) -> (Context, Session) {
    let ctx = Context::new();
    let session = match transport {
        Transport::Udp => ctx.connect_udp(server.udp).await.unwrap(),
        Transport::Dtls => ctx
            .connect_dtls(server.dtls, &ClientCredentials::Psk(psk()))
            .await
            .unwrap(),
        Transport::Tls => ctx
            .connect_tls(
                server.tls,
                "localhost",
                &ClientCredentials::Certificate {
                    ca_pem: Some(server.certs.ca_cert_pem.clone()),
                    identity: None,
                    insecure: false,
                },
            )
            .await
            .unwrap(),
        _ => ctx.connect_tcp(server.tcp).await.unwrap(),
    };
    (ctx, session)
}

async fn methods_round_trip(transport: Transport) {
    let server = server().await;
    let (_ctx, session) = client(&server, transport).await;
    timeout(LIMIT, async {
        let hello = session.get("/hello").await.unwrap();
        assert_eq!(hello.status, Status::Content);
        assert_eq!(hello.payload_str(), "hello world");
        assert_eq!(hello.content_format, Some(TEXT_PLAIN));

        assert_eq!(
            session.put("/store", "abc").await.unwrap().status,
            Status::Changed
        );
        assert_eq!(session.get("/store").await.unwrap().payload, b"abc");
        assert_eq!(
            session.post("/store", "def").await.unwrap().status,
            Status::Created
        );
        assert_eq!(session.get("/store").await.unwrap().payload, b"abcdef");
        assert_eq!(
            session.delete("/store").await.unwrap().status,
            Status::Deleted
        );
        assert_eq!(session.get("/store").await.unwrap().payload, b"");

        assert_eq!(
            session.get("/nothing").await.unwrap().status,
            Status::NotFound
        );
        let wrong = session.request(Request::post("/hello", "x")).await.unwrap();
        assert_eq!(wrong.status, Status::MethodNotAllowed);
        let core = session.get("/.well-known/core").await.unwrap();
        let links = core.payload_str().to_string();
        assert!(links.contains("</hello>"), "{links}");
        assert!(links.contains("</counter>;obs"), "{links}");
    })
    .await
    .expect("round trips finish");
}

#[tokio::test]
async fn udp_methods_round_trip() {
    methods_round_trip(Transport::Udp).await;
}

#[tokio::test]
async fn tcp_methods_round_trip() {
    methods_round_trip(Transport::Tcp).await;
}

#[tokio::test]
async fn dtls_methods_round_trip() {
    methods_round_trip(Transport::Dtls).await;
}

#[tokio::test]
async fn tls_methods_round_trip() {
    methods_round_trip(Transport::Tls).await;
}

#[tokio::test]
async fn udp_non_confirmable_request_gets_an_answer() {
    let server = server().await;
    let (_ctx, session) = client(&server, Transport::Udp).await;
    let response = timeout(
        LIMIT,
        session.request(Request::get("/hello").non_confirmable()),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(response.payload_str(), "hello world");
}

async fn separate_response(transport: Transport) {
    let server = server().await;
    let (_ctx, session) = client(&server, transport).await;
    let response = timeout(LIMIT, session.get("/slow")).await.unwrap().unwrap();
    assert_eq!(response.payload_str(), "worth the wait");
    // the session is still usable afterwards
    assert_eq!(
        timeout(LIMIT, session.get("/hello"))
            .await
            .unwrap()
            .unwrap()
            .status,
        Status::Content
    );
}

#[tokio::test]
async fn udp_separate_response() {
    separate_response(Transport::Udp).await;
}

#[tokio::test]
async fn tcp_separate_response() {
    separate_response(Transport::Tcp).await;
}

#[tokio::test]
async fn dtls_separate_response() {
    separate_response(Transport::Dtls).await;
}

#[tokio::test]
async fn tls_separate_response() {
    separate_response(Transport::Tls).await;
}

async fn observe_notifications(transport: Transport) {
    let server = server().await;
    let (_ctx, session) = client(&server, transport).await;
    timeout(LIMIT, async {
        let mut observation = session.observe("/counter").await.unwrap();
        assert_eq!(observation.first().payload_str(), "0");
        assert!(observation.first().observe.is_some());
        // registration reached the server
        while server.ctx.observer_count("/counter") == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for n in 1..=3 {
            server.counter.store(n, Ordering::SeqCst);
            assert_eq!(server.ctx.notify("/counter"), 1);
            let notification = observation.next().await.unwrap();
            assert_eq!(notification.payload_str(), n.to_string());
        }
        let last = observation.cancel().await.unwrap();
        assert_eq!(last.status, Status::Content);
        assert_eq!(server.ctx.observer_count("/counter"), 0);
    })
    .await
    .expect("observation finishes");
}

#[tokio::test]
async fn udp_observe_notifications() {
    observe_notifications(Transport::Udp).await;
}

#[tokio::test]
async fn tcp_observe_notifications() {
    observe_notifications(Transport::Tcp).await;
}

#[tokio::test]
async fn dtls_observe_notifications() {
    observe_notifications(Transport::Dtls).await;
}

#[tokio::test]
async fn tls_observe_notifications() {
    observe_notifications(Transport::Tls).await;
}

/// Dropping an observation ends it at the server: over UDP and DTLS the next notification is
/// rejected with an RST (RFC 7641 §3.6); over TCP and TLS, which have no RST, the client
/// deregisters at once (RFC 8323 §7), before any notification.
async fn a_dropped_observation_ends_at_the_server(transport: Transport) {
    let server = server().await;
    let (_ctx, session) = client(&server, transport).await;
    timeout(LIMIT, async {
        let observation = session.observe("/counter").await.unwrap();
        while server.ctx.observer_count("/counter") == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(observation);
        if matches!(transport, Transport::Udp | Transport::Dtls) {
            server.counter.store(1, Ordering::SeqCst);
            assert_eq!(server.ctx.notify("/counter"), 1);
        }
        while server.ctx.observer_count("/counter") > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // The session goes on.
        let response = session.get("/hello").await.unwrap();
        assert_eq!(response.payload_str(), "hello world");
    })
    .await
    .expect("the server forgets the observer");
}

#[tokio::test]
async fn udp_a_dropped_observation_ends_at_the_server() {
    a_dropped_observation_ends_at_the_server(Transport::Udp).await;
}

#[tokio::test]
async fn tcp_a_dropped_observation_ends_at_the_server() {
    a_dropped_observation_ends_at_the_server(Transport::Tcp).await;
}

#[tokio::test]
async fn dtls_a_dropped_observation_ends_at_the_server() {
    a_dropped_observation_ends_at_the_server(Transport::Dtls).await;
}

#[tokio::test]
async fn tls_a_dropped_observation_ends_at_the_server() {
    a_dropped_observation_ends_at_the_server(Transport::Tls).await;
}

/// RFC 7641 §3.2: a notification that is not a 2.xx one ends the observation. The server
/// forgets the observer as it sends it, and the client hands it up as the last item of the
/// stream, which then ends.
async fn an_error_notification_ends_the_observation(transport: Transport) {
    let server = server().await;
    let (_ctx, session) = client(&server, transport).await;
    let gone = Arc::new(AtomicUsize::new(0));
    let seen = gone.clone();
    server
        .ctx
        .add_resource(Resource::new("/fleeting").observable().get(move |_, _| {
            match seen.load(Ordering::SeqCst) {
                0 => Response::content_text("here"),
                _ => Response::new(Status::NotFound),
            }
        }));
    timeout(LIMIT, async {
        let mut observation = session.observe("/fleeting").await.unwrap();
        assert!(observation.first().observe.is_some());
        gone.store(1, Ordering::SeqCst);
        assert_eq!(server.ctx.notify("/fleeting"), 1);
        let last = observation.next().await.expect("the 4.04 is handed up");
        assert_eq!(last.status, Status::NotFound);
        assert_eq!(observation.next().await, None, "and the stream ends");
        assert_eq!(server.ctx.observer_count("/fleeting"), 0);
    })
    .await
    .expect("the observation ends");
}

#[tokio::test]
async fn udp_an_error_notification_ends_the_observation() {
    an_error_notification_ends_the_observation(Transport::Udp).await;
}

#[tokio::test]
async fn tcp_an_error_notification_ends_the_observation() {
    an_error_notification_ends_the_observation(Transport::Tcp).await;
}

#[tokio::test]
async fn observations_end_with_the_session() {
    let server = server().await;
    let (ctx, session) = client(&server, Transport::Tcp).await;
    let mut observation = timeout(LIMIT, session.observe("/counter"))
        .await
        .unwrap()
        .unwrap();
    ctx.shutdown().await;
    assert_eq!(timeout(LIMIT, observation.next()).await.unwrap(), None);
    timeout(LIMIT, async {
        while server.ctx.observer_count("/counter") > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the server forgets the observer of a closed session");
}

/// CON PUT /store "dup" with this Message ID and 2-byte token, as a peer sends it (again and
/// again, for the duplicate tests).
fn con_put_store_dup(message_id: [u8; 2], token: [u8; 2]) -> Vec<u8> {
    let [mid_high, mid_low] = message_id;
    let mut bytes = vec![0x42, 0x03, mid_high, mid_low, token[0], token[1]];
    bytes.extend_from_slice(&[0xb5, b's', b't', b'o', b'r', b'e']); // Uri-Path "store"
    bytes.extend_from_slice(&[0xff, b'd', b'u', b'p']);
    bytes
}

#[tokio::test]
async fn udp_duplicate_con_is_processed_once_and_answered_from_the_cache() {
    let server = server().await;
    let socket = UdpSocket::bind(loopback()).await.unwrap();
    let bytes = con_put_store_dup([0x42, 0x42], [7, 7]);
    let mut answers = Vec::new();
    for _ in 0..3 {
        socket.send_to(&bytes, server.udp).await.unwrap();
        let mut buf = [0u8; 64];
        let n = timeout(LIMIT, socket.recv(&mut buf))
            .await
            .unwrap()
            .unwrap();
        answers.push(buf[..n].to_vec());
    }
    assert_eq!(
        server.puts.load(Ordering::SeqCst),
        1,
        "the handler ran once"
    );
    assert!(
        answers.iter().all(|a| a == &answers[0]),
        "same answer each time"
    );
    // ACK 2.04 with the MID and token of the request
    assert_eq!(&answers[0][..6], &[0x62, 0x44, 0x42, 0x42, 7, 7]);
}

#[tokio::test]
async fn dtls_duplicate_con_is_processed_once_and_answered_from_the_cache() {
    use support::configs::dtls_psk_client_config;
    let server = server().await;
    let conn = support::dtls::connect(server.dtls, dtls_psk_client_config(&psk()), LIMIT)
        .await
        .unwrap();
    let bytes = con_put_store_dup([0x43, 0x43], [8, 8]);
    let mut answers = Vec::new();
    for _ in 0..3 {
        support::dtls::send(&conn, &bytes).await;
        let mut buf = [0u8; 256];
        let n = timeout(LIMIT, support::dtls::recv(&conn, &mut buf))
            .await
            .unwrap()
            .unwrap();
        answers.push(buf[..n].to_vec());
    }
    assert_eq!(
        server.puts.load(Ordering::SeqCst),
        1,
        "the handler ran once"
    );
    assert!(
        answers.iter().all(|a| a == &answers[0]),
        "same answer each time"
    );
    assert_eq!(&answers[0][..6], &[0x62, 0x44, 0x43, 0x43, 8, 8]);
}

#[tokio::test]
async fn udp_request_to_a_silent_peer_fails_the_session_with_too_many_retries() {
    use coap_keepalive::{KeepaliveConfig, NackReason, TransmissionParams};
    let silent = UdpSocket::bind(loopback()).await.unwrap();
    let ctx = Context::new();
    ctx.set_keepalive_config(
        KeepaliveConfig::default().with_transmission(
            TransmissionParams::default()
                .with_ack_timeout(Duration::from_millis(20))
                .with_ack_random_factor(1.0)
                .with_max_retransmit(2),
        ),
    )
    .unwrap();
    let nacks = Arc::new(Mutex::new(Vec::new()));
    let n = nacks.clone();
    ctx.register_nack_handler(move |_, reason| n.lock().unwrap().push(reason));
    let session = ctx.connect_udp(silent.local_addr().unwrap()).await.unwrap();
    let outcome = timeout(LIMIT, session.get("/x")).await.unwrap();
    assert!(
        matches!(
            outcome,
            Err(Error::SessionFailed(NackReason::TooManyRetries))
        ),
        "{outcome:?}"
    );
    // three transmissions reached the silent peer: the request and two retransmissions
    let mut buf = [0u8; 64];
    for _ in 0..3 {
        timeout(LIMIT, silent.recv(&mut buf))
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(*nacks.lock().unwrap(), vec![NackReason::TooManyRetries]);
    assert!(ctx.sessions().is_empty());
}

#[tokio::test]
async fn tcp_request_timeout_is_a_typed_error_and_the_session_lives_on() {
    let server = server().await;
    add_never(&server.ctx);
    let (_ctx, session) = client(&server, Transport::Tcp).await;
    let outcome = session
        .request_with_timeout(Request::get("/never"), Duration::from_millis(100))
        .await;
    assert!(
        matches!(outcome, Err(ref e) if e.is_timeout()),
        "{outcome:?}"
    );
    assert_eq!(
        timeout(LIMIT, session.get("/hello"))
            .await
            .unwrap()
            .unwrap()
            .status,
        Status::Content
    );
}

async fn shutdown_lets_a_request_in_flight_finish(transport: Transport) {
    let server = server().await;
    let (ctx, session) = client(&server, transport).await;
    let slow = {
        let session = session.clone();
        tokio::spawn(async move { session.get("/slow").await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    // /slow answers after 150 ms; the shutdown gives in-flight requests most of 2 s.
    timeout(LIMIT, ctx.shutdown_within(Duration::from_secs(2)))
        .await
        .unwrap();
    let response = slow.await.unwrap().unwrap();
    assert_eq!(response.payload_str(), "worth the wait");
    assert!(ctx.sessions().is_empty());
}

#[tokio::test]
async fn udp_shutdown_lets_a_request_in_flight_finish() {
    shutdown_lets_a_request_in_flight_finish(Transport::Udp).await;
}

#[tokio::test]
async fn tcp_shutdown_lets_a_request_in_flight_finish() {
    shutdown_lets_a_request_in_flight_finish(Transport::Tcp).await;
}

#[tokio::test]
async fn shutdown_deadline_fails_an_unanswered_request_with_closed() {
    let server = server().await;
    add_never(&server.ctx);
    for transport in [Transport::Udp, Transport::Tcp] {
        let (ctx, session) = client(&server, transport).await;
        let never = {
            let session = session.clone();
            tokio::spawn(async move { session.get("/never").await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let started = std::time::Instant::now();
        ctx.shutdown_within(Duration::from_millis(300)).await;
        let outcome = timeout(LIMIT, never).await.unwrap().unwrap();
        assert!(
            matches!(outcome, Err(Error::Closed)),
            "{transport}: {outcome:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{transport}: bounded"
        );
    }
}

#[tokio::test]
async fn requests_on_a_failed_session_end_with_its_reason() {
    use coap_keepalive::NackReason;
    let server = server().await;
    add_never(&server.ctx);
    let (_ctx, session) = client(&server, Transport::Tcp).await;
    let never = {
        let session = session.clone();
        tokio::spawn(async move { session.get("/never").await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    // the server goes away: its connections close
    server.ctx.shutdown_within(Duration::from_millis(100)).await;
    let outcome = timeout(LIMIT, never).await.unwrap().unwrap();
    assert!(
        matches!(
            outcome,
            Err(Error::SessionFailed(NackReason::NotDeliverable)) | Err(Error::Closed)
        ),
        "{outcome:?}"
    );
    // and a new request on the ended session is refused at once
    let late = timeout(LIMIT, session.get("/hello")).await.unwrap();
    assert!(late.is_err(), "{late:?}");
}
