//! A NAT stand-in on loopback: a UDP relay that gives each client address a mapping (an
//! upstream socket of its own, so the server sees a port per client, as behind a NAT) and
//! forgets the mapping once it has been idle for the binding lifetime. Traffic in either
//! direction refreshes it (as Linux conntrack does); what the server sends to a forgotten
//! mapping is dropped, and the client's next datagram gets a new mapping and a new port.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;

struct Mapping {
    upstream: Arc<UdpSocket>,
    last: Instant,
}

#[derive(Default)]
struct Counters {
    /// Mappings created, by client address.
    created: HashMap<SocketAddr, u32>,
    /// Datagrams from the server dropped because their mapping was forgotten.
    dropped_down: u64,
}

struct State {
    lifetime: Duration,
    /// Drop everything both ways (a path that went away).
    blackhole: bool,
    mappings: HashMap<SocketAddr, Mapping>,
    counters: Counters,
}

/// The relay: clients send to [`UdpNat::addr`], the server answers the mapping's port.
pub struct UdpNat {
    /// Where clients send.
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

impl UdpNat {
    /// A relay to `server` whose bindings live `lifetime` idle.
    pub async fn start(server: SocketAddr, lifetime: Duration) -> UdpNat {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind relay"));
        let addr = front.local_addr().expect("relay address");
        let state = Arc::new(Mutex::new(State {
            lifetime,
            blackhole: false,
            mappings: HashMap::new(),
            counters: Counters::default(),
        }));
        tokio::spawn(run_up(front, server, Arc::clone(&state)));
        UdpNat { addr, state }
    }

    /// Changes the binding lifetime from now on.
    pub fn set_lifetime(&self, lifetime: Duration) {
        lock(&self.state).lifetime = lifetime;
    }

    /// Drops every datagram both ways while on.
    pub fn set_blackhole(&self, on: bool) {
        lock(&self.state).blackhole = on;
    }

    /// Mappings made so far for `client` (more than one: its binding was forgotten).
    pub fn mappings_of(&self, client: SocketAddr) -> u32 {
        let state = lock(&self.state);
        state.counters.created.get(&client).copied().unwrap_or(0)
    }

    /// Datagrams of the server dropped for a forgotten mapping.
    pub fn dropped_down(&self) -> u64 {
        lock(&self.state).counters.dropped_down
    }
}

async fn run_up(front: Arc<UdpSocket>, server: SocketAddr, shared: Arc<Mutex<State>>) {
    let mut buf = vec![0u8; 65_536];
    while let Ok((n, client)) = front.recv_from(&mut buf).await {
        let upstream = {
            let mut state = lock(&shared);
            if state.blackhole {
                continue;
            }
            let now = Instant::now();
            let lifetime = state.lifetime;
            let alive = state
                .mappings
                .get(&client)
                .is_some_and(|m| now.duration_since(m.last) < lifetime);
            if !alive {
                let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind mapping");
                socket.set_nonblocking(true).expect("nonblocking");
                let upstream = Arc::new(UdpSocket::from_std(socket).expect("tokio socket"));
                state.mappings.insert(
                    client,
                    Mapping {
                        upstream: Arc::clone(&upstream),
                        last: now,
                    },
                );
                *state.counters.created.entry(client).or_insert(0) += 1;
                tokio::spawn(run_down(
                    Arc::clone(&front),
                    Arc::clone(&upstream),
                    client,
                    Arc::clone(&shared),
                ));
            }
            let mapping = state.mappings.get_mut(&client).expect("just ensured");
            mapping.last = now;
            Arc::clone(&mapping.upstream)
        };
        let _ = upstream.send_to(&buf[..n], server).await;
    }
}

async fn run_down(
    front: Arc<UdpSocket>,
    upstream: Arc<UdpSocket>,
    client: SocketAddr,
    state: Arc<Mutex<State>>,
) {
    let mut buf = vec![0u8; 65_536];
    while let Ok(n) = upstream.recv(&mut buf).await {
        let (forward, gone) = {
            let mut state = lock(&state);
            let now = Instant::now();
            let lifetime = state.lifetime;
            let blackhole = state.blackhole;
            match state.mappings.get_mut(&client) {
                Some(m) if Arc::ptr_eq(&m.upstream, &upstream) => {
                    if !blackhole && now.duration_since(m.last) < lifetime {
                        m.last = now;
                        (true, false)
                    } else if blackhole {
                        (false, false)
                    } else {
                        state.mappings.remove(&client);
                        (false, true)
                    }
                }
                // Replaced by a newer mapping: this port is closed.
                _ => (false, true),
            }
        };
        if forward {
            let _ = front.send_to(&buf[..n], client).await;
        } else {
            lock(&state).counters.dropped_down += 1;
        }
        if gone {
            return;
        }
    }
}
