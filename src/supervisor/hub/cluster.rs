//! The hub in cluster mode (SPEC §11, docs/cluster.md): the room comes from the JetStream
//! stream instead of the hub's own numbering.
//!
//! What a local client asks for (join, leave, say, `/me`, `/nick`, `chatd say`) is published
//! through the one door, [`Cluster`]; nothing changes the room until the stream gives it back,
//! in stream order, and every host applies it alike. The applied changes are then rendered and
//! broadcast exactly like the hub's own events on one host (`Hub::publish`), so the workers,
//! `/who`, history, replay and hand-off on reload work unchanged. Members served by other hosts
//! are kept in the hub's member list under a session id of their own ([`remote_session`]) and
//! the worker [`REMOTE`], which no worker has: lines for them go nowhere, except private
//! messages, which go over core NATS to their host.

mod operators;
mod saved;

use super::{Hub, Member, Outbox, UNADOPTED, WorkerId, direct};
use crate::bus::message::{ConnId, LeaveReason, RoomEvent, RoomRequest, RoomUpdate, SessionId};
use crate::cluster::events::{Event, Private};
use crate::cluster::outage::Step;
use crate::cluster::room::{self, Applied, Change, MemberId};
use crate::cluster::{Cluster, Output};
use crate::protocol::template::Values;
use chrono::TimeZone;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// The worker of members served by other hosts: none.
pub const REMOTE: WorkerId = WorkerId(usize::MAX);

/// Session ids of other hosts' members in this hub: the member's number in the room with the
/// top bit set, far from the local sessions counted from 1.
fn remote_session(id: MemberId) -> SessionId {
    SessionId(id.0 | 1 << 63)
}

const UNREACHABLE: &str = "* the room is unreachable; your lines will be sent when it is back";
pub const GIVE_UP: &str = "* the room is unreachable, please reconnect later";
pub const BACK: &str = "* the room is back";

/// The hub's part in the cluster: the door, and the joins waiting for the stream.
pub struct ClusterMode {
    door: Cluster,
    /// Local joins published and not yet applied: the worker and connection to admit.
    pending: HashMap<SessionId, (WorkerId, ConnId)>,
    /// Outage notices sent, so `* the room is back` goes only where one was.
    noticed: bool,
    /// This host's generation in the room, to tell a declaration of its own loss from the end
    /// of one of its earlier lives read back from the stream.
    generation: u64,
    /// Members were learnt from a roster since the workers last heard of the room.
    learnt: bool,
    /// Started after a crash, the stream not yet read to its end: this host's joins read
    /// again wait for their kept sessions (`supervisor/kept.rs`).
    resuming: bool,
    /// After a crash: the crashed supervisor had told its clients the room was unreachable,
    /// and they have not heard it is back; the kept sessions are told when they are resumed.
    told_unreachable: bool,
}

impl ClusterMode {
    pub fn new(door: Cluster) -> ClusterMode {
        let generation = door.generation();
        ClusterMode {
            door,
            pending: HashMap::new(),
            noticed: false,
            generation,
            learnt: false,
            resuming: false,
            told_unreachable: false,
        }
    }

    pub fn door(&self) -> &Cluster {
        &self.door
    }
}

impl Hub {
    /// Puts the hub in cluster mode; called once at start.
    pub fn attach_cluster(&mut self, door: Cluster) {
        // Local session ids are the members' names in the stream: they must differ from those
        // of this host's earlier lives, whose events are read back at start. Milliseconds
        // since the epoch, times 65,536, stay far below the remote ids' top bit.
        let ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
        let first = u64::try_from(ms << 16).unwrap_or(0);
        self.next_session = SessionId(self.next_session.0.max(first));
        self.cluster = Some(Box::new(ClusterMode::new(door)));
    }

    /// The cluster door, in cluster mode.
    pub fn cluster(&self) -> Option<&Cluster> {
        self.cluster.as_ref().map(|c| c.door())
    }

    /// Whether this host's clients were told the room is unreachable, and not yet that it is
    /// back (a change the stored room keeps).
    pub fn cluster_noticed(&self) -> bool {
        self.cluster.as_ref().is_some_and(|c| c.noticed || c.told_unreachable)
    }

