//! Hostile block-wise input (RFC 7959) over real UDP sockets and TCP connections: blocks out of
//! order, with gaps, an endless Block1 stream (over TCP also in BERT blocks, RFC 8323 §6), and
//! many peers opening partial uploads at once. Each gets the RFC's
//! answer, the memory the server holds for peers stays within its budget (the peak is printed),
//! and the server keeps serving everyone else.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use coap_keepalive::proto::blockwise::BlockValue;
use coap_keepalive::proto::wire::tcp::{Frame, FrameDecoder};
use coap_keepalive::{Context, Resource, Response, Status};
use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;

/// 2.31 Continue, 2.04 Changed, 4.08 Request Entity Incomplete, 4.13 Request Entity Too Large,
/// 5.03 Service Unavailable: the codes the server answers blocks with.
const CONTINUE: u8 = 0x5f;
const CHANGED: u8 = 0x44;
const INCOMPLETE: u8 = 0x88;
const TOO_LARGE: u8 = 0x8d;
const UNAVAILABLE: u8 = 0xa3;

/// The largest body the server under test takes: small, so that limits are reached quickly.
const MAX_BODY: usize = 4096;

/// A server whose `/store` takes PUTs, counting the bodies its handler saw whole.
async fn server(block_size: usize) -> (Context, SocketAddr, Arc<AtomicUsize>) {
    let ctx = Context::builder()
        .max_body_size(MAX_BODY)
        .block_size(block_size)
        .build()
        .unwrap();
    let bodies = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&bodies);
    ctx.add_resource(Resource::new("/store").put(move |_, _| {
        seen.fetch_add(1, Ordering::SeqCst);
        Response::new(Status::Changed)
    }));
    let endpoint = ctx
        .listen_udp("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    (ctx, endpoint.local_addr, bodies)
}

/// A client socket connected to the server.
async fn client(server: SocketAddr) -> UdpSocket {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.connect(server).await.unwrap();
    socket
}

/// One Confirmable PUT carrying block `num` of an upload to `path`.
fn block(mid: u16, token: &[u8], path: &str, num: u32, more: bool, szx: u8) -> Vec<u8> {
    let mut packet = Packet::new();
    packet.header.set_type(MessageType::Confirmable);
    packet.header.code = MessageClass::Request(RequestType::Put);
    packet.header.message_id = mid;
    packet.set_token(token.to_vec());
    packet.add_option(CoapOption::UriPath, path.as_bytes().to_vec());
    packet.add_option(CoapOption::Block1, BlockValue::new(num, more, szx).encode());
    packet.payload = vec![b'x'; 16 << szx];
    packet.to_bytes().unwrap()
}

/// Sends `datagram` and returns the answer's code and the answer, within a second.
async fn exchange(socket: &UdpSocket, datagram: &[u8]) -> (u8, Packet) {
    socket.send(datagram).await.unwrap();
    let mut buf = vec![0u8; 2048];
    let len = tokio::time::timeout(Duration::from_secs(1), socket.recv(&mut buf))
        .await
        .expect("an answer within 1 s")
        .unwrap();
    let packet = Packet::from_bytes(&buf[..len]).unwrap();
    (buf[1], packet)
}

#[tokio::test]
async fn a_block_without_the_first_or_after_a_gap_gets_4_08() {
    let (ctx, addr, bodies) = server(64).await;
    let socket = client(addr).await;
    // Block 1 with no block 0 before it.
    let (code, _) = exchange(&socket, &block(1, b"a", "store", 1, true, 2)).await;
    assert_eq!(code, INCOMPLETE);
    // Block 0, then block 2: block 1 is missing.
    let (code, _) = exchange(&socket, &block(2, b"b", "store", 0, true, 2)).await;
    assert_eq!(code, CONTINUE);
    let (code, _) = exchange(&socket, &block(3, b"b", "store", 2, false, 2)).await;
    assert_eq!(code, INCOMPLETE);
    assert_eq!(
        bodies.load(Ordering::SeqCst),
        0,
        "no fragment reached the handler"
    );
    // The server still serves a whole upload on the same session.
    let (code, _) = exchange(&socket, &block(4, b"c", "store", 0, true, 2)).await;
    assert_eq!(code, CONTINUE);
    let (code, _) = exchange(&socket, &block(5, b"c", "store", 1, false, 2)).await;
    assert_eq!(code, CHANGED);
    assert_eq!(bodies.load(Ordering::SeqCst), 1);
    println!("peak held for peers: {} bytes", ctx.body_memory().peak);
    ctx.shutdown().await;
}

