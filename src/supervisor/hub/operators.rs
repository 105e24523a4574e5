//! What operators do to the room through the control socket (`chatd say`, `kick`, `ban`,
//! `unban`, `bans`, `who`), and the ban check at every join. The hub does it because it is the
//! one place that knows every session's nick, address and worker, and that numbers room lines.

use super::{Hub, Outbox, WorkerId, direct};
use crate::bus::message::{LeaveReason, RoomEvent, SessionId};
use crate::moderation::{Ban, Target};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// A session as `chatd who` lists it, before the worker adds idle time and queued output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub session: SessionId,
    pub nick: String,
    pub addr: String,
    pub worker: WorkerId,
    pub connected: Duration,
}

impl Hub {
    /// `chatd say TEXT`: `* notice: TEXT` to everyone, a numbered room line.
    pub fn notice(&mut self, text: &str, out: &mut impl Outbox) {
        if self.cluster_notice(text) {
            return;
        }
        self.publish(None, format!("* notice: {text}"), RoomEvent::Notice, out);
    }

    /// `chatd kick NICK [REASON]`: the client is told, the room sees it leave, its worker
    /// closes it. Fails when nobody has that nick.
    pub fn kick(
        &mut self,
        nick: &str,
        reason: Option<String>,
        out: &mut impl Outbox,
    ) -> Result<String, String> {
        let found = self.nicks.get(&nick.to_ascii_lowercase()).copied();
        let Some(session) = found.filter(|s| self.members.contains_key(s)) else {
            return Err(format!("no such nick '{nick}'"));
        };
        let name = self.members.get(&session).map(|m| m.nick.to_string()).unwrap_or_default();
        if !self.cluster_kick(session, &reason) {
            self.remove(session, LeaveReason::Kicked(reason), out);
        }
        Ok(name)
    }

    /// `chatd ban`: kept until lifted or `until`; the members it matches are kicked. Returns
    /// their nicks.
    pub fn ban(&mut self, ban: Ban, out: &mut impl Outbox) -> Vec<String> {
        if let Some(nicks) = self.cluster_ban(&ban) {
            return nicks;
        }
        let (target, reason) = (ban.target, ban.reason.clone());
        self.bans.add(ban);
        self.bans_edits += 1;
        self.kick_matching(|ip| target.contains(ip), &reason, out)
    }

    /// `chatd unban`: false when there was no such ban from the command line.
    pub fn unban(&mut self, target: &Target) -> bool {
        if let Some(known) = self.cluster_unban(target) {
            return known;
        }
        self.bans_edits += 1;
        self.bans.remove(target)
    }

    /// Every ban in force (expired ones are forgotten first).
    pub fn bans(&mut self) -> &crate::moderation::Bans {
        self.bans.expire(Instant::now());
        &self.bans
    }

    /// Kicks the members `[moderation] banned` matches since the last reload (it may have added
    /// addresses); cheap when there is nothing to do, so the supervisor calls it every turn.
    pub fn enforce_configured_bans(&mut self, out: &mut impl Outbox) {
        if !std::mem::take(&mut self.bans_changed) {
            return;
        }
        let banned = self.bans.configured().to_vec();
        self.kick_matching(|ip| banned.iter().any(|t| t.contains(ip)), &None, out);
    }

    /// Every session, by session id (join order).
    pub fn sessions(&self) -> Vec<Session> {
        let now = Instant::now();
        let mut sessions: Vec<Session> = self
            .members
            .iter()
            .map(|(session, m)| Session {
                session: *session,
                nick: m.nick.to_string(),
                addr: m.addr_text.to_string(),
                worker: m.worker,
                connected: now.saturating_duration_since(m.since),
            })
            .collect();
        sessions.sort_unstable_by_key(|s| s.session);
        sessions
    }

    /// Whether a new connection from `ip` must be refused.
    pub(super) fn is_banned(&self, ip: IpAddr) -> bool {
        self.bans.is_banned(ip, Instant::now())
    }

    pub(super) fn kick_matching(
        &mut self,
        matches: impl Fn(IpAddr) -> bool,
        reason: &Option<String>,
        out: &mut impl Outbox,
    ) -> Vec<String> {
        let mut hit: Vec<(SessionId, String)> = self
            .members
            .iter()
            .filter(|(s, m)| matches(m.ip) && !self.is_remote(**s))
            .map(|(s, m)| (*s, m.nick.to_string()))
            .collect();
        hit.sort_unstable();
        for (session, _) in &hit {
            self.remove(*session, LeaveReason::Banned(reason.clone()), out);
        }
        hit.into_iter().map(|(_, nick)| nick).collect()
    }

