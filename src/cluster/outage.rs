//! What a host does while NATS is out of its reach (SPEC §11): after `outage_notice` its
//! clients are told their lines are held, after `outage_timeout` they are sent away, and when
//! the room is back everyone who was told hears so.
//!
//! Pure logic over the connection's ups and downs and the time, so the rules are tested without
//! a network; the door ([`super::Cluster`]) feeds it the bridge's reports and the clock.

use std::time::{Duration, Instant};

/// What the hub must tell the host's clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// `* the room is unreachable; your lines will be sent when it is back`.
    Notice,
    /// `* the room is unreachable, please reconnect later`, and disconnect them.
    GiveUp,
    /// `* the room is back` (only after a notice).
    Back,
}

#[derive(Debug, Clone)]
pub struct Outage {
    notice: Duration,
    timeout: Duration,
    /// Since when NATS is unreachable (or, after a give-up, since the give-up).
    down_since: Option<Instant>,
    /// The clients were told (a `Back` is owed).
    noticed: bool,
}

impl Outage {
    /// A host starts cut off: until the bridge first reports the room reachable, the outage
    /// rules run from `now` (chatd starts and accepts while NATS is unreachable).
    pub fn new(notice: Duration, timeout: Duration, now: Instant) -> Outage {
        Outage { notice, timeout, down_since: Some(now), noticed: false }
    }

    /// The room became unreachable.
    pub fn down(&mut self, now: Instant) {
        if self.down_since.is_none() {
            self.down_since = Some(now);
        }
    }

    /// The room is reachable again (connected and the stream caught up).
    pub fn up(&mut self) -> Option<Step> {
        self.down_since = None;
        std::mem::take(&mut self.noticed).then_some(Step::Back)
    }

    /// Whether the room is unreachable now.
    pub fn is_down(&self) -> bool {
        self.down_since.is_some()
    }

    /// Since when the room is unreachable, for `status`.
    pub fn down_since(&self) -> Option<Instant> {
        self.down_since
    }

    /// What is due at `now`; call it every tick. After a give-up the clock starts again, so
    /// whoever connects during a long outage gets `outage_timeout` of its own before being
    /// sent away (and is told at once that the room is unreachable: the notice stands).
    pub fn tick(&mut self, now: Instant) -> Option<Step> {
        let since = self.down_since?;
        let down = now.saturating_duration_since(since);
        if down >= self.timeout {
            self.down_since = Some(now);
            self.noticed = true;
            return Some(Step::GiveUp);
        }
        if down >= self.notice && !self.noticed {
            self.noticed = true;
            return Some(Step::Notice);
        }
        None
    }

    /// Whether a client joining now is to be told at once that the room is unreachable.
    pub fn noticed(&self) -> bool {
        self.noticed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn notice_then_back() {
        let t0 = Instant::now();
        let mut o = Outage::new(s(3), s(60), t0);
        assert_eq!(o.up(), None, "connected at start: nobody was told anything");
        assert_eq!(o.tick(t0 + s(100)), None);
        o.down(t0 + s(10));
        o.down(t0 + s(11));
        assert_eq!(o.tick(t0 + s(12)), None);
        assert_eq!(o.tick(t0 + s(13)), Some(Step::Notice));
        assert_eq!(o.tick(t0 + s(14)), None, "once");
        assert_eq!(o.up(), Some(Step::Back));
        assert_eq!(o.up(), None);
        assert!(!o.is_down());
    }

    #[test]
    fn a_short_outage_goes_unnoticed() {
        let t0 = Instant::now();
        let mut o = Outage::new(s(3), s(60), t0);
        o.up();
        o.down(t0);
        assert_eq!(o.tick(t0 + Duration::from_millis(2999)), None);
        assert_eq!(o.up(), None);
    }

    #[test]
    fn give_up_after_the_timeout_then_again_for_latecomers() {
        let t0 = Instant::now();
        let mut o = Outage::new(s(3), s(60), t0);
        assert_eq!(o.tick(t0 + s(3)), Some(Step::Notice), "starting cut off counts");
        assert_eq!(o.tick(t0 + s(60)), Some(Step::GiveUp));
        assert!(o.noticed());
        assert_eq!(o.tick(t0 + s(61)), None);
        assert_eq!(o.tick(t0 + s(120)), Some(Step::GiveUp));
        assert_eq!(o.up(), Some(Step::Back));
    }
}