#[tokio::test]
async fn an_endless_block1_stream_gets_4_13_with_size1_at_the_maximum() {
    let (ctx, addr, bodies) = server(64).await;
    let socket = client(addr).await;
    let mut accepted = 0usize;
    let mut answer = None;
    // 64-byte blocks, never a last one: the server must stop it at MAX_BODY.
    for num in 0..1000u32 {
        let (code, packet) =
            exchange(&socket, &block(num as u16, b"e", "store", num, true, 2)).await;
        if code == CONTINUE {
            accepted += 64;
            continue;
        }
        answer = Some((code, packet));
        break;
    }
    let (code, packet) = answer.expect("the stream was cut off");
    assert_eq!(code, TOO_LARGE);
    let size1 = packet
        .get_option(CoapOption::Size1)
        .and_then(|values| values.front().cloned())
        .expect("4.13 carries Size1");
    let size1 = size1.iter().fold(0usize, |n, b| n << 8 | usize::from(*b));
    assert_eq!(size1, MAX_BODY, "Size1 names the largest body taken");
    assert!(accepted <= MAX_BODY, "took {accepted} bytes");
    assert_eq!(bodies.load(Ordering::SeqCst), 0);
    let memory = ctx.body_memory();
    println!(
        "endless stream: {accepted} bytes taken before 4.13; peak held {} of {} bytes",
        memory.peak, memory.limit
    );
    assert!(memory.peak <= MAX_BODY, "peak {} bytes", memory.peak);
    ctx.shutdown().await;
}

#[tokio::test]
async fn many_partial_uploads_stay_within_the_budget_and_others_are_still_served() {
    // 1024-byte blocks: the budget (16 maximum bodies, 64 KiB) holds 64 first blocks.
    let (ctx, addr, bodies) = server(1024).await;
    let limit = ctx.body_memory().limit;
    assert_eq!(limit, 16 * MAX_BODY);
    let mut sockets = Vec::new();
    for _ in 0..30 {
        sockets.push(client(addr).await);
    }
    let (mut continued, mut unavailable) = (0, 0);
    // Each peer opens 6 uploads (to 6 paths, so 6 transfers) and finishes none: 180 partial
    // transfers asked for, against 4 per session and 64 in all.
    for (i, socket) in sockets.iter().enumerate() {
        for upload in 0..6u16 {
            let path = format!("store{upload}");
            let token = [i as u8, upload as u8];
            let (code, _) = exchange(socket, &block(upload, &token, &path, 0, true, 6)).await;
            match code {
                CONTINUE => continued += 1,
                UNAVAILABLE => unavailable += 1,
                other => panic!("block answered 0x{other:02x}"),
            }
        }
    }
    let memory = ctx.body_memory();
    println!(
        "180 partial uploads from 30 peers: {continued} continued, {unavailable} told 5.03; \
         held {} bytes, peak {} of {} bytes",
        memory.held, memory.peak, memory.limit
    );
    assert!(memory.peak <= memory.limit);
    assert!(
        memory.held <= 30 * 4 * 1024,
        "at most 4 partial uploads per session"
    );
    assert!(unavailable > 0, "the budget refused some");
    // A newcomer whose PUT fits one message is still served: it needs nothing held.
    let socket = client(addr).await;
    let mut put = Packet::new();
    put.header.set_type(MessageType::Confirmable);
    put.header.code = MessageClass::Request(RequestType::Put);
    put.header.message_id = 1;
    put.set_token(b"n".to_vec());
    put.add_option(CoapOption::UriPath, b"store".to_vec());
    put.payload = b"small".to_vec();
    let (code, _) = exchange(&socket, &put.to_bytes().unwrap()).await;
    assert_eq!(code, CHANGED);
    assert_eq!(bodies.load(Ordering::SeqCst), 1);
    ctx.shutdown().await;
}

// ---- over TCP (RFC 8323): the same limits on a stream, BERT included -----------------------

/// Block-Wise-Transfer, the CSM option (RFC 8323 §5.3.2) that offers BERT.
const BLOCK_WISE_TRANSFER: u16 = 4;

/// A raw RFC 8323 connection to a TCP listener of a server like `server`'s: our CSM sent (with
/// Block-Wise-Transfer when `bert`), the server's read.
struct RawTcp {
    stream: tokio::net::TcpStream,
    decoder: FrameDecoder,
}

impl RawTcp {
    async fn open(addr: SocketAddr, bert: bool) -> RawTcp {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut raw = RawTcp {
            stream,
            decoder: FrameDecoder::new(1 << 20),
        };
        let mut csm = Frame::new(0xe1);
        if bert {
            csm.options.push((BLOCK_WISE_TRANSFER, Vec::new()));
        }
        raw.send(&csm).await;
        assert_eq!(raw.frame().await.code, 0xe1, "the server's CSM");
        raw
    }

