//! Block-wise transfer (RFC 7959) over real loopback sockets, our client against our server:
//! a 100 kB PUT to `/echo` and a GET of it back, byte-identical, over UDP, DTLS, TCP and TLS
//! (over TCP / TLS in BERT blocks, RFC 8323 §6, unless a block size is asked for); the handler
//! sees the body once, whole. Also the 4.13 a body above the maximum gets, and an observation
//! of a representation larger than a block (RFC 7959 §3.4), each notification handed up whole,
//! on all four transports.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coap_keepalive::credentials::{
    CertificateSet, ClientCredentials, PskCredentials, ServerCredentials,
};
use coap_keepalive::{Context, Endpoint, Error, Request, Resource, Response, Session, Status};
use support::bounded;

const LIMIT: Duration = Duration::from_secs(60);

/// A server with `/echo`: PUT stores the body (answering 2.04 without one), GET returns it.
/// Returns the context, its URI for `scheme`, and how often the PUT handler ran.
async fn echo_server(scheme: &str, max_body: usize) -> (Context, String, Arc<AtomicUsize>) {
    let ctx = Context::builder().max_body_size(max_body).build().unwrap();
    let stored = Arc::new(Mutex::new(Vec::new()));
    let puts = Arc::new(AtomicUsize::new(0));
    let (get, put, count) = (stored.clone(), stored, puts.clone());
    ctx.add_resource(
        Resource::new("/echo")
            .get(move |_, _| {
                Response::new(Status::Content).with_payload(get.lock().unwrap().clone())
            })
            .put(move |request, _| {
                count.fetch_add(1, Ordering::SeqCst);
                *put.lock().unwrap() = request.payload.clone();
                Response::new(Status::Changed)
            }),
    );
    let uri = listen(&ctx, scheme).await;
    (ctx, uri, puts)
}

/// The PSK of the DTLS listeners here.
fn psk() -> PskCredentials {
    PskCredentials::new("blockwise", "blocks of secrets")
}

thread_local! {
    /// One certificate set per test thread: generating one per listener would cost more than
    /// the transfers.
    static CERTS: CertificateSet = CertificateSet::generate().unwrap();
}

/// `ctx` listens on a free loopback port for `scheme`; returns its URI (without a path).
async fn listen(ctx: &Context, scheme: &str) -> String {
    let any = "127.0.0.1:0".parse().unwrap();
    let endpoint: Endpoint = match scheme {
        "coap" => ctx.listen_udp(any).await,
        "coap+tcp" => ctx.listen_tcp(any).await,
        "coaps" => ctx.listen_dtls(any, ServerCredentials::Psk(psk())).await,
        "coaps+tcp" => {
            let identity = CERTS.with(|c| c.server_identity());
            let credentials = ServerCredentials::Certificate {
                identity,
                client_ca_pem: None,
            };
            ctx.listen_tls(any, credentials).await
        }
        other => panic!("no listener for {other}"),
    }
    .unwrap();
    format!("{scheme}://{}", endpoint.local_addr)
}

/// `ctx` connects to `uri` with the credentials its scheme needs here.
async fn connect(ctx: &Context, uri: &str) -> Session {
    let credentials = if uri.starts_with("coaps+tcp://") {
        ClientCredentials::Certificate {
            ca_pem: Some(CERTS.with(|c| c.ca_cert_pem.clone())),
            identity: None,
            insecure: false,
        }
    } else if uri.starts_with("coaps://") {
        ClientCredentials::Psk(psk())
    } else {
        ClientCredentials::None
    };
    ctx.connect_with(uri, &credentials).await.unwrap()
}

fn body(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 253) as u8).collect()
}

