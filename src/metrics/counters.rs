//! The numbers behind `/metrics`: the label values each labelled metric always exports, the
//! room's counters kept by the hub, the reload-duration histogram, and the [`Snapshot`] the
//! supervisor hands to the responder.

use crate::bus::message::{LeaveReason, RoomEvent, WorkerCounters};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// Why a session ended: `chatd_disconnections_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disconnect {
    Quit,
    Closed,
    Lost,
    TooSlow,
    Idle,
    Kicked,
    Banned,
    /// The server closed it: a draining worker at the end of a reload without hand-off.
    Server,
}

impl Disconnect {
    /// Every reason, in the order they are exported (each from the start, at 0).
    pub const ALL: [Disconnect; 8] = [
        Disconnect::Quit,
        Disconnect::Closed,
        Disconnect::Lost,
        Disconnect::TooSlow,
        Disconnect::Idle,
        Disconnect::Kicked,
        Disconnect::Banned,
        Disconnect::Server,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Disconnect::Quit => "quit",
            Disconnect::Closed => "closed",
            Disconnect::Lost => "lost",
            Disconnect::TooSlow => "too_slow",
            Disconnect::Idle => "idle",
            Disconnect::Kicked => "kicked",
            Disconnect::Banned => "banned",
            Disconnect::Server => "server",
        }
    }

    pub fn of(reason: &LeaveReason) -> Disconnect {
        match reason {
            LeaveReason::Quit(_) => Disconnect::Quit,
            LeaveReason::Closed => Disconnect::Closed,
            LeaveReason::Lost => Disconnect::Lost,
            LeaveReason::TooSlow => Disconnect::TooSlow,
            LeaveReason::Idle => Disconnect::Idle,
            LeaveReason::Restart => Disconnect::Server,
            LeaveReason::Kicked(_) => Disconnect::Kicked,
            LeaveReason::Banned(_) => Disconnect::Banned,
        }
    }
}

/// What a numbered room line was: `chatd_room_lines_total{kind}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineKind {
    Chat,
    Me,
    Join,
    Leave,
    Nick,
    Notice,
}

impl LineKind {
    pub const ALL: [LineKind; 6] = [
        LineKind::Chat,
        LineKind::Me,
        LineKind::Join,
        LineKind::Leave,
        LineKind::Nick,
        LineKind::Notice,
    ];

    pub fn label(self) -> &'static str {
        match self {
            LineKind::Chat => "chat",
            LineKind::Me => "me",
            LineKind::Join => "join",
            LineKind::Leave => "leave",
            LineKind::Nick => "nick",
            LineKind::Notice => "notice",
        }
    }

    pub fn of(event: &RoomEvent) -> LineKind {
        match event {
            RoomEvent::Chat => LineKind::Chat,
            RoomEvent::Me => LineKind::Me,
            RoomEvent::Join { .. } => LineKind::Join,
            RoomEvent::Leave { .. } => LineKind::Leave,
            RoomEvent::Nick { .. } => LineKind::Nick,
            RoomEvent::Notice => LineKind::Notice,
        }
    }
}

/// Why a connection was turned away before it joined: `chatd_rejected_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// `server.max_clients` reached.
    Full,
    /// `server.max_clients_per_ip` reached.
    PerIp,
    Banned,
    /// The TLS handshake failed.
    Tls,
}

impl Rejection {
    pub const ALL: [Rejection; 4] =
        [Rejection::Full, Rejection::PerIp, Rejection::Banned, Rejection::Tls];

    pub fn label(self) -> &'static str {
        match self {
            Rejection::Full => "full",
            Rejection::PerIp => "per_ip",
            Rejection::Banned => "banned",
            Rejection::Tls => "tls",
        }
    }
}

/// What the hub counts: everything that happens to the room. It lives as long as the hub (the
/// supervisor's life), so it only grows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomCounters {
    lines: [u64; LineKind::ALL.len()],
    disconnections: [u64; Disconnect::ALL.len()],
    rejected: [u64; Rejection::ALL.len()],
}

impl RoomCounters {
    pub fn line(&mut self, event: &RoomEvent) {
        self.lines[LineKind::of(event) as usize] += 1;
    }

    pub fn left(&mut self, reason: &LeaveReason) {
        self.disconnections[Disconnect::of(reason) as usize] += 1;
    }

