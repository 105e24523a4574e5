//! Operators' commands in cluster mode (SPEC §9 across hosts): a kick, a ban or an unban given
//! on any host goes into the stream, so every host applies it at its place in the room's order.
//! The host serving a kicked member removes it (its leave says `kicked`, once, everywhere);
//! every host keeps the same ban list — read back from the stream at start too — and kicks its
//! own matching clients.

use super::{ClusterMode, Hub, MemberId, Outbox, REMOTE};
use crate::bus::message::{LeaveReason, SessionId};
use crate::cluster::events::Event;
use crate::moderation::{Ban, Target};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Now, in ms since the Unix epoch.
fn epoch_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Hub {
    fn mode(&mut self) -> Option<&mut ClusterMode> {
        self.cluster.as_deref_mut()
    }

    /// `chatd kick` of a member served by another host: asks that host through the stream.
    /// False outside cluster mode or when the member is not another host's.
    pub(in crate::supervisor::hub) fn cluster_kick(
        &mut self,
        session: SessionId,
        reason: &Option<String>,
    ) -> bool {
        let Some(mode) = self.cluster.as_deref_mut() else { return false };
        if self.members.get(&session).is_none_or(|m| m.worker != REMOTE) {
            return false;
        }
        let id = MemberId(session.0 & !(1 << 63));
        let Some(member) = mode.door.room().member(id) else { return false };
        let (node, session) = (member.node.clone(), member.session);
        mode.door.publish(Event::Kick { node, session, reason: reason.clone() });
        true
    }

    /// `chatd ban` in cluster mode: into the stream (every host applies it, this one too).
    /// Returns the nicks it will kick, on every host; `None` outside cluster mode.
    pub(in crate::supervisor::hub) fn cluster_ban(&mut self, ban: &Ban) -> Option<Vec<String>> {
        let until_ms = ban.until.map(|until| {
            let left = until.saturating_duration_since(Instant::now());
            epoch_ms().saturating_add(i64::try_from(left.as_millis()).unwrap_or(i64::MAX))
        });
        let event = Event::Ban { target: ban.target, until_ms, reason: ban.reason.clone() };
        self.mode()?.door.publish(event);
        let mut hit: Vec<String> = self
            .members
            .values()
            .filter(|m| ban.target.contains(m.ip))
            .map(|m| m.nick.to_string())
            .collect();
        hit.sort_unstable();
        Some(hit)
    }

    /// `chatd unban` in cluster mode: into the stream. Whether there was such a ban here;
    /// `None` outside cluster mode.
    pub(in crate::supervisor::hub) fn cluster_unban(&mut self, target: &Target) -> Option<bool> {
        let known = self.bans.commanded().iter().any(|b| b.target == *target);
        self.mode()?.door.publish(Event::Unban { target: *target });
        Some(known)
    }

    /// A kick from the stream: this host removes the member if it is one of its own.
    pub(super) fn apply_kick(
        &mut self,
        node: &str,
        session: SessionId,
        reason: Option<String>,
        out: &mut impl Outbox,
    ) {
        let mine = self.cluster.as_ref().is_some_and(|c| c.door.node() == node);
        if mine && self.members.get(&session).is_some_and(|m| m.worker != REMOTE) {
            self.remove(session, LeaveReason::Kicked(reason), out);
        }
    }

    /// A ban from the stream: kept (unless it has already ended), and this host's matching
    /// clients kicked.
    pub(super) fn apply_ban(
        &mut self,
        target: Target,
        until_ms: Option<i64>,
        reason: Option<String>,
        out: &mut impl Outbox,
    ) {
        let until = match until_ms {
            None => None,
            Some(ms) if ms <= epoch_ms() => return,
            Some(ms) => {
                let left = u64::try_from(ms - epoch_ms()).unwrap_or(0);
                Some(Instant::now() + Duration::from_millis(left))
            }
        };
        self.bans.add(Ban { target, until, reason: reason.clone() });
        self.bans_edits += 1;
        self.kick_matching(|ip| target.contains(ip), &reason, out);
    }

    /// An unban from the stream.
    pub(super) fn apply_unban(&mut self, target: &Target) {
        self.bans.remove(target);
        self.bans_edits += 1;
    }
}