async fn put_then_get(scheme: &str, request_block_size: Option<usize>) {
    bounded(LIMIT, async {
        let (server, uri, puts) = echo_server(scheme, 1 << 20).await;
        let client = Context::new();
        let session = connect(&client, &uri).await;
        let sent = body(100_000);
        let mut put = Request::put("/echo", sent.clone());
        let mut get = Request::get("/echo");
        if let Some(size) = request_block_size {
            put = put.with_block_size(size);
            get = get.with_block_size(size);
        }
        let changed = session.request(put).await.unwrap();
        assert_eq!(changed.status, Status::Changed);
        assert_eq!(
            puts.load(Ordering::SeqCst),
            1,
            "the handler saw the body once"
        );
        let back = session.request(get).await.unwrap();
        assert_eq!(back.status, Status::Content);
        assert!(
            back.payload == sent,
            "{} bytes back, not identical",
            back.payload.len()
        );
        client.shutdown().await;
        server.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn udp_100_kb_put_then_get_is_byte_identical() {
    put_then_get("coap", None).await;
}

#[tokio::test]
async fn udp_100_kb_in_256_byte_blocks() {
    put_then_get("coap", Some(256)).await;
}

#[tokio::test]
async fn tcp_100_kb_put_then_get_is_byte_identical() {
    put_then_get("coap+tcp", None).await;
}

#[tokio::test]
async fn tcp_100_kb_in_256_byte_blocks() {
    put_then_get("coap+tcp", Some(256)).await;
}

#[tokio::test]
async fn dtls_100_kb_put_then_get_is_byte_identical() {
    put_then_get("coaps", None).await;
}

#[tokio::test]
async fn tls_100_kb_put_then_get_is_byte_identical() {
    put_then_get("coaps+tcp", None).await;
}

#[tokio::test]
async fn tls_100_kb_in_256_byte_blocks() {
    put_then_get("coaps+tcp", Some(256)).await;
}

#[tokio::test]
async fn a_body_above_the_maximum_gets_4_13_on_every_transport() {
    for scheme in ["coap", "coap+tcp", "coaps", "coaps+tcp"] {
        bounded(LIMIT, async {
            let (server, uri, puts) = echo_server(scheme, 10_000).await;
            let client = Context::new();
            let session = connect(&client, &uri).await;
            let answer = session.put("/echo", body(20_000)).await.unwrap();
            assert_eq!(answer.status, Status::RequestEntityTooLarge, "{scheme}");
            assert_eq!(puts.load(Ordering::SeqCst), 0);
            // The session is unharmed: a body within the limit goes through.
            let answer = session.put("/echo", body(9_000)).await.unwrap();
            assert_eq!(answer.status, Status::Changed, "{scheme}");
            client.shutdown().await;
            server.shutdown().await;
        })
        .await;
    }
}

#[tokio::test]
async fn a_client_refuses_a_response_above_its_maximum() {
    bounded(LIMIT, async {
        let (server, uri, _) = echo_server("coap", 1 << 20).await;
        let big = Context::new();
        let session = big.connect(&uri).await.unwrap();
        session.put("/echo", body(50_000)).await.unwrap();
        let small = Context::builder().max_body_size(20_000).build().unwrap();
        let session = small.connect(&uri).await.unwrap();
        let result = session.get("/echo").await;
        assert!(
            matches!(&result, Err(Error::Protocol(why)) if why.contains("maximum body size")),
            "{result:?}"
        );
        big.shutdown().await;
        small.shutdown().await;
        server.shutdown().await;
    })
    .await
}

/// Version `n` of the observable representation: 3000 bytes, more than one block.
fn representation(n: u8) -> Vec<u8> {
    (0..3000u32).map(|i| (i % 251) as u8 ^ n).collect()
}

/// RFC 7959 §3.4: an observable resource whose 3000-byte representation goes in blocks, notified
/// twice. The client's Observation yields the first response and both notifications whole (the
/// core fetched their later blocks), and the observation lives on.
async fn observe_in_blocks(scheme: &str) {
    bounded(LIMIT, async {
        let server = Context::new();
        let version = Arc::new(AtomicUsize::new(0));
        let current = version.clone();
        server.add_resource(Resource::new("/big").observable().get(move |_, _| {
            let n = current.load(Ordering::SeqCst) as u8;
            Response::new(Status::Content).with_payload(representation(n))
        }));
        let uri = listen(&server, scheme).await;
        // Over TCP a client announcing the base Max-Message-Size gets 3000 bytes in blocks.
        let client = Context::builder().max_message_size(1152).build().unwrap();
        let session = connect(&client, &uri).await;
        let mut observation = session.observe("/big").await.unwrap();
        assert!(
            observation.first().observe.is_some(),
            "{scheme}: registered"
        );
        assert!(
            observation.first().payload == representation(0),
            "{scheme}: the first response whole"
        );
        for n in 1..=2u8 {
            version.store(usize::from(n), Ordering::SeqCst);
            assert_eq!(server.notify("/big"), 1, "{scheme}: one observer");
            let notification = observation.next().await.expect("a notification");
            assert!(notification.observe.is_some(), "{scheme}");
            assert!(
                notification.payload == representation(n),
                "{scheme}: notification {n} has {} bytes, not version {n} whole",
                notification.payload.len()
            );
        }
        assert_eq!(server.observer_count("/big"), 1, "{scheme}: still observed");
        client.shutdown().await;
        server.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn udp_notifications_in_blocks_arrive_whole() {
    observe_in_blocks("coap").await;
}

#[tokio::test]
async fn tcp_notifications_in_blocks_arrive_whole() {
    observe_in_blocks("coap+tcp").await;
}

#[tokio::test]
async fn dtls_notifications_in_blocks_arrive_whole() {
    observe_in_blocks("coaps").await;
}

#[tokio::test]
async fn tls_notifications_in_blocks_arrive_whole() {
    observe_in_blocks("coaps+tcp").await;
}
