//! The context's figures ([`Metrics`]) as Prometheus metrics, through the `prometheus_client`
//! crate (the Prometheus project's own Rust client): a [`Collector`] that takes a snapshot at
//! each scrape and writes every family with its help text, type and labels, in the OpenMetrics
//! text format Prometheus scrapes.
//!
//! The counters themselves are the runtime's atomics; nothing here is on the way of a ping.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::runtime::metrics::{Metrics, TransportMetrics};
use crate::runtime::session::SessionState;
use crate::runtime::Runtime;

/// The Content-Type of [`Context::metrics_text`](crate::Context::metrics_text)'s output.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A context's metrics for a `prometheus_client` [`Registry`]
/// ([`Context::metrics_collector`](crate::Context::metrics_collector)): every scrape reads
/// the context's figures afresh. Register it with
/// [`Registry::register_collector`](prometheus_client::registry::Registry::register_collector).
#[derive(Debug, Clone)]
pub struct MetricsCollector {
    rt: Arc<Runtime>,
}

impl MetricsCollector {
    pub(crate) fn new(rt: Arc<Runtime>) -> MetricsCollector {
        MetricsCollector { rt }
    }
}

impl Collector for MetricsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        encode(&self.rt.metrics(), &mut encoder)
    }
}

/// The OpenMetrics text of `rt`'s figures, `# EOF` included.
pub(crate) fn text(rt: &Arc<Runtime>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(MetricsCollector::new(Arc::clone(rt))));
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}

type Labels<'a> = [(&'static str, &'a str)];

/// One counter family: a value per label set.
fn counters<'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    values: impl IntoIterator<Item = (Vec<(&'static str, &'a str)>, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, unit, MetricType::Counter)?;
    for (labels, value) in values {
        let labels: &Labels = &labels;
        ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A counter family labelled by transport only.
fn per_transport(
    encoder: &mut DescriptorEncoder,
    metrics: &Metrics,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: impl Fn(&TransportMetrics) -> u64,
) -> Result<(), std::fmt::Error> {
    counters(
        encoder,
        name,
        help,
        unit,
        metrics
            .transports
            .iter()
            .map(|t| (vec![("transport", t.transport.name())], value(t))),
    )
}

fn state_name(state: SessionState) -> &'static str {
    match state {
        SessionState::Connecting => "connecting",
        SessionState::Established => "established",
        SessionState::Closed => "closed",
        SessionState::Failed(_) => "failed",
    }
}

