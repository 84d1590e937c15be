//! The practical limit for `scripts/bench`: a responder that does nothing but answer pings.
//!
//! No stack, no sessions, no timers: over UDP an empty CON `40 00 MM MM` gets the RST
//! `70 00 MM MM` from one blocking loop; over TCP every connection gets a CSM `00 e1` at once and
//! each 7.02 Ping it sends is answered by a 7.03 Pong echoing the token (`00 e2` -> `00 e3`).
//! Everything else is ignored. Whatever this answers is what the machine can answer.
//!
//! ```sh
//! cargo run --release --example trivial_responder -- 127.0.0.1:7001   # UDP and TCP on one port
//! ```

use std::net::{SocketAddr, UdpSocket};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// An empty Confirmable message with code 0.00 and no token: a CoAP ping.
const PING_HEADER: [u8; 2] = [0x40, 0x00];
/// Code of a 7.03 Pong.
const PONG: u8 = 0xe3;
/// Code of a 7.02 Ping.
const PING: u8 = 0xe2;
/// An empty CSM.
const CSM: [u8; 2] = [0x00, 0xe1];

fn main() {
    let addr: SocketAddr = match std::env::args().nth(1).map(|a| a.parse()) {
        Some(Ok(addr)) => addr,
        _ => {
            eprintln!("usage: trivial_responder ADDR   (serves UDP and TCP on ADDR)");
            std::process::exit(2);
        }
    };
    let udp = match UdpSocket::bind(addr) {
        Ok(socket) => socket,
        Err(error) => {
            eprintln!("trivial_responder: udp {addr}: {error}");
            std::process::exit(1);
        }
    };
    std::thread::spawn(move || serve_udp(udp));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let listener = match listen_tcp(addr) {
            Ok(listener) => listener,
            Err(error) => {
                eprintln!("trivial_responder: tcp {addr}: {error}");
                std::process::exit(1);
            }
        };
        println!("answering pings on udp and tcp {addr}");
        loop {
            if let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve_tcp(stream));
            }
        }
    });
}

/// A listener with a deep accept queue (tokio's `bind` asks for 128), so that bursts of connects
/// do not overflow it.
fn listen_tcp(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// One blocking loop: the fewest system calls a UDP answer can take (one receive, one send).
fn serve_udp(socket: UdpSocket) {
    let mut buf = [0u8; 2048];
    loop {
        let Ok((len, peer)) = socket.recv_from(&mut buf) else {
            continue; // an ICMP error for an earlier answer
        };
        if len == 4 && buf[..2] == PING_HEADER {
            let _ = socket.send_to(&[0x70, 0x00, buf[2], buf[3]], peer);
        }
    }
}

async fn serve_tcp(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    if stream.write_all(&CSM).await.is_err() {
        return;
    }
    let mut buf = vec![0u8; 4096];
    let mut filled = 0;
    let mut answers = Vec::new();
    loop {
        match stream.read(&mut buf[filled..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => filled += n,
        }
        let mut at = 0;
        loop {
            match frame_at(&buf[at..filled]) {
                Frame::Complete { len, code, token } => {
                    if code == PING {
                        let token = &buf[at + token.start..at + token.end];
                        answers.push(token.len() as u8);
                        answers.push(PONG);
                        answers.extend_from_slice(token);
                    }
                    at += len;
                }
                Frame::Partial { needed } if needed > MAX_FRAME => return,
                Frame::Partial { needed } => {
                    if needed > buf.len() {
                        buf.resize(needed, 0);
                    }
                    break;
                }
            }
        }
        buf.copy_within(at..filled, 0);
        filled -= at;
        if !answers.is_empty() {
            if stream.write_all(&answers).await.is_err() {
                return;
            }
            answers.clear();
        }
    }
}

/// Largest frame accepted before the connection is dropped.
const MAX_FRAME: usize = 1 << 20;

/// What the front of a TCP byte stream holds (RFC 8323 §3.2 framing).
enum Frame {
    /// A whole frame of `len` bytes with this code and the token at `token`.
    Complete {
        len: usize,
        code: u8,
        token: std::ops::Range<usize>,
    },
    /// Not yet a whole frame; at least `needed` bytes are.
    Partial { needed: usize },
}

fn frame_at(bytes: &[u8]) -> Frame {
    let partial = Frame::Partial { needed: 6 };
    let Some(&first) = bytes.first() else {
        return partial;
    };
    let tkl = usize::from(first & 0x0f);
    let (extended, body) = match first >> 4 {
        13 => match bytes.get(1) {
            Some(&b) => (1, usize::from(b) + 13),
            None => return partial,
        },
        14 => match bytes.get(1..3) {
            Some(b) => (2, usize::from(u16::from_be_bytes([b[0], b[1]])) + 269),
            None => return partial,
        },
        15 => match bytes.get(1..5) {
            Some(b) => (
                4,
                u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize + 65_805,
            ),
            None => return partial,
        },
        n => (0, usize::from(n)),
    };
    let code_at = 1 + extended;
    let len = code_at + 1 + tkl + body;
    match bytes.get(code_at) {
        Some(&code) if bytes.len() >= len => Frame::Complete {
            len,
            code,
            token: code_at + 1..code_at + 1 + tkl,
        },
        _ => Frame::Partial { needed: len },
    }
}