    /// After a crash: whether the kept sessions, told by the crashed supervisor that the room
    /// was unreachable, must hear that it is back when they are resumed. Once.
    pub fn take_told_unreachable(&mut self) -> bool {
        self.cluster.as_mut().is_some_and(|c| std::mem::take(&mut c.told_unreachable))
    }

    /// Started after a crash in cluster mode, and the stream not yet read to its end.
    pub fn cluster_resuming(&self) -> bool {
        self.cluster.as_ref().is_some_and(|c| c.resuming)
    }

    /// Whether the member is served by another host (only in cluster mode).
    pub(super) fn is_remote(&self, session: SessionId) -> bool {
        self.members.get(&session).is_some_and(|m| m.worker == REMOTE)
    }

    /// Clients of this host (in cluster mode the member list holds the whole room).
    pub fn local_online(&self) -> usize {
        self.members.values().filter(|m| m.worker != REMOTE).count()
    }

    /// Handles a request in cluster mode; gives back the ones that do not go through the stream
    /// (and every one outside cluster mode).
    pub(super) fn cluster_request(
        &mut self,
        worker: WorkerId,
        msg: RoomRequest,
        out: &mut impl Outbox,
    ) -> Option<RoomRequest> {
        if self.cluster.is_none() {
            return Some(msg);
        }
        let event = match msg {
            RoomRequest::Join { conn, addr } => {
                self.cluster_join(worker, conn, addr, out);
                return None;
            }
            RoomRequest::Say { session, text } => Event::Say { session, text },
            RoomRequest::Me { session, text } => Event::Me { session, text },
            RoomRequest::Nick { session, nick } => {
                let nick = self.check_nick(worker, session, nick, out)?;
                Event::Nick { session, nick }
            }
            RoomRequest::Msg { session, to, text } => {
                self.cluster_private(worker, session, &to, &text, out);
                return None;
            }
            other => return Some(other),
        };
        let session = match &event {
            Event::Say { session, .. }
            | Event::Me { session, .. }
            | Event::Nick { session, .. } => *session,
            _ => return None,
        };
        if self.members.get(&session).is_some_and(|m| m.worker != REMOTE) {
            if let Some(mode) = self.cluster.as_mut() {
                mode.door.publish(event);
            }
        }
        None
    }

    /// A local member leaves (or is kicked) in cluster mode: into the stream.
    pub(super) fn cluster_leave(&mut self, session: SessionId, reason: &LeaveReason) -> bool {
        let Some(mode) = self.cluster.as_mut() else { return false };
        if self.members.get(&session).is_some_and(|m| m.worker != REMOTE) {
            mode.door.publish(Event::Leave { session, reason: reason.clone() });
        }
        true
    }

    fn cluster_join(
        &mut self,
        worker: WorkerId,
        conn: ConnId,
        addr: SocketAddr,
        out: &mut impl Outbox,
    ) {
        let pending = self.cluster.as_ref().map_or(0, |c| c.pending.len());
        let ip = addr.ip();
        let refusal = if self.is_banned(ip) {
            Some((crate::metrics::Rejection::Banned, "! you are banned"))
        } else if self.local_online() + pending >= self.settings.max_clients {
            Some((crate::metrics::Rejection::Full, "! server full"))
        } else if self.settings.max_clients_per_ip > 0
            && self.per_ip.get(&ip).copied().unwrap_or(0) >= self.settings.max_clients_per_ip
        {
            Some((crate::metrics::Rejection::PerIp, "! too many connections from your address"))
        } else {
            None
        };
        if let Some((why, line)) = refusal {
            self.counters.rejected(why);
            out.to_worker(worker, RoomUpdate::Refused { conn, line: line.into() });
            return;
        }
        let session = self.next_session;
        self.next_session = session.next();
        if let Some(mode) = self.cluster.as_mut() {
            mode.pending.insert(session, (worker, conn));
            mode.door.publish(Event::Join { session, addr });
        }
    }

