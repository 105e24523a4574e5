//! The ban list: bans from `chatd ban` (until lifted or expired) and the permanent ones of
//! `[moderation] banned`, which a reload replaces without touching the others.

use super::Target;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// One ban from `chatd ban`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ban {
    pub target: Target,
    /// `None`: until lifted.
    pub until: Option<Instant>,
    pub reason: Option<String>,
}

impl Ban {
    /// Time left at `now`; `None` for a ban without end.
    pub fn left(&self, now: Instant) -> Option<Duration> {
        self.until.map(|until| until.saturating_duration_since(now))
    }
}

/// Every ban in force.
#[derive(Debug, Default)]
pub struct Bans {
    /// From the command line, in the order they were given; one per target.
    commanded: Vec<Ban>,
    /// From `[moderation] banned`.
    configured: Vec<Target>,
}

impl Bans {
    /// No bans but `[moderation] banned`.
    pub fn configured_with(banned: &[Target]) -> Bans {
        Bans { commanded: Vec::new(), configured: banned.to_vec() }
    }

    /// Replaces the configured list (start, reload).
    pub fn configure(&mut self, banned: &[Target]) {
        self.configured = banned.to_vec();
    }

    /// Adds a ban, or replaces the one with the same target.
    pub fn add(&mut self, ban: Ban) {
        self.commanded.retain(|b| b.target != ban.target);
        self.commanded.push(ban);
    }

    /// Lifts the ban on exactly `target`; false when there is none (configured ones stay: they
    /// are lifted by editing the file).
    pub fn remove(&mut self, target: &Target) -> bool {
        let before = self.commanded.len();
        self.commanded.retain(|b| b.target != *target);
        self.commanded.len() != before
    }

    /// Whether `target` is in `[moderation] banned`.
    pub fn is_configured(&self, target: &Target) -> bool {
        self.configured.contains(target)
    }

    /// Whether `ip` is banned at `now`.
    pub fn is_banned(&self, ip: IpAddr, now: Instant) -> bool {
        self.configured.iter().any(|t| t.contains(ip))
            || self
                .commanded
                .iter()
                .any(|b| b.until.is_none_or(|u| u > now) && b.target.contains(ip))
    }

    /// Forgets the bans that ran out.
    pub fn expire(&mut self, now: Instant) {
        self.commanded.retain(|b| b.until.is_none_or(|u| u > now));
    }

    /// The bans from the command line still in force, oldest first.
    pub fn commanded(&self) -> &[Ban] {
        &self.commanded
    }

    pub fn configured(&self) -> &[Target] {
        &self.configured
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(text: &str) -> Target {
        Target::parse(text).expect("target")
    }

    #[test]
    fn bans_expire_replace_and_lift() {
        let now = Instant::now();
        let ip: IpAddr = "10.1.2.3".parse().expect("ip");
        let mut bans = Bans::default();
        assert!(!bans.is_banned(ip, now));
        let until = Some(now + Duration::from_secs(5));
        bans.add(Ban { target: target("10.1.0.0/16"), until, reason: None });
        assert!(bans.is_banned(ip, now));
        assert!(!bans.is_banned(ip, now + Duration::from_secs(6)));
        bans.add(Ban { target: target("10.1.0.0/16"), until: None, reason: Some("x".into()) });
        assert_eq!(bans.commanded().len(), 1);
        assert!(bans.is_banned(ip, now + Duration::from_secs(6)));
        assert!(bans.remove(&target("10.1.0.0/16")));
        assert!(!bans.remove(&target("10.1.0.0/16")));
        bans.configure(&[target("10.0.0.0/8")]);
        assert!(bans.is_banned(ip, now) && bans.is_configured(&target("10.0.0.0/8")));
        bans.add(Ban { target: target("192.0.2.1"), until, reason: None });
        bans.expire(now + Duration::from_secs(5));
        assert!(bans.commanded().is_empty());
    }
}
