//! BERT (RFC 8323 §6) against libcoap 4.3.1 over TCP, both directions: both CSMs carry
//! Block-Wise-Transfer with a Max-Message-Size above 1152, so a body larger than the receiver's
//! Max-Message-Size moves in BERT blocks (SZX 7, 63 × 1024 bytes per message at our default of
//! 65536). Judged by libcoap's `-v 7` log (it names BERT blocks) and by the bytes, compared.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use coap_keepalive::{Context, Resource, Response, Status};
use support::bounded;
use support::libcoap::{Build, LibcoapProcess, LibcoapServer};

const TEST_LIMIT: Duration = Duration::from_secs(40);
const CLIENT_RUN: Duration = Duration::from_secs(15);

/// 300 kB: more than our Max-Message-Size (65536), less than libcoap's (8388864).
fn body() -> Vec<u8> {
    (0..300_000usize).map(|i| (i * 31 % 253) as u8).collect()
}

/// coap-client (no `-b`: it picks BERT itself when both CSMs offer it) PUTs 300 kB to our
/// `/echo` over TCP: it comes as BERT Block1 blocks, each answered 2.31 with a BERT echo, and
/// the handler stores it whole; the GET back is whole (it fits libcoap's Max-Message-Size).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coap_client_uploads_to_us_in_bert_blocks() {
    bounded(TEST_LIMIT, async {
        let ctx = Context::new();
        let stored = Arc::new(Mutex::new(Vec::new()));
        let (get, put) = (stored.clone(), stored.clone());
        ctx.add_resource(
            Resource::new("/echo")
                .get(move |_, _| {
                    Response::new(Status::Content).with_payload(get.lock().unwrap().clone())
                })
                .put(move |request, _| {
                    *put.lock().unwrap() = request.payload.clone();
                    Response::new(Status::Changed)
                }),
        );
        let endpoint = ctx
            .listen_tcp("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let uri = format!("coap+tcp://{}/echo", endpoint.local_addr);
        let dir = tempfile::tempdir().unwrap();
        let (file, out) = (dir.path().join("body.bin"), dir.path().join("back.bin"));
        let sent = body();
        std::fs::write(&file, &sent).unwrap();
        let (file, out) = (file.to_str().unwrap(), out.to_str().unwrap());

        let client = Build::Notls.client();
        let mut put =
            LibcoapProcess::spawn(&client, ["-v", "7", "-m", "put", "-f", file, uri.as_str()]);
        put.wait_exit(CLIENT_RUN).await;
        let log = put.log();
        assert!(
            log.contains("Block1:0/M/BERT") && log.contains("c:2.31"),
            "no BERT upload\n{}",
            put.report()
        );
        assert!(
            *stored.lock().unwrap() == sent,
            "stored {} bytes, not the body\n{}",
            stored.lock().unwrap().len(),
            put.report()
        );
        let mut get = LibcoapProcess::spawn(&client, ["-m", "get", "-o", out, uri.as_str()]);
        get.wait_exit(CLIENT_RUN).await;
        let back = std::fs::read(out).unwrap_or_default();
        assert!(back == sent, "{} bytes back\n{}", back.len(), get.report());
        ctx.shutdown().await;
    })
    .await
}

/// Our client PUTs 300 kB to coap-server (`-d 10` creates the resource) over TCP, whole, and
/// GETs it back: coap-server sends BERT Block2 blocks sized to our Max-Message-Size, and our
/// client asks for the next ones in BERT and hands up the body once, identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coap_server_sends_us_bert_blocks() {
    bounded(TEST_LIMIT, async {
        let mut server = LibcoapServer::start(Build::Notls, &["-d", "10", "-v", "7"]).await;
        let ctx = Context::new();
        let session = ctx
            .connect(&format!("coap+tcp://{}", server.addr()))
            .await
            .unwrap();
        let sent = body();
        let created = session.put("/big", sent.clone()).await.unwrap();
        assert!(created.is_success(), "{created:?}\n{}", server.report());
        let back = session.get("/big").await.unwrap();
        assert!(
            back.payload == sent,
            "{} bytes back\n{}",
            back.payload.len(),
            server.report()
        );
        let log = server.process().log();
        assert!(
            log.contains("Block2:0/M/BERT") && log.contains("Block2:63/_/BERT"),
            "no BERT download\n{}",
            server.report()
        );
        ctx.shutdown().await;
    })
    .await
}
