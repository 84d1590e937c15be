//! A reconnecting client session over real loopback sockets: the server goes away and comes
//! back on the same port; the client connects again after its backoff wait, registers its
//! observation again, and the application's notification stream goes on across the outage,
//! with the Reconnecting / Reconnected events saying what happened.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use coap_keepalive::{
    ClientCredentials, Context, EventKind, ReconnectPolicy, Resource, Response, Status,
};
use support::{bounded, ms};

const LIMIT: Duration = Duration::from_secs(30);

/// A server with an observable `/n` whose representation is `label` and a counter.
fn server(label: &'static str) -> (Context, Arc<AtomicUsize>) {
    let ctx = Context::new();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&count);
    ctx.add_resource(Resource::new("/n").observable().get(move |_, _| {
        let n = seen.load(Ordering::SeqCst);
        Response::new(Status::Content).with_payload(format!("{label}{n}").into_bytes())
    }));
    (ctx, count)
}

/// Listens on exactly `addr`, retrying while the old listener's port is still being freed.
async fn listen_again(ctx: &Context, udp: bool, addr: SocketAddr) {
    for _ in 0..100 {
        let bound = if udp {
            ctx.listen_udp(addr).await
        } else {
            ctx.listen_tcp(addr).await
        };
        if bound.is_ok() {
            return;
        }
        tokio::time::sleep(ms(20)).await;
    }
    panic!("could not listen on {addr} again");
}

