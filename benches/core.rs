//! In-process benchmark of the keepalive core and the session table, in virtual time.
//!
//! `cargo bench --bench core` builds 10k, 100k and 1M UDP sessions (`DatagramSession`, the
//! keepalive machine inside it) in one `SessionTable`, with interval 30 s and jitter 0.1, and
//! drives them the way the UDP driver does, with manual `Instant`s instead of a clock: the
//! earliest deadline is popped, the session's timers run, its ping is taken from
//! `poll_transmit`, the peer's RST comes back through `handle_datagram` 1 ms (virtual) later:
//! the session is rescheduled, the RST is looked up by its source address and fed in, the pong
//! event is drained and the session is rescheduled again. No sockets, no sleeping: the time
//! measured is the CPU the core spends per keepalive event (the thread's on-CPU time from
//! /proc/thread-self/schedstat where there is one, else wall time).
//!
//! Heap bytes are counted by a global allocator that wraps the system one (not estimated from
//! type sizes): "per idle session" is everything the table and its sessions hold once every
//! session has been through one full keepalive cycle, divided by the number of sessions.
//!
//! `cargo bench --bench core -- --quick` runs 10k and 100k only; `-- N...` runs the given sizes;
//! `--events E` times at least E events per size (default 3M; fewer under valgrind).

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicIsize, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use coap_keepalive::proto::datagram::DatagramSession;
use coap_keepalive::proto::rng::Rng;
use coap_keepalive::proto::table::{Addressed, SessionTable, Timed};
use coap_keepalive::KeepaliveConfig;

/// The system allocator, counting live bytes and allocations.
struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; the counters are only
// arithmetic on the sizes the caller passed.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` / `realloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded with the caller's pointer, layout and size.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live_bytes() -> isize {
    LIVE_BYTES.load(Ordering::Relaxed)
}

/// Keepalive interval of every session.
const INTERVAL: Duration = Duration::from_secs(30);
/// Jitter fraction.
const JITTER: f64 = 0.1;
/// Virtual round-trip time of the simulated peers.
const RTT: Duration = Duration::from_millis(1);
/// Keepalive events timed per size, at least (more intervals for small tables).
const MIN_EVENTS: u64 = 3_000_000;
/// Timed rounds per size.
const ROUNDS: u64 = 3;

/// One line of the table.
struct Row {
    sessions: usize,
    bytes_fresh: f64,
    bytes_idle: f64,
    ns_per_event: f64,
    ns_median: f64,
    allocs_per_event: f64,
    events: u64,
}

/// A distinct peer address per session: ports 1024..61024 on 10.x.y.z.
fn peer(index: usize) -> SocketAddr {
    let host = (index / 60_000) as u32;
    let port = 1024 + (index % 60_000) as u16;
    SocketAddr::from((Ipv4Addr::from(0x0a00_0000 + host), port))
}

/// A session and its peer's address, as a driver's table entry holds them (the driver's keeps
/// the address in the session's handle).
struct Entry {
    peer: SocketAddr,
    session: DatagramSession,
}

impl Timed for Entry {
    fn poll_timeout(&self) -> Option<Instant> {
        self.session.poll_timeout()
    }
}

impl Addressed for Entry {
    fn peer(&self) -> SocketAddr {
        self.peer
    }
}

/// Runs every due session until `until` (virtual); returns the keepalive events handled.
fn drive(table: &mut SessionTable<Entry>, until: Instant) -> u64 {
    let mut events = 0;
    let mut answers = Vec::new();
    while let Some(now) = table.next_deadline() {
        if now > until {
            break;
        }
        while let Some(key) = table.pop_due(now) {
            let Some(Entry { session, .. }) = table.get_mut(key) else {
                continue;
            };
            session.handle_timeout(now);
            while let Some(datagram) = session.poll_transmit() {
                if let [0x40, 0x00, hi, lo] = datagram[..] {
                    answers.push((now + RTT, key, [0x70, 0x00, hi, lo]));
                }
            }
            while let Some(event) = session.poll_event() {
                black_box(event);
            }
            table.reschedule(key);
        }
        // The peers' RSTs come back and are found by their source address, as the driver
        // finds them.
        for (at, key, rst) in answers.drain(..) {
            let Some(peer) = table.peer(key) else {
                continue;
            };
            let Some(key) = table.key_of(&peer) else {
                continue;
            };
            if let Some(Entry { session, .. }) = table.get_mut(key) {
                session.handle_datagram(at, &rst);
                while let Some(event) = session.poll_event() {
                    black_box(event);
                }
                events += 1;
            }
            table.reschedule(key);
        }
    }
    events
}

/// Time this thread has spent on a CPU (Linux: /proc/thread-self/schedstat, nanoseconds).
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let nanos: u64 = stat.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(nanos))
}