/// Writes every family of `metrics`. Names follow the Prometheus conventions: `coap_` first,
/// base units (`_seconds`, `_bytes`), counters ending in `_total` (the encoder appends it).
fn encode(metrics: &Metrics, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    {
        let mut family = encoder.encode_descriptor(
            "coap_sessions",
            "Live CoAP sessions by transport, role and state.",
            None,
            MetricType::Gauge,
        )?;
        for group in &metrics.sessions {
            let labels: &Labels = &[
                ("transport", group.transport.name()),
                (
                    "role",
                    if group.role == crate::Role::Client {
                        "client"
                    } else {
                        "server"
                    },
                ),
                ("state", state_name(group.state)),
            ];
            let count = i64::try_from(group.count).unwrap_or(i64::MAX);
            ConstGauge::new(count).encode(family.encode_family(&labels)?)?;
        }
    }
    per_transport(
        encoder,
        metrics,
        "coap_sessions_opened",
        "Sessions created.",
        None,
        |t| t.sessions_opened,
    )?;
    counters(
        encoder,
        "coap_sessions_ended",
        "Sessions that ended, by how: closed normally or failed (with a nack).",
        None,
        metrics.transports.iter().flat_map(|t| {
            [
                (
                    vec![("transport", t.transport.name()), ("outcome", "closed")],
                    t.sessions_closed,
                ),
                (
                    vec![("transport", t.transport.name()), ("outcome", "failed")],
                    t.sessions_failed,
                ),
            ]
        }),
    )?;
    per_transport(
        encoder,
        metrics,
        "coap_pings_sent",
        "Keepalive pings we sent, not counting retransmissions.",
        None,
        |t| t.pings_sent,
    )?;
    per_transport(
        encoder,
        metrics,
        "coap_ping_retransmissions",
        "Retransmissions of our UDP / DTLS pings.",
        None,
        |t| t.ping_retransmissions,
    )?;
    per_transport(
        encoder,
        metrics,
        "coap_pongs_received",
        "Answers to our pings (RST or empty ACK over UDP / DTLS, 7.03 Pong over TCP / TLS).",
        None,
        |t| t.pongs,
    )?;
    per_transport(
        encoder,
        metrics,
        "coap_pings_unanswered",
        "Pings of ours given up unanswered (retransmissions or pong timeout exhausted).",
        None,
        |t| t.pings_unanswered,
    )?;
    per_transport(
        encoder,
        metrics,
        "coap_peer_pings_received",
        "Pings the peers sent us.",
        None,
        |t| t.peer_pings,
    )?;
    per_transport(
        encoder,
        metrics,
        "coap_peer_pings_answered",
        "Pings of the peers that we answered (an RST or a 7.03 Pong).",
        None,
        |t| t.peer_pings_answered,
    )?;
    {
        let mut family = encoder.encode_descriptor(
            "coap_ping_rtt",
            "Round-trip time of our pings, from the last transmission to the answer.",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for t in &metrics.transports {
            let labels: &Labels = &[("transport", t.transport.name())];
            family
                .encode_family(&labels)?
                .encode_histogram::<NoLabelSet>(
                    t.rtt.sum.as_secs_f64(),
                    t.rtt.count,
                    &t.rtt.buckets,
                    None,
                )?;
        }
    }
    counters(
        encoder,
        "coap_nacks",
        "Sessions that failed, by nack reason.",
        None,
        metrics.transports.iter().flat_map(|t| {
            t.nacks.iter().map(|(reason, n)| {
                (
                    vec![
                        ("transport", t.transport.name()),
                        ("reason", reason.label()),
                    ],
                    *n,
                )
            })
        }),
    )?;
    counters(
        encoder,
        "coap_handshakes",
        "(D)TLS handshakes that completed.",
        None,
        metrics
            .transports
            .iter()
            .filter(|t| t.transport.is_secure())
            .map(|t| (vec![("transport", t.transport.name())], t.handshakes)),
    )?;
    counters(
        encoder,
        "coap_handshake_failures",
        "(D)TLS handshakes that failed, by cause.",
        None,
        metrics
            .transports
            .iter()
            .filter(|t| t.transport.is_secure())
            .flat_map(|t| {
                t.handshake_failures.iter().map(|(cause, n)| {
                    (
                        vec![("transport", t.transport.name()), ("cause", cause.as_str())],
                        *n,
                    )
                })
            }),
    )?;
    counters(
        encoder,
        "coap_requests",
        "Requests answered by a resource or the router, by method and response class.",
        None,
        metrics.transports.iter().flat_map(|t| {
            t.requests.iter().map(|r| {
                (
                    vec![
                        ("transport", t.transport.name()),
                        ("method", r.method),
                        ("class", r.class),
                    ],
                    r.count,
                )
            })
        }),
    )?;
    per_transport(
        encoder,
        metrics,
        "coap_inputs_rejected",
        "Inputs the protocol refused without a handler (unrecognised critical option, bad \
         block, a stream's first message not a CSM, ...).",
        None,
        |t| t.rejected_inputs,
    )?;
    counters(
        encoder,
        "coap_session_limit",
        "What a full endpoint did with a newcomer: evicted an unproven session for it (UDP), \
         or refused it.",
        None,
        metrics.transports.iter().flat_map(|t| {
            [
                (
                    vec![("transport", t.transport.name()), ("action", "evicted")],
                    t.evictions,
                ),
                (
                    vec![("transport", t.transport.name()), ("action", "refused")],
                    t.refusals,
                ),
            ]
        }),
    )?;
    per_transport(
        encoder,
        metrics,
        "coap_received",
        "Bytes of CoAP messages received (over DTLS / TLS: decrypted, without record overhead).",
        Some(&Unit::Bytes),
        |t| t.bytes_received,
    )?;
    per_transport(
        encoder,
        metrics,
        "coap_sent",
        "Bytes of CoAP messages sent (without DTLS / TLS record overhead).",
        Some(&Unit::Bytes),
        |t| t.bytes_sent,
    )?;
    Ok(())
}