async fn survives_a_server_restart(scheme: &str) {
    bounded(LIMIT, async {
        let udp = scheme == "coap";
        let (first, first_count) = server("a");
        let any = "127.0.0.1:0".parse().unwrap();
        let addr = if udp {
            first.listen_udp(any).await.unwrap().local_addr
        } else {
            first.listen_tcp(any).await.unwrap().local_addr
        };
        // Over UDP the client learns that the server is gone from its own keepalive.
        let client = Context::builder()
            .keepalive(ms(100))
            .ack_timeout(ms(50))
            .max_retransmit(1)
            .pong_timeout(ms(200))
            .seed(42)
            .build()
            .unwrap();
        let mut events = client.events();
        let policy = ReconnectPolicy::new(ms(20), ms(200));
        let uri = format!("{scheme}://{addr}");
        let reconnecting = client
            .connect_reconnecting(&uri, &ClientCredentials::None, policy)
            .await
            .unwrap();
        let old_id = reconnecting.session().id();
        let mut observation = reconnecting.observe("/n").await.unwrap();
        assert_eq!(observation.first().payload_str(), "a0");
        first_count.store(1, Ordering::SeqCst);
        assert_eq!(first.notify("/n"), 1);
        assert_eq!(observation.next().await.unwrap().payload_str(), "a1");

        first.shutdown().await;
        // The client notices (over TCP the connection closes; over UDP its pings go
        // unanswered) and starts reconnecting; only then does the server come back. (A UDP
        // server back at once would answer the old session's pings with RSTs, which keep it
        // alive: its observation would come back by re-registering after Max-Age instead.)
        let mut attempts = 0;
        while attempts == 0 {
            let event = events.recv().await.unwrap().unwrap();
            if let EventKind::Reconnecting { attempt, delay } = event.kind {
                assert_eq!(event.session.id(), old_id);
                assert!(delay <= policy.spread(attempt - 1), "{delay:?}");
                attempts = attempt;
            }
        }
        let (second, second_count) = server("b");
        listen_again(&second, udp, addr).await;
        // The answer to the registration on the new session, then its notifications.
        let restored = observation.next().await.expect("the observation goes on");
        assert_eq!(restored.payload_str(), "b0", "{scheme}");
        second_count.store(1, Ordering::SeqCst);
        assert_eq!(second.notify("/n"), 1, "{scheme}: observed again");
        assert_eq!(observation.next().await.unwrap().payload_str(), "b1");

        let new_id = reconnecting.session().id();
        assert_ne!(new_id, old_id);
        loop {
            let event = events.recv().await.unwrap().unwrap();
            match event.kind {
                EventKind::Reconnecting { attempt, delay } => {
                    assert_eq!(event.session.id(), old_id);
                    assert!(delay <= policy.spread(attempt - 1), "{delay:?}");
                    attempts = attempt;
                }
                EventKind::Reconnected { previous, restored } => {
                    assert_eq!((previous, restored), (old_id, 1));
                    assert_eq!(event.session.id(), new_id);
                    break;
                }
                _ => {}
            }
        }
        assert!(attempts >= 1);
        reconnecting.close();
        client.shutdown().await;
        second.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn tcp_a_restarted_server_is_found_again_and_the_observation_restored() {
    survives_a_server_restart("coap+tcp").await;
}

#[tokio::test]
async fn udp_a_restarted_server_is_found_again_and_the_observation_restored() {
    survives_a_server_restart("coap").await;
}

#[tokio::test]
async fn a_policy_with_a_limit_gives_up_and_says_so() {
    bounded(LIMIT, async {
        let (gone, _) = server("a");
        let addr = gone
            .listen_tcp("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap()
            .local_addr;
        let client = Context::new();
        let mut events = client.events();
        let policy = ReconnectPolicy::new(ms(10), ms(40)).with_max_attempts(3);
        let reconnecting = client
            .connect_reconnecting(
                &format!("coap+tcp://{addr}"),
                &ClientCredentials::None,
                policy,
            )
            .await
            .unwrap();
        let mut observation = reconnecting.observe("/n").await.unwrap();
        gone.shutdown().await;
        let mut reconnecting_events = 0;
        loop {
            match events.recv().await.unwrap().unwrap().kind {
                EventKind::Reconnecting { .. } => reconnecting_events += 1,
                EventKind::ReconnectGaveUp { attempts } => {
                    assert_eq!(attempts, 3);
                    break;
                }
                _ => {}
            }
        }
        assert_eq!(reconnecting_events, 3);
        assert!(observation.next().await.is_none(), "the observation ended");
        client.shutdown().await;
    })
    .await
}

/// 1,000 clients of one server that restarts: every one comes back with its observation, and
/// the reconnections spread over the backoff window instead of arriving in one stampede. The
/// server stays down for 300 ms; the first attempts wait up to 200 ms (so most fail and try
/// again with up to 400 ms, then 800 ms). The histogram of when each client was back is
/// printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_clients_come_back_after_a_server_restart_spread_over_the_backoff_window() {
    const CLIENTS: usize = 1000;
    let (first, _) = server("a");
    let addr = first
        .listen_tcp("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
        .local_addr;
    let client = Context::builder().seed(7).build().unwrap();
    let policy = ReconnectPolicy::new(ms(200), ms(2_000));
    let uri = format!("coap+tcp://{addr}");
    let mut fleet = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        let reconnecting = client
            .connect_reconnecting(&uri, &ClientCredentials::None, policy)
            .await
            .unwrap();
        let observation = reconnecting.observe("/n").await.unwrap();
        fleet.push((reconnecting, observation));
    }
    assert_eq!(first.observer_count("/n"), CLIENTS);

    let down = tokio::time::Instant::now();
    // Each client's observation yields the new server's representation when it is back.
    let mut waiting = Vec::with_capacity(CLIENTS);
    let mut sessions = Vec::with_capacity(CLIENTS);
    for (reconnecting, mut observation) in fleet {
        sessions.push(reconnecting);
        waiting.push(tokio::spawn(async move {
            let restored = observation.next().await.expect("the observation goes on");
            (
                down.elapsed(),
                restored.payload_str().to_string(),
                observation,
            )
        }));
    }
    first.shutdown().await;
    tokio::time::sleep(ms(300)).await;
    let (second, _) = server("b");
    listen_again(&second, false, addr).await;
    let back = bounded(LIMIT, async {
        let mut back = Vec::with_capacity(CLIENTS);
        let mut observations = Vec::with_capacity(CLIENTS);
        for task in waiting {
            let (at, payload, observation) = task.await.unwrap();
            assert_eq!(payload, "b0");
            back.push(at);
            observations.push(observation);
        }
        (back, observations)
    })
    .await;
    let (back, _observations) = back;
    assert_eq!(second.observer_count("/n"), CLIENTS);

    // The histogram, in 100 ms buckets from the moment the server went down.
    let mut buckets = [0usize; 20];
    for at in &back {
        buckets[(at.as_millis() as usize / 100).min(buckets.len() - 1)] += 1;
    }
    println!("reconnected after the server went down (it was back at 300 ms):");
    for (i, n) in buckets.iter().enumerate().filter(|(_, n)| **n > 0) {
        println!(
            "  {:>4}-{:<4} ms {:>4} {}",
            i * 100,
            i * 100 + 100,
            n,
            "#".repeat(n / 10)
        );
    }
    let busiest = *buckets.iter().max().unwrap();
    assert!(
        busiest < CLIENTS / 2,
        "{busiest} of {CLIENTS} clients came back within the same 100 ms: a stampede"
    );
    let spread = back
        .iter()
        .max()
        .unwrap()
        .saturating_sub(*back.iter().min().unwrap());
    assert!(spread >= ms(300), "back within {spread:?} of each other");
    drop(sessions);
    client.shutdown().await;
    second.shutdown().await;
}