fn run(sessions: usize, min_events: u64) -> Row {
    let t0 = Instant::now();
    // One configuration shared by every session, as the drivers share the context's.
    let config = Arc::new(
        KeepaliveConfig::default()
            .with_interval(Some(INTERVAL))
            .with_jitter(JITTER),
    );
    let mut rng = Rng::seeded(7);
    let base = live_bytes();
    let mut table = SessionTable::new();
    for index in 0..sessions {
        // Sessions arrive over one interval, as clients of a server do.
        let created = t0 + INTERVAL.mul_f64(index as f64 / sessions as f64);
        table.insert(Entry {
            peer: peer(index),
            session: DatagramSession::new(Arc::clone(&config), rng.fork(), created),
        });
    }
    let bytes_fresh = (live_bytes() - base) as f64 / sessions as f64;

    // One full cycle: every session pings once and is answered, so its buffers are as they
    // stay while idle.
    let mut horizon = t0 + INTERVAL * 2;
    let warm = drive(&mut table, horizon);
    assert!(
        warm >= sessions as u64,
        "every session pinged during warm-up"
    );
    let bytes_idle = (live_bytes() - base) as f64 / sessions as f64;

    // Timed in rounds of at least a full interval; the best round is the figure (other
    // processes on a shared machine only ever make a round slower), the median is shown too.
    let intervals = (min_events / ROUNDS).div_ceil(sessions as u64).max(1) as u32;
    let allocations = ALLOCATIONS.load(Ordering::Relaxed);
    let mut rounds = Vec::new();
    let mut events = 0;
    for _ in 0..ROUNDS {
        let started = Instant::now();
        let cpu_started = cpu_time();
        horizon += INTERVAL * intervals;
        let round_events = drive(&mut table, horizon);
        // CPU time of this thread when the kernel reports it: other processes then slow the
        // figure only through the caches they share, not by taking the core away.
        let elapsed = match (cpu_started, cpu_time()) {
            (Some(a), Some(b)) => b.saturating_sub(a),
            _ => started.elapsed(),
        };
        rounds.push(elapsed.as_nanos() as f64 / round_events as f64);
        events += round_events;
    }
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - allocations;
    rounds.sort_by(f64::total_cmp);
    assert_eq!(table.len(), sessions, "no session failed");
    drop(table);
    Row {
        sessions,
        bytes_fresh,
        bytes_idle,
        ns_per_event: rounds[0],
        ns_median: rounds[rounds.len() / 2],
        allocs_per_event: allocations as f64 / events as f64,
        events,
    }
}

fn main() {
    // cargo passes `--bench`; sizes may follow, or --quick.
    let mut args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let mut min_events = MIN_EVENTS;
    if let Some(i) = args.iter().position(|a| a == "--events") {
        min_events = args
            .get(i + 1)
            .and_then(|e| e.parse().ok())
            .unwrap_or(MIN_EVENTS);
        args.drain(i..(i + 2).min(args.len()));
    }
    let sizes: Vec<usize> = if args.iter().any(|a| a == "--quick") {
        vec![10_000, 100_000]
    } else {
        let given: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
        if given.is_empty() {
            vec![10_000, 100_000, 1_000_000]
        } else {
            given
        }
    };
    println!(
        "keepalive core + session table, UDP sessions, interval {} s, jitter {JITTER}, virtual time",
        INTERVAL.as_secs()
    );
    println!(
        "size_of: DatagramSession {} bytes, of which Keepalive {} (the {}-byte KeepaliveConfig is shared)",
        std::mem::size_of::<DatagramSession>(),
        std::mem::size_of::<coap_keepalive::proto::keepalive::Keepalive>(),
        std::mem::size_of::<KeepaliveConfig>(),
    );
    println!(
        "size_of: ProtocolEvent {} bytes (a DatagramSession's event queue holds these)",
        std::mem::size_of::<coap_keepalive::proto::ProtocolEvent>(),
    );
    println!(
        "{:>9} | {:>14} | {:>11} | {:>12} | {:>10} | {:>12} | {:>9}",
        "sessions",
        "heap B/session",
        "heap B/idle",
        "ns/event min",
        "ns/ev med",
        "allocs/event",
        "events"
    );
    let mut rows = Vec::new();
    for &sessions in &sizes {
        let row = run(sessions, min_events);
        println!(
            "{:>9} | {:>14.0} | {:>11.0} | {:>12.0} | {:>10.0} | {:>12.2} | {:>9}",
            row.sessions,
            row.bytes_fresh,
            row.bytes_idle,
            row.ns_per_event,
            row.ns_median,
            row.allocs_per_event,
            row.events
        );
        rows.push(row);
    }
    if let (Some(first), Some(last)) = (rows.first(), rows.last()) {
        if rows.len() > 1 {
            println!(
                "growth {}k -> {}k: heap per idle session x{:.2}, ns per event x{:.2}",
                first.sessions / 1000,
                last.sessions / 1000,
                last.bytes_idle / first.bytes_idle,
                last.ns_per_event / first.ns_per_event
            );
        }
    }
    println!("(heap B/session: right after creation; heap B/idle: after one keepalive cycle)");
}