    fn cluster_private(
        &mut self,
        worker: WorkerId,
        session: SessionId,
        to: &str,
        text: &str,
        out: &mut impl Outbox,
    ) {
        let Some(target) = self.nicks.get(&to.to_ascii_lowercase()).copied() else {
            return self.private(worker, session, to, text, out);
        };
        if self.members.get(&target).is_none_or(|m| m.worker != REMOTE) {
            return self.private(worker, session, to, text, out);
        }
        let (Some(mode), Some(sender)) = (self.cluster.as_ref(), self.members.get(&session)) else {
            return;
        };
        let found = mode.door.room().by_nick(to).map(|(_, m)| (m.node.clone(), m.session));
        let Some((node, to_session)) = found else { return };
        let time = self.clock.now(&self.settings.time_format).to_string();
        let private = Private { from: sender.nick.to_string(), to: to_session, text: text.into() };
        mode.door.send_private(&node, &private);
        let nick = self.members.get(&target).map(|m| m.nick.to_string()).unwrap_or_default();
        direct(out, worker, session, vec![format!("{time} [pm to {nick}] {text}")]);
    }

    /// What the stream and the outage rules brought since the last call; called on every turn
    /// of the supervisor's loop (the bridge's waker ends its wait) and so on every tick.
    pub fn poll_cluster(&mut self, out: &mut impl Outbox) {
        let Some(mode) = self.cluster.as_mut() else { return };
        for output in mode.door.poll(Instant::now()) {
            match output {
                Output::Applied(applied) => self.apply(applied, out),
                Output::Outage(step) => self.outage(step, out),
                Output::Resumed => {
                    if let Some(mode) = self.cluster.as_mut() {
                        mode.resuming = false;
                    }
                }
                Output::Restored { history } => self.restored(history),
                Output::Private(private) => {
                    if let Some(member) = self.members.get(&private.to) {
                        let time = self.clock.now(&self.settings.time_format).to_string();
                        let line = format!("{time} [pm from {}] {}", private.from, private.text);
                        direct(out, member.worker, private.to, vec![line]);
                    }
                }
            }
        }
        // Members learnt from a roster came without a join line, which is what tells the
        // workers: they get the whole room again instead (rare: a roster teaches a room only
        // what a trimmed stream lacked).
        if self.cluster.as_mut().is_some_and(|c| std::mem::take(&mut c.learnt)) {
            for frame in self.sync_frames() {
                out.to_all(frame);
            }
        }
        // Here, between two polls, the history is that of the room as applied.
        if self.cluster.as_ref().is_some_and(|c| c.door.checkpoint_due()) {
            let history = self.history.iter().map(|line| line.to_string()).collect();
            if let Some(mode) = self.cluster.as_mut() {
                mode.door.checkpoint(history);
            }
        }
    }

    /// Started from a checkpoint: the room's members are there without joins, and the history
    /// is the checkpoint's; the workers get the whole room, as after members learnt from a
    /// roster.
    fn restored(&mut self, history: Vec<String>) {
        let Some(mode) = self.cluster.as_ref() else { return };
        let members: Vec<(SessionId, room::Member)> = mode
            .door
            .room()
            .members()
            .map(|(id, m)| (self.hub_session(id, &m.node, m.session), m.clone()))
            .collect();
        for (session, member) in members {
            self.add_member(session, &member, REMOTE);
        }
        for line in history {
            self.history.push_back(line.into());
            self.history_pushed += 1;
        }
        self.trim_history();
        if let Some(mode) = self.cluster.as_mut() {
            mode.learnt = true;
        }
    }

    /// The hub's session id of a room member: its own for this host's, [`remote_session`] else.
    fn hub_session(&self, id: MemberId, node: &str, session: SessionId) -> SessionId {
        let mine = self.cluster.as_ref().is_some_and(|c| c.door.node() == node);
        if mine { session } else { remote_session(id) }
    }

