//! Bounds that keep a server alive under hostile input: a full UDP session table, a TCP peer
//! that never sends its CSM, and a slow-loris peer that never finishes a message.

use std::net::SocketAddr;
use std::time::Duration;

use coap_keepalive::{Context, ContextSettings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(10);

fn loopback() -> SocketAddr {
    ([127, 0, 0, 1], 0).into()
}

async fn ping(socket: &UdpSocket, server: SocketAddr, mid: u16) -> Option<Vec<u8>> {
    let m = mid.to_be_bytes();
    socket
        .send_to(&[0x40, 0x00, m[0], m[1]], server)
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    match timeout(Duration::from_millis(300), socket.recv(&mut buf)).await {
        Ok(Ok(n)) => Some(buf[..n].to_vec()),
        _ => None,
    }
}

#[tokio::test]
async fn udp_session_table_is_bounded_and_established_sessions_survive_a_flood() {
    let mut settings = ContextSettings::default();
    settings.max_sessions = 50;
    let ctx = Context::with_settings(settings);
    let server = ctx.listen_udp(loopback()).await.unwrap().local_addr;

    // An established peer: heard from twice.
    let regular = UdpSocket::bind(loopback()).await.unwrap();
    assert!(ping(&regular, server, 1).await.is_some());
    assert!(ping(&regular, server, 2).await.is_some());

    // A flood from 300 source ports, one datagram each.
    let mut flood = Vec::new();
    for i in 0..300u16 {
        let socket = UdpSocket::bind(loopback()).await.unwrap();
        let m = i.to_be_bytes();
        socket
            .send_to(&[0x40, 0x00, m[0], m[1]], server)
            .await
            .unwrap();
        flood.push(socket);
    }
    // Let the server drain its queue.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        ctx.sessions().len() <= 50,
        "table bounded: {} sessions",
        ctx.sessions().len()
    );
    // The established session is still there and still answered.
    assert_eq!(
        ping(&regular, server, 3).await,
        Some(vec![0x70, 0x00, 0x00, 0x03])
    );
    assert!(ctx
        .sessions()
        .iter()
        .any(|s| s.peer() == regular.local_addr().unwrap()));
}

fn short_input_timeout() -> Context {
    let mut settings = ContextSettings::default();
    settings.input_timeout = Duration::from_millis(300);
    Context::with_settings(settings)
}

/// The codes of the frames in `bytes`.
fn frame_codes(bytes: &[u8]) -> Vec<u8> {
    let mut decoder = coap_keepalive::wire::tcp::FrameDecoder::new(1 << 20);
    decoder.push(bytes);
    std::iter::from_fn(|| decoder.next_frame().ok().flatten())
        .map(|f| f.code)
        .collect()
}

/// Reads until the server closes the connection, returning everything it sent.
async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    timeout(LIMIT, stream.read_to_end(&mut all))
        .await
        .expect("the server closes the connection")
        .unwrap();
    all
}

#[tokio::test]
async fn tcp_peer_that_never_sends_its_csm_is_aborted_and_closed() {
    let ctx = short_input_timeout();
    let server = ctx.listen_tcp(loopback()).await.unwrap().local_addr;
    let mut stream = TcpStream::connect(server).await.unwrap();
    let started = std::time::Instant::now();
    let all = read_to_close(&mut stream).await;
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert_eq!(frame_codes(&all), vec![0xe1, 0xe5], "our CSM, then Abort");
    assert!(ctx.sessions().is_empty());
}

#[tokio::test]
async fn tcp_slow_loris_is_aborted_after_the_input_timeout() {
    let ctx = short_input_timeout();
    let server = ctx.listen_tcp(loopback()).await.unwrap().local_addr;
    let mut stream = TcpStream::connect(server).await.unwrap();
    stream.write_all(&[0x00, 0xe1]).await.unwrap();
    // start a 13-byte message and trickle it, never finishing
    let trickle = async {
        for byte in [0xd0u8, 0x00, 0x01, 0x02] {
            if stream.write_all(&[byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    trickle.await;
    let all = read_to_close(&mut stream).await;
    assert_eq!(frame_codes(&all), vec![0xe1, 0xe5], "our CSM, then Abort");
    timeout(LIMIT, async {
        while !ctx.sessions().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the session leaves the table");
}