    /// Tells the client why, then takes it out of the room; the worker closes it on `Left`.
    pub(super) fn remove(
        &mut self,
        session: SessionId,
        reason: LeaveReason,
        out: &mut impl Outbox,
    ) {
        let Some(worker) = self.members.get(&session).map(|m| m.worker) else { return };
        let told = match &reason {
            LeaveReason::Kicked(Some(why)) | LeaveReason::Banned(Some(why)) => {
                format!("* you were kicked: {why}")
            }
            _ => "* you were kicked".to_owned(),
        };
        direct(out, worker, session, vec![told]);
        self.leave(session, &reason, out);
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{Recorder, admit, hub, room_lines};
    use super::*;
    use crate::bus::message::{RoomRequest, RoomUpdate};
    use crate::metrics::{Disconnect, LineKind, Rejection};
    use std::net::SocketAddr;

    const W0: WorkerId = WorkerId(0);
    const W1: WorkerId = WorkerId(1);

    fn target(text: &str) -> Target {
        Target::parse(text).expect("target")
    }

    #[test]
    fn kick_tells_the_client_then_the_room() {
        let mut room = hub(|_| {});
        let (a, _) = admit(&mut room, W1, 1);
        admit(&mut room, W0, 2);
        let mut out = Recorder::default();
        assert_eq!(room.kick("GUEST-1", Some("spam".into()), &mut out), Ok("guest-1".into()));
        assert_eq!(
            out.sent[0],
            (
                Some(W1),
                RoomUpdate::Direct { session: a, lines: vec!["* you were kicked: spam".into()] }
            )
        );
        assert_eq!(room_lines(&out), [(3, "* guest-1 left (kicked: spam)".to_string())]);
        assert!(out.sent.contains(&(Some(W1), RoomUpdate::Left { session: a })));
        assert_eq!(room.kick("guest-1", None, &mut out), Err("no such nick 'guest-1'".into()));
        assert_eq!(room.counters().disconnections_for(Disconnect::Kicked), 1);
    }

    #[test]
    fn notices_are_numbered_room_lines() {
        let mut room = hub(|_| {});
        admit(&mut room, W0, 1);
        let mut out = Recorder::default();
        room.notice("hello all", &mut out);
        assert_eq!(room_lines(&out), [(2, "* notice: hello all".to_string())]);
        assert_eq!(room.counters().lines_of(LineKind::Notice), 1);
    }

    #[test]
    fn bans_kick_the_matching_and_refuse_new_connections() {
        let mut room = hub(|_| {});
        let (a, _) = admit(&mut room, W0, 1);
        let mut out = Recorder::default();
        let ban = Ban { target: target("127.0.0.0/8"), until: None, reason: None };
        assert_eq!(room.ban(ban, &mut out), ["guest-1"]);
        assert!(out.sent.contains(&(
            Some(W0),
            RoomUpdate::Direct { session: a, lines: vec!["* you were kicked".into()] }
        )));
        assert_eq!(room_lines(&out), [(2, "* guest-1 left (kicked)".to_string())]);
        assert_eq!(room.counters().disconnections_for(Disconnect::Banned), 1);
        let mut out = Recorder::default();
        let addr = SocketAddr::from(([127, 0, 0, 9], 5));
        room.handle(W1, RoomRequest::Join { conn: crate::bus::message::ConnId(9), addr }, &mut out);
        let refused = RoomUpdate::Refused {
            conn: crate::bus::message::ConnId(9),
            line: "! you are banned".into(),
        };
        assert_eq!(out.sent, [(Some(W1), refused)]);
        assert_eq!(room.counters().rejected_for(Rejection::Banned), 1);
        assert!(room.unban(&target("127.0.0.0/8")));
        admit(&mut room, W1, 6);
    }

    #[test]
    fn a_reload_adding_to_the_configured_bans_kicks_the_matching() {
        let mut room = hub(|_| {});
        admit(&mut room, W0, 1);
        let mut out = Recorder::default();
        room.enforce_configured_bans(&mut out);
        assert!(out.sent.is_empty());
        let mut config = crate::config::Config::default();
        config.moderation.banned = vec![target("127.0.0.1")];
        room.reconfigure(&config);
        room.enforce_configured_bans(&mut out);
        assert_eq!(room_lines(&out), [(2, "* guest-1 left (kicked)".to_string())]);
        // Once only: the same list on the next reload changes nothing.
        room.reconfigure(&config);
        let mut out = Recorder::default();
        room.enforce_configured_bans(&mut out);
        assert!(out.sent.is_empty());
    }
}