    fn apply(&mut self, applied: Applied, out: &mut impl Outbox) {
        let time = chrono::Local
            .timestamp_millis_opt(applied.time_ms)
            .single()
            .unwrap_or_else(chrono::Local::now)
            .format(&self.settings.time_format)
            .to_string();
        match applied.change {
            Change::Joined { id, member } => {
                let session = self.hub_session(id, &member.node, member.session);
                let admit = self.cluster.as_mut().and_then(|c| c.pending.remove(&session));
                // Read again after a crash: this host's join whose session may be kept.
                let resumed = self
                    .cluster
                    .as_ref()
                    .is_some_and(|c| c.resuming && c.door.node() == member.node);
                let worker = match admit {
                    Some((worker, _)) => worker,
                    None if resumed => UNADOPTED,
                    None => REMOTE,
                };
                self.add_member(session, &member, worker);
                let connect = format!("connect {} as {}", member.addr, member.nick);
                self.announce_join(admit, session, member.nick, out);
                if worker != REMOTE {
                    self.audit(worker, connect, out);
                }
            }
            Change::Left { id, member, reason } => {
                let session = self.hub_session(id, &member.node, member.session);
                let worker = self.members.get(&session).map(|m| m.worker);
                if let (Some(w), LeaveReason::Lost) = (worker.filter(|w| *w != REMOTE), &reason) {
                    // The room lost this host's member (the host was declared gone while cut
                    // off): the client is still here and is told before it is closed.
                    direct(out, w, session, vec![GIVE_UP.into()]);
                }
                let line = self.remove_member(session, &reason, out);
                if let (Some(worker), Some(line)) = (worker.filter(|w| *w != REMOTE), line) {
                    self.audit(worker, line, out);
                }
            }
            Change::Said { id, member, text } => {
                let session = self.hub_session(id, &member.node, member.session);
                // From the room's member, which a roster may have added without a join.
                let addr = member.addr.to_string();
                let mut line = String::with_capacity(text.len() + 32);
                let values = Values {
                    time: &time,
                    nick: &member.nick,
                    addr: &addr,
                    text: &text,
                    seq: applied.seq,
                };
                self.settings.message_format.render_into(&values, &mut line);
                let skip = (!self.settings.echo).then_some(session);
                self.publish(skip, line, RoomEvent::Chat, out);
            }
            Change::Me { id, member, text } => {
                let session = self.hub_session(id, &member.node, member.session);
                let line = format!("{time} * {} {}", member.nick, text);
                let skip = (!self.settings.echo).then_some(session);
                self.publish(skip, line, RoomEvent::Me, out);
            }
            Change::Renamed { id, member, old } => {
                let session = self.hub_session(id, &member.node, member.session);
                let nick = member.nick;
                self.nicks.remove(&old.to_ascii_lowercase());
                self.nicks.insert(nick.to_ascii_lowercase(), session);
                let Some(m) = self.members.get_mut(&session) else { return };
                m.nick = nick.clone().into_boxed_str();
                let (worker, audit) = (m.worker, format!("nick {old} -> {nick} ({})", m.addr_text));
                let line = format!("* {old} is now known as {nick}");
                self.publish(None, line, RoomEvent::Nick { session, nick }, out);
                if worker != REMOTE {
                    self.audit(worker, audit, out);
                }
            }
            Change::NickRefused { node, session, nick } => {
                let mine = self.cluster.as_ref().is_some_and(|c| c.door.node() == node);
                if let Some(m) = self.members.get(&session).filter(|_| mine) {
                    direct(out, m.worker, session, vec![format!("! nickname '{nick}' is taken")]);
                }
            }
            Change::Notice { text } => {
                self.publish(None, format!("* notice: {text}"), RoomEvent::Notice, out)
            }
            Change::Kick { node, session, reason } => self.apply_kick(&node, session, reason, out),
            Change::Ban { target, until_ms, reason } => {
                self.apply_ban(target, until_ms, reason, out)
            }
            Change::Unban { target } => self.apply_unban(&target),
            Change::Learnt { id, member } => {
                // Never one of this host's: those joined through it.
                let session = remote_session(id);
                let mine = self.cluster.as_ref().is_some_and(|c| c.door.node() == member.node);
                if !mine && !self.members.contains_key(&session) {
                    self.add_member(session, &member, REMOTE);
                    if let Some(mode) = self.cluster.as_mut() {
                        mode.learnt = true;
                    }
                }
            }
            Change::HostGone { node, generation, .. } => {
                let Some(mode) = self.cluster.as_mut() else { return };
                if mode.door.node() == node && mode.generation == generation {
                    mode.generation = mode.door.generation();
                    // Declared gone while cut off: its members have left the room (and were
                    // told, above); joins still waiting are refused.
                    self.disconnect_local(out);
                }
            }
        }
    }

