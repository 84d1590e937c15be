//! Options both ways between our client and our server on loopback, over UDP and TCP: a
//! handler reads Uri-Query, Accept, ETag, If-Match and an unregistered option, and answers
//! with ETag, Max-Age, Location-Path, Content-Format and options of its own, which the client
//! sees as sent.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coap_keepalive::content_format::{JSON, TEXT_PLAIN};
use coap_keepalive::option::{ETAG, LOCATION_PATH, MAX_AGE};
use coap_keepalive::{
    Context, ETag, Error, IfMatch, OptionError, Request, Resource, Response, Session, Status,
};
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(10);

/// An elective option nobody registered: carried opaque, both ways.
const TRACE: u16 = 65_000;

/// What the handlers saw of the last request.
#[derive(Debug, Default, Clone)]
struct Seen {
    query: Vec<String>,
    accept: Option<u16>,
    etags: Vec<ETag>,
    if_match: Vec<IfMatch>,
    trace: Option<Vec<u8>>,
}

struct Server {
    ctx: Context,
    udp: SocketAddr,
    tcp: SocketAddr,
    seen: Arc<Mutex<Seen>>,
    plain_calls: Arc<AtomicUsize>,
}

/// `/items`: conditional; GET answers 2.03 Valid to the current ETag, else the JSON
/// representation; POST creates `/items/7`; PUT applies only under a matching If-Match.
/// `/plain`: not conditional. `/broken`: a handler that sets a 9-byte ETag by hand.
async fn server() -> Server {
    let ctx = Context::new();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let version = Arc::new(Mutex::new(1u64));
    let record = {
        let seen = seen.clone();
        move |request: &Request| {
            *seen.lock().unwrap() = Seen {
                query: request.query.clone(),
                accept: request.accept,
                etags: request.etags(),
                if_match: request.if_match(),
                trace: request.option(TRACE).map(|v| v.into_owned()),
            }
        }
    };
    let (get_record, post_record, put_record) = (record.clone(), record.clone(), record);
    let (get_version, put_version) = (version.clone(), version);
    ctx.add_resource(
        Resource::new("/items")
            .conditional()
            .get(move |request, _| {
                get_record(request);
                let current = ETag::from_u64(*get_version.lock().unwrap());
                let mut response = if request.etags().contains(&current) {
                    Response::new(Status::Valid)
                } else {
                    Response::new(Status::Content)
                        .with_payload(r#"{"items":[7]}"#)
                        .with_content_format(request.accept.unwrap_or(JSON))
                };
                response = response.with_etag(current).with_max_age(30);
                if let Some(trace) = request.option(TRACE) {
                    response.add_option(TRACE, trace.into_owned()).unwrap();
                }
                response
            })
            .post(move |request, _| {
                post_record(request);
                Response::new(Status::Created)
                    .with_location_path("/items/7")
                    .with_location_query("rev=1")
                    .with_etag(ETag::from_u64(0x5a01))
            })
            .put(move |request, _| {
                put_record(request);
                let mut version = put_version.lock().unwrap();
                let current = ETag::from_u64(*version);
                let conditions = request.if_match();
                if !conditions.iter().all(|c| c.matches(true, Some(current))) {
                    return Response::new(Status::PreconditionFailed);
                }
                *version += 1;
                Response::new(Status::Changed).with_etag(ETag::from_u64(*version))
            }),
    );
    let plain_calls = Arc::new(AtomicUsize::new(0));
    let calls = plain_calls.clone();
    ctx.add_resource(Resource::new("/plain").put(move |_, _| {
        calls.fetch_add(1, Ordering::SeqCst);
        Response::new(Status::Changed)
    }));
    ctx.add_resource(Resource::new("/broken").get(|_, _| {
        let mut response = Response::content_text("x");
        // add_option checks the value against the registry: an ETag is 1 to 8 bytes.
        assert!(response.add_option(ETAG, vec![0; 9]).is_err());
        // A Location-Path segment longer than 255 bytes gets past the infallible builder.
        response.with_location_path(&"p".repeat(300))
    }));
    let any = ([127, 0, 0, 1], 0).into();
    let udp = ctx.listen_udp(any).await.unwrap().local_addr;
    let tcp = ctx.listen_tcp(any).await.unwrap().local_addr;
    Server {
        ctx,
        udp,
        tcp,
        seen,
        plain_calls,
    }
}

async fn request(session: &Session, request: Request) -> Response {
    timeout(LIMIT, session.request(request))
        .await
        .expect("in time")
        .expect("a response")
}

/// The whole conversation, over one session.
async fn converse(server: &Server, session: &Session) {
    // GET with Uri-Query, Accept, an ETag the server no longer has, and the opaque option.
    let get = Request::get("/items")
        .with_query("limit=5")
        .with_query("sort=id")
        .with_accept(TEXT_PLAIN)
        .with_etag(ETag::from_u64(0))
        .with_option(TRACE, [0xbe, 0xef])
        .unwrap();
    let response = request(session, get).await;
    let seen = server.seen.lock().unwrap().clone();
    assert_eq!(seen.query, ["limit=5", "sort=id"]);
    assert_eq!(seen.accept, Some(TEXT_PLAIN));
    assert_eq!(seen.etags, [ETag::from_u64(0)]);
    assert_eq!(seen.trace.as_deref(), Some(&[0xbe, 0xef][..]));
    assert_eq!(response.status, Status::Content);
    assert_eq!(response.content_format, Some(TEXT_PLAIN));
    assert_eq!(response.etag(), Some(ETag::from_u64(1)));
    assert_eq!(response.max_age, Some(30));
    assert_eq!(response.option(MAX_AGE).as_deref(), Some(&[30][..]));
    assert_eq!(response.option(TRACE).as_deref(), Some(&[0xbe, 0xef][..]));
    let numbers: Vec<u16> = response.all_options().map(|(n, _)| n).collect();
    assert_eq!(
        numbers,
        [4, 12, 14, TRACE],
        "ETag, Content-Format, Max-Age, the opaque one"
    );

    // The same GET naming the current ETag: 2.03 Valid, no body.
    let valid = request(session, Request::get("/items").with_etag(ETag::from_u64(1))).await;
    assert_eq!(valid.status, Status::Valid);
    assert!(valid.payload.is_empty());
    assert_eq!(valid.etag(), Some(ETag::from_u64(1)));

    // POST: 2.01 Created with Location-Path, Location-Query and ETag.
    let created = request(session, Request::post("/items", "{}")).await;
    assert_eq!(created.status, Status::Created);
    assert_eq!(created.location_path(), ["items", "7"]);
    assert_eq!(created.options(LOCATION_PATH).count(), 2);
    assert_eq!(created.location_query(), ["rev=1"]);
    assert_eq!(created.etag(), Some(ETag::from_u64(0x5a01)));
    assert_eq!(created.max_age_or_default(), 60, "no Max-Age: 60 s");

    // PUT under If-Match: a stale ETag fails the precondition, the current one applies.
    let stale = Request::put("/items", "a").with_if_match(IfMatch::ETag(ETag::from_u64(9)));
    assert_eq!(
        request(session, stale).await.status,
        Status::PreconditionFailed
    );
    assert_eq!(
        server.seen.lock().unwrap().if_match,
        [IfMatch::ETag(ETag::from_u64(9))]
    );
    let current = Request::put("/items", "b").with_if_match(IfMatch::ETag(ETag::from_u64(1)));
    let changed = request(session, current).await;
    assert_eq!(changed.status, Status::Changed);
    assert_eq!(changed.etag(), Some(ETag::from_u64(2)));
    // An empty If-Match: the resource exists, whatever its version.
    let any = Request::put("/items", "c").with_if_match(IfMatch::Exists);
    assert_eq!(request(session, any).await.status, Status::Changed);
}

#[tokio::test]
async fn handlers_read_and_set_options_over_udp_and_tcp() {
    for tcp in [false, true] {
        // A fresh server for each: the conversation changes /items's version.
        let server = server().await;
        let uri = match tcp {
            false => format!("coap://{}", server.udp),
            true => format!("coap+tcp://{}", server.tcp),
        };
        let client = Context::new();
        let session = timeout(LIMIT, client.connect(&uri)).await.unwrap().unwrap();
        converse(&server, &session).await;
        client.shutdown().await;
        server.ctx.shutdown().await;
    }
}

#[tokio::test]
async fn a_conditional_request_to_a_resource_that_does_not_evaluate_it_gets_4_02() {
    let server = server().await;
    let client = Context::new();
    for uri in [
        format!("coap://{}", server.udp),
        format!("coap+tcp://{}", server.tcp),
    ] {
        let session = timeout(LIMIT, client.connect(&uri)).await.unwrap().unwrap();
        let put = Request::put("/plain", "x").with_if_match(IfMatch::Exists);
        let refused = request(&session, put).await;
        assert_eq!(refused.status, Status::BadOption);
        assert_eq!(
            refused.payload_str(),
            "option 1 (If-Match): this resource does not evaluate conditional requests"
        );
        let put = Request::put("/plain", "x").with_if_none_match();
        assert_eq!(request(&session, put).await.status, Status::BadOption);
        assert_eq!(
            server.plain_calls.load(Ordering::SeqCst),
            0,
            "no handler ran"
        );
        let plain = request(&session, Request::put("/plain", "x")).await;
        assert_eq!(plain.status, Status::Changed);
        assert_eq!(server.plain_calls.load(Ordering::SeqCst), 1);
        server.plain_calls.store(0, Ordering::SeqCst);
    }
    client.shutdown().await;
    server.ctx.shutdown().await;
}

#[tokio::test]
async fn invalid_options_never_reach_the_wire() {
    let server = server().await;
    let client = Context::new();
    let session = timeout(LIMIT, client.connect(&format!("coap://{}", server.udp)))
        .await
        .unwrap()
        .unwrap();
    // Ours: a Uri-Query longer than 255 bytes, set through the public field.
    let mut long = Request::get("/items");
    long.query.push("q".repeat(256));
    let refused = timeout(LIMIT, session.request(long)).await.unwrap();
    assert!(
        matches!(
            refused,
            Err(Error::InvalidOption(OptionError::Length { number: 15, .. }))
        ),
        "{refused:?}"
    );
    // A handler's: the server answers 5.00 instead, naming the option.
    let broken = request(&session, Request::get("/broken")).await;
    assert_eq!(broken.status, Status::InternalServerError);
    assert!(
        broken.payload_str().contains("option 8 (Location-Path)"),
        "{}",
        broken.payload_str()
    );
    client.shutdown().await;
    server.ctx.shutdown().await;
}
