//! A [`Snapshot`] in the Prometheus text format, through `prometheus-client`: the crate writes
//! the `# HELP` and `# TYPE` lines, the `_total`, `_info` and histogram suffixes, and escapes
//! label values; this module only says what each metric is.
//!
//! The snapshot is taken as a whole (a `Collector` over plain numbers) rather than kept in the
//! crate's live metric types: the numbers are counted elsewhere, by other processes even, and
//! all of one scrape should come from one moment.

use super::counters::{ClusterNumbers, Disconnect, LineKind, Rejection, Snapshot};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet, prometheus_text};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::fmt;
use std::sync::Arc;

// The release this binary is, as `chatd_build_info{version}` shows it.
use crate::version::VERSION;

/// The `Content-Type` of what [`render`] returns.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// The text of `/metrics` for `snapshot`.
pub fn render(snapshot: Arc<Snapshot>) -> Result<String, fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Exposition(snapshot)));
    let mut text = String::with_capacity(8 * 1024);
    prometheus_text::encode(&mut text, &registry)?;
    Ok(text)
}

#[derive(Debug)]
struct Exposition(Arc<Snapshot>);

impl Collector for Exposition {
    fn encode(&self, mut out: DescriptorEncoder) -> fmt::Result {
        let s = &*self.0;
        let w = &s.workers;
        out.encode_descriptor(
            "chatd_build",
            "The release of chatd serving these metrics (always 1).",
            None,
            MetricType::Info,
        )?
        .encode_info(&[("version", VERSION)])?;
        let clients = s.clients.iter().map(|(slot, n)| (slot.to_string(), *n));
        family(
            &mut out,
            MetricType::Gauge,
            "chatd_clients",
            "Clients in the room, by the worker slot serving them.",
            "worker",
            clients,
        )?;
        gauge(&mut out, "chatd_clients_total", "Clients in the room.", s.clients_total)?;
        counter(&mut out, "chatd_connections", "Connections accepted.", w.connections)?;
        let reasons = Disconnect::ALL.map(|d| (d.label(), s.room.disconnections_for(d)));
        family(
            &mut out,
            MetricType::Counter,
            "chatd_disconnections",
            "Sessions that left the room, by reason.",
            "reason",
            reasons,
        )?;
        let kinds = LineKind::ALL.map(|k| (k.label(), s.room.lines_of(k)));
        family(
            &mut out,
            MetricType::Counter,
            "chatd_room_lines",
            "Numbered room lines, by kind.",
            "kind",
            kinds,
        )?;
        counter(
            &mut out,
            "chatd_deliveries",
            "Room lines given to clients: one per line per client in the room.",
            w.deliveries,
        )?;
        counter(&mut out, "chatd_bytes_received", "Bytes read from clients.", w.bytes_received)?;
        counter(&mut out, "chatd_bytes_sent", "Bytes written to clients.", w.bytes_sent)?;
        counter(
            &mut out,
            "chatd_rate_limited",
            "Times a client's input was held back by its rate limit.",
            w.rate_limited,
        )?;
        // Workers count failed TLS handshakes: those connections never reach the hub.
        let rejected = Rejection::ALL.map(|r| {
            let by_workers = if r == Rejection::Tls { w.tls_rejected } else { 0 };
            (r.label(), s.room.rejected_for(r) + by_workers)
        });
        family(
            &mut out,
            MetricType::Counter,
            "chatd_rejected",
            "Connections turned away before joining, by reason.",
            "reason",
            rejected,
        )?;
        family(
            &mut out,
            MetricType::Counter,
            "chatd_reloads",
            "Reloads, by result.",
            "result",
            [("ok", s.reloads_ok), ("failed", s.reloads_failed)],
        )?;
        let durations = &s.reload_durations;
        out.encode_descriptor(
            "chatd_reload_duration_seconds",
            "How long successful reloads took, from the request to the new generation serving.",
            None,
            MetricType::Histogram,
        )?
        .encode_histogram::<NoLabelSet>(
            durations.sum(),
            durations.count(),
            &durations.buckets(),
            None,
        )?;
        counter(
            &mut out,
            "chatd_worker_restarts",
            "Workers that died or hung and were replaced.",
            s.worker_restarts,
        )?;
        gauge(
            &mut out,
            "chatd_generation",
            "The worker generation (1 + reloads done).",
            s.generation,
        )?;
        gauge(&mut out, "chatd_history_lines", "Room lines kept for /history.", s.history_lines)?;
        match &s.cluster {
            Some(cluster) => encode_cluster(&mut out, cluster),
            None => Ok(()),
        }
    }
}

/// Cluster mode's gauges (docs/operations.md, "Metrics"), only on a host in cluster mode.
fn encode_cluster(out: &mut DescriptorEncoder, c: &ClusterNumbers) -> fmt::Result {
    let connected = "1 while the room is reachable: connected to NATS and the stream readable.";
    gauge(out, "chatd_cluster_connected", connected, u64::from(c.connected))?;
    let unreachable = "Seconds since the room became unreachable; 0 while it is reachable.";
    gauge(out, "chatd_cluster_unreachable_seconds", unreachable, c.unreachable_seconds)?;
    gauge(out, "chatd_cluster_last_seq", "The last stream sequence applied.", c.last_seq)?;
    let checkpoint = "The stream sequence of the last checkpoint written or started from.";
    gauge(out, "chatd_cluster_checkpoint_seq", checkpoint, c.checkpoint_seq)?;
    let held = "This host's events handed to NATS and not yet stored (held during an outage).";
    gauge(out, "chatd_cluster_held_events", held, c.held)?;
    gauge(out, "chatd_cluster_hosts", "Hosts the stream has shown in the room.", c.hosts)?;
    gauge(out, "chatd_cluster_members", "Members of the room, on every host.", c.members)
}