    /// A room member into the hub's list, served by `worker` ([`REMOTE`]: by another host).
    fn add_member(&mut self, session: SessionId, member: &room::Member, worker: WorkerId) {
        let ip = member.addr.ip();
        if worker != REMOTE {
            *self.per_ip.entry(ip).or_default() += 1;
        }
        self.nicks.insert(member.nick.to_ascii_lowercase(), session);
        let m = Member {
            nick: member.nick.clone().into_boxed_str(),
            ip,
            addr_text: member.addr.to_string().into_boxed_str(),
            worker,
            since: Instant::now(),
        };
        self.members.insert(session, m);
    }

    fn outage(&mut self, step: Step, out: &mut impl Outbox) {
        let line = match step {
            Step::Notice => UNREACHABLE,
            Step::Back => BACK,
            Step::GiveUp => return self.disconnect_local(out),
        };
        if let Some(mode) = self.cluster.as_mut() {
            if step == Step::Back && !std::mem::replace(&mut mode.noticed, false) {
                return;
            }
            mode.noticed |= step == Step::Notice;
        }
        for (session, member) in self.members.iter().filter(|(_, m)| m.worker != REMOTE) {
            direct(out, member.worker, *session, vec![line.into()]);
        }
    }

    /// Tells this host's clients the room is unreachable and closes them; their leaves go to
    /// the stream (held until it is reachable), and the room changes when they are applied.
    /// Joins still waiting for the stream are refused, and left at once after their join.
    fn disconnect_local(&mut self, out: &mut impl Outbox) {
        let mut local: Vec<(SessionId, WorkerId)> = self
            .members
            .iter()
            .filter(|(_, m)| m.worker != REMOTE)
            .map(|(s, m)| (*s, m.worker))
            .collect();
        local.sort_unstable();
        for (session, worker) in local {
            direct(out, worker, session, vec![GIVE_UP.into()]);
            out.to_worker(worker, RoomUpdate::Left { session });
        }
        let Some(mode) = self.cluster.as_mut() else { return };
        let mut pending: Vec<_> = mode.pending.drain().collect();
        pending.sort_unstable_by_key(|(s, _)| *s);
        for (session, (worker, conn)) in pending {
            out.to_worker(worker, RoomUpdate::Refused { conn, line: GIVE_UP.into() });
            mode.door.publish(Event::Leave { session, reason: LeaveReason::Lost });
        }
        let mut local: Vec<SessionId> =
            self.members.iter().filter(|(_, m)| m.worker != REMOTE).map(|(s, _)| *s).collect();
        local.sort_unstable();
        for session in local {
            mode.door.publish(Event::Leave { session, reason: LeaveReason::Lost });
        }
    }

    /// `chatd say` in cluster mode: into the stream.
    pub(super) fn cluster_notice(&mut self, text: &str) -> bool {
        let Some(mode) = self.cluster.as_mut() else { return false };
        mode.door.publish(Event::Notice { text: text.into() });
        true
    }

    /// A worker is gone: its clients leave through the stream.
    pub(super) fn cluster_worker_lost(&mut self, worker: WorkerId) -> bool {
        let Some(mode) = self.cluster.as_mut() else { return false };
        let mut lost: Vec<SessionId> =
            self.members.iter().filter(|(_, m)| m.worker == worker).map(|(s, _)| *s).collect();
        lost.sort_unstable();
        for session in lost {
            mode.door.publish(Event::Leave { session, reason: LeaveReason::Lost });
        }
        true
    }

    /// A clean stop: this host's members leave, then `HostDown`, flushed before the bridge
    /// closes.
    pub fn stop_cluster(&mut self) {
        let Some(mode) = self.cluster.take() else { return };
        let mode = *mode;
        let mut door = mode.door;
        let mut local: Vec<SessionId> =
            self.members.iter().filter(|(_, m)| m.worker != REMOTE).map(|(s, _)| *s).collect();
        local.sort_unstable();
        for session in local {
            door.publish(Event::Leave { session, reason: LeaveReason::Closed });
        }
        door.stop();
    }
}