    pub fn rejected(&mut self, why: Rejection) {
        self.rejected[why as usize] += 1;
    }

    pub fn lines_of(&self, kind: LineKind) -> u64 {
        self.lines[kind as usize]
    }

    pub fn disconnections_for(&self, reason: Disconnect) -> u64 {
        self.disconnections[reason as usize]
    }

    pub fn rejected_for(&self, why: Rejection) -> u64 {
        self.rejected[why as usize]
    }
}

/// A histogram with fixed buckets (upper bounds in seconds), for reload durations: a reload
/// takes from milliseconds (a quiet room) to minutes (a drain).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last one counts those above every bound.
    counts: [u64; Histogram::BOUNDS.len() + 1],
    sum: f64,
}

impl Histogram {
    pub const BOUNDS: [f64; 13] =
        [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

    pub fn observe(&mut self, duration: Duration) {
        let seconds = duration.as_secs_f64();
        let bucket = Histogram::BOUNDS.iter().position(|&b| seconds <= b);
        self.counts[bucket.unwrap_or(Histogram::BOUNDS.len())] += 1;
        self.sum += seconds;
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    pub fn sum(&self) -> f64 {
        self.sum
    }

    /// `(upper bound, observations in that bucket alone)`, the bound-less last bucket left out
    /// (the exposition's `+Inf` bucket is the count).
    pub fn buckets(&self) -> Vec<(f64, u64)> {
        Histogram::BOUNDS.iter().copied().zip(self.counts.iter().copied()).collect()
    }
}

/// Everything `/metrics` shows, at one moment: built by the supervisor, read by the responder.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Clients by worker slot; every slot is listed, with 0 when it has none.
    pub clients: BTreeMap<usize, u64>,
    pub clients_total: u64,
    /// Every worker's counts, those of workers that are gone included.
    pub workers: WorkerCounters,
    pub room: RoomCounters,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    pub reload_durations: Histogram,
    pub worker_restarts: u64,
    pub generation: u64,
    pub history_lines: u64,
    /// Cluster mode's numbers; `None` on a single host.
    pub cluster: Option<ClusterNumbers>,
}

/// The room across hosts as this host sees it (docs/cluster.md): what `status --json` shows
/// under `cluster`.
#[derive(Debug, Clone, Default)]
pub struct ClusterNumbers {
    pub connected: bool,
    pub unreachable_seconds: u64,
    pub last_seq: u64,
    pub checkpoint_seq: u64,
    pub held: u64,
    pub hosts: u64,
    pub members: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_its_own_counter() {
        let mut room = RoomCounters::default();
        room.left(&LeaveReason::Quit(Some("bye".into())));
        room.left(&LeaveReason::Restart);
        room.left(&LeaveReason::Restart);
        room.line(&RoomEvent::Me);
        room.rejected(Rejection::PerIp);
        assert_eq!(room.disconnections_for(Disconnect::Quit), 1);
        assert_eq!(room.disconnections_for(Disconnect::Server), 2);
        assert_eq!(room.disconnections_for(Disconnect::Lost), 0);
        assert_eq!(room.lines_of(LineKind::Me), 1);
        assert_eq!(room.rejected_for(Rejection::PerIp), 1);
        let labels: Vec<&str> = Disconnect::ALL.iter().map(|d| d.label()).collect();
        assert_eq!(
            labels,
            ["quit", "closed", "lost", "too_slow", "idle", "kicked", "banned", "server"]
        );
        for (i, d) in Disconnect::ALL.iter().enumerate() {
            assert_eq!(*d as usize, i);
        }
        for (i, k) in LineKind::ALL.iter().enumerate() {
            assert_eq!(*k as usize, i);
        }
        for (i, r) in Rejection::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
    }

    #[test]
    fn histogram_buckets_observations() {
        let mut h = Histogram::default();
        h.observe(Duration::from_millis(100));
        h.observe(Duration::from_millis(700));
        h.observe(Duration::from_secs(1000));
        assert_eq!(h.count(), 3);
        assert!((h.sum() - 1000.8).abs() < 1e-9);
        let buckets = h.buckets();
        assert_eq!(buckets[3], (0.1, 1));
        assert_eq!(buckets[6], (1.0, 1));
        assert_eq!(buckets.iter().map(|(_, n)| n).sum::<u64>(), 2, "the last one is above all");
    }
}