fn counter(out: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> fmt::Result {
    out.encode_descriptor(name, help, None, MetricType::Counter)?
        .encode_counter::<NoLabelSet, u64, u64>(&value, None)
}

fn gauge(out: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> fmt::Result {
    out.encode_descriptor(name, help, None, MetricType::Gauge)?.encode_gauge(&value)
}

/// A counter or gauge with one label, one sample per value of the label.
fn family<L: AsRef<str>>(
    out: &mut DescriptorEncoder,
    kind: MetricType,
    name: &str,
    help: &str,
    label: &str,
    samples: impl IntoIterator<Item = (L, u64)>,
) -> fmt::Result {
    let mut metric = out.encode_descriptor(name, help, None, kind)?;
    for (value, n) in samples {
        let labels = [(label, value.as_ref())];
        let mut sample = metric.encode_family(&labels)?;
        match kind {
            MetricType::Counter => sample.encode_counter::<NoLabelSet, u64, u64>(&n, None)?,
            _ => sample.encode_gauge(&n)?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::message::{LeaveReason, RoomEvent};
    use std::time::Duration;

    #[test]
    fn every_metric_has_help_type_and_every_label_value() {
        let mut s = Snapshot::default();
        s.clients.insert(0, 2);
        s.clients.insert(1, 0);
        s.clients_total = 2;
        s.workers.connections = 3;
        s.room.left(&LeaveReason::TooSlow);
        s.room.line(&RoomEvent::Chat);
        s.reloads_ok = 1;
        s.reload_durations.observe(Duration::from_millis(300));
        s.generation = 2;
        let text = render(Arc::new(s)).unwrap();
        for (family, kind) in [
            ("chatd_build_info", "gauge"),
            ("chatd_clients", "gauge"),
            ("chatd_clients_total", "gauge"),
            ("chatd_connections_total", "counter"),
            ("chatd_disconnections_total", "counter"),
            ("chatd_room_lines_total", "counter"),
            ("chatd_deliveries_total", "counter"),
            ("chatd_bytes_received_total", "counter"),
            ("chatd_bytes_sent_total", "counter"),
            ("chatd_rate_limited_total", "counter"),
            ("chatd_rejected_total", "counter"),
            ("chatd_reloads_total", "counter"),
            ("chatd_reload_duration_seconds", "histogram"),
            ("chatd_worker_restarts_total", "counter"),
            ("chatd_generation", "gauge"),
            ("chatd_history_lines", "gauge"),
        ] {
            let help = format!("# HELP {family} ");
            assert!(text.lines().any(|l| l.starts_with(&help)), "{family} HELP:\n{text}");
            let kind = format!("# TYPE {family} {kind}");
            assert!(text.lines().any(|l| l == kind), "{family} TYPE:\n{text}");
        }
        for line in [
            &format!("chatd_build_info{{version=\"{VERSION}\"}} 1"),
            "chatd_clients{worker=\"0\"} 2",
            "chatd_clients{worker=\"1\"} 0",
            "chatd_clients_total 2",
            "chatd_connections_total 3",
            "chatd_disconnections_total{reason=\"too_slow\"} 1",
            "chatd_disconnections_total{reason=\"banned\"} 0",
            "chatd_room_lines_total{kind=\"chat\"} 1",
            "chatd_room_lines_total{kind=\"notice\"} 0",
            "chatd_rejected_total{reason=\"tls\"} 0",
            "chatd_reloads_total{result=\"ok\"} 1",
            "chatd_reloads_total{result=\"failed\"} 0",
            "chatd_reload_duration_seconds_bucket{le=\"0.25\"} 0",
            "chatd_reload_duration_seconds_bucket{le=\"0.5\"} 1",
            "chatd_reload_duration_seconds_bucket{le=\"+Inf\"} 1",
            "chatd_reload_duration_seconds_count 1",
            "chatd_generation 2",
        ] {
            assert!(text.lines().any(|l| l == line), "no line {line:?} in:\n{text}");
        }
        assert!(!text.contains("chatd_cluster_"), "cluster gauges on a single host:\n{text}");
    }

    #[test]
    fn a_cluster_host_shows_the_room_across_hosts() {
        let cluster = ClusterNumbers {
            connected: false,
            unreachable_seconds: 7,
            last_seq: 42,
            checkpoint_seq: 40,
            held: 3,
            hosts: 3,
            members: 9,
        };
        let s = Snapshot { cluster: Some(cluster), ..Snapshot::default() };
        let text = render(Arc::new(s)).unwrap();
        for line in [
            "# TYPE chatd_cluster_connected gauge",
            "chatd_cluster_connected 0",
            "chatd_cluster_unreachable_seconds 7",
            "chatd_cluster_last_seq 42",
            "chatd_cluster_checkpoint_seq 40",
            "chatd_cluster_held_events 3",
            "chatd_cluster_hosts 3",
            "chatd_cluster_members 9",
        ] {
            assert!(text.lines().any(|l| l == line), "no line {line:?} in:\n{text}");
        }
    }
}