    async fn send(&mut self, frame: &Frame) {
        self.stream.write_all(&frame.encode()).await.unwrap();
    }

    async fn frame(&mut self) -> Frame {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(frame) = self.decoder.next_frame().unwrap() {
                return frame;
            }
            let n = tokio::time::timeout(Duration::from_secs(5), self.stream.read(&mut buf))
                .await
                .expect("an answer within 5 s")
                .unwrap();
            assert!(n > 0, "the server closed the connection");
            self.decoder.push(&buf[..n]);
        }
    }

    /// PUT block `num` of an upload to `/store` under `token`; the answer.
    async fn block(&mut self, token: &[u8], num: u32, more: bool, szx: u8, len: usize) -> Frame {
        let mut put = Frame::new(0x03);
        put.token = token.to_vec();
        put.options.push((11, b"store".to_vec()));
        put.options
            .push((27, BlockValue::new(num, more, szx).encode()));
        put.payload = vec![b'b'; len];
        self.send(&put).await;
        self.frame().await
    }
}

/// A `server` with a TCP listener as well; its address.
async fn tcp_server(block_size: usize) -> (Context, SocketAddr, Arc<AtomicUsize>) {
    let (ctx, _, bodies) = server(block_size).await;
    let endpoint = ctx
        .listen_tcp("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    (ctx, endpoint.local_addr, bodies)
}

fn size1_of(frame: &Frame) -> usize {
    let value = frame
        .options
        .iter()
        .find(|(number, _)| *number == 60)
        .map(|(_, value)| value.clone())
        .expect("4.13 carries Size1");
    value.iter().fold(0usize, |n, b| n << 8 | usize::from(*b))
}

#[tokio::test]
async fn tcp_an_endless_block1_stream_gets_4_13_with_size1_at_the_maximum() {
    let (ctx, addr, bodies) = tcp_server(64).await;
    let mut raw = RawTcp::open(addr, false).await;
    let mut accepted = 0usize;
    let mut last = None;
    for num in 0..1000u32 {
        let answer = raw.block(b"t", num, true, 2, 64).await;
        if answer.code == CONTINUE {
            accepted += 64;
            continue;
        }
        last = Some(answer);
        break;
    }
    let answer = last.expect("the stream was cut off");
    assert_eq!(answer.code, TOO_LARGE);
    assert_eq!(size1_of(&answer), MAX_BODY);
    assert!(accepted <= MAX_BODY, "took {accepted} bytes");
    assert_eq!(bodies.load(Ordering::SeqCst), 0);
    let memory = ctx.body_memory();
    println!(
        "tcp endless stream: {accepted} bytes taken before 4.13; peak held {} of {} bytes",
        memory.peak, memory.limit
    );
    assert!(memory.peak <= MAX_BODY, "peak {} bytes", memory.peak);
    // The connection lives on: a whole small body is taken.
    let answer = raw.block(b"u", 0, false, 2, 10).await;
    assert_eq!(answer.code, CHANGED);
    ctx.shutdown().await;
}

#[tokio::test]
async fn tcp_an_endless_bert_stream_gets_4_13_and_a_gap_gets_4_08() {
    let (ctx, addr, bodies) = tcp_server(1024).await;
    let mut raw = RawTcp::open(addr, true).await;
    // BERT blocks of two 1024-byte units: NUM counts units (RFC 8323 §6).
    let first = raw.block(b"b", 0, true, 7, 2048).await;
    assert_eq!(first.code, CONTINUE);
    let second = raw.block(b"b", 2, true, 7, 2048).await;
    assert_eq!(
        second.code, CONTINUE,
        "4096 bytes: the maximum, not above it"
    );
    let third = raw.block(b"b", 4, true, 7, 2048).await;
    assert_eq!(third.code, TOO_LARGE, "6144 bytes are above the maximum");
    assert_eq!(size1_of(&third), MAX_BODY);

    // A gap: unit 4 after unit 0 (whose block held two units) of a new upload.
    let start = raw.block(b"g", 0, true, 7, 2048).await;
    assert_eq!(start.code, CONTINUE);
    let gap = raw.block(b"g", 4, true, 7, 1024).await;
    assert_eq!(gap.code, INCOMPLETE);
    assert_eq!(bodies.load(Ordering::SeqCst), 0);
    let memory = ctx.body_memory();
    println!(
        "tcp BERT: peak held {} of {} bytes",
        memory.peak, memory.limit
    );
    assert!(memory.peak <= MAX_BODY, "peak {} bytes", memory.peak);
    ctx.shutdown().await;
}
