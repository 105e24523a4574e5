//! The hub: the one place that knows the whole room.
//!
//! Workers forward what their clients say; the hub gives every room event the next sequence
//! number and a timestamp, renders its line once, keeps it in the history and broadcasts it.
//! Because every worker receives the events over one ordered stream from here, every client
//! sees the same total order. Nicknames, presence and room-wide limits live here too, so they
//! hold across workers.
//!
//! What the hub sends is bounded by what the room does, never by what a client asks: `/who` and
//! `/history` are answered by the workers from their own copies of presence and history (kept
//! from the room events, seeded by [`Hub::sync`]), and every list of lines is split into frames
//! far below the frame limit. So a busy client costs its own worker, not the hub.
//!
//! The hub does no I/O: it writes what must be sent into an [`Outbox`], which keeps it easy to
//! test and lets the supervisor decide how frames reach the workers.

use crate::bus::message::{
    ConnId, LINES_PER_FRAME_BYTES, LeaveReason, RoomEvent, RoomRequest, RoomUpdate, SessionId,
    split_by_size, split_lines,
};
use crate::config::{Config, HistoryEvents};
use crate::metrics::{Rejection, RoomCounters};
use crate::moderation::Bans;
use crate::protocol::command::is_valid_nick;
use crate::protocol::template::{Template, Values};
use clock::Clock;
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// The supervisor's handle for one worker process (not its slot: during a reload a slot has an
/// old and a new worker, and sessions move between them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WorkerId(pub usize);

/// The worker of members waiting for a worker to adopt them after a crash of the supervisor
/// (`supervisor/kept.rs`); no worker has this id, nor is it [`REMOTE`].
pub const UNADOPTED: WorkerId = WorkerId(usize::MAX - 1);

impl WorkerId {
    /// The id handed out after this one.
    pub fn next(self) -> WorkerId {
        WorkerId(self.0 + 1)
    }
}

/// Where the hub's messages go; implemented by the supervisor over the bus connections. The
/// hub speaks only room messages: the control of worker processes is not its business.
pub trait Outbox {
    /// To one worker.
    fn to_worker(&mut self, worker: WorkerId, msg: RoomUpdate);
    /// To every worker (encoded once).
    fn to_all(&mut self, msg: RoomUpdate);
}

/// Room events kept for sessions that move between workers on reload, whatever `history` says:
/// a moving session may have missed a few events (milliseconds' worth) and gets them replayed
/// from here. Beyond `history`, events are kept while younger than [`REPLAY_AGE`], and never more
/// than [`REPLAY_EVENTS`] of them.
const REPLAY_EVENTS: usize = 65_536;
const REPLAY_AGE: Duration = Duration::from_secs(10);
/// Presence changes remembered for the store (`saved.rs`), which writes down only the members
/// that changed; one further behind writes the whole room.
const PRESENCE_LOG: usize = 4096;

/// A numbered room event as kept for history and replay.
struct Event {
    seq: u64,
    at: Instant,
    skip: Option<SessionId>,
    /// Shared with the history, and exact-size: thousands of these are kept.
    line: Rc<str>,
}

/// The parts of the config the hub uses, taken anew on reload.
struct Settings {
    name: String,
    echo: bool,
    history: usize,
    history_events: HistoryEvents,
    message_format: Template,
    time_format: String,
    max_clients: usize,
    max_clients_per_ip: usize,
    /// Lower-case, like the keys of `Hub::nicks`.
    reserved_nicks: Vec<String>,
    /// `log.connections`: audit lines for connects, renames and disconnects.
    log_connections: bool,
}

impl Settings {
    fn from(config: &Config) -> Settings {
        Settings {
            name: config.server.name.clone(),
            echo: config.chat.echo,
            history: config.chat.history,
            history_events: config.chat.history_events,
            message_format: config.chat.message_format.clone(),
            time_format: config.chat.time_format.clone(),
            max_clients: config.server.max_clients,
            max_clients_per_ip: config.server.max_clients_per_ip,
            reserved_nicks: config.chat.reserved_nicks.clone(),
            log_connections: config.log.connections,
        }
    }
}

struct Member {
    /// Boxed strings, exact-size: a room of 100,000 keeps 100,000 of these.
    nick: Box<str>,
    ip: IpAddr,
    /// `IP:PORT` as `{addr}` shows it, rendered once.
    addr_text: Box<str>,
    worker: WorkerId,
    /// When the hub admitted it.
    since: Instant,
}

pub struct Hub {
    settings: Settings,
    seq: u64,
    next_session: SessionId,
    next_guest: u64,
    members: HashMap<SessionId, Member>,
    /// Lower-cased nick → session: nicknames are unique case-insensitively.
    nicks: HashMap<String, SessionId>,
    per_ip: HashMap<IpAddr, usize>,
    clock: Clock,
    /// Recent room events, oldest first, for sessions that move between workers: the last
    /// [`REPLAY_EVENTS`] of them, or those younger than [`REPLAY_AGE`].
    events: VecDeque<Event>,
    /// The room lines `/history` shows (`chat.history_events`), oldest first; the workers keep
    /// the same list, and a new worker is given this one.
    history: VecDeque<Rc<str>>,
    /// Lines ever added to `history`, so the store can tell which are new (`saved.rs`).
    history_pushed: u64,
    /// Bans from the command line added or lifted, for the same reason.
    bans_edits: u64,
    /// Joins, leaves and nick changes, for the same reason ...
    presence_edits: u64,
    /// ... and the sessions of the last [`PRESENCE_LOG`] of them, oldest first.
    presence_log: VecDeque<SessionId>,
    /// What happened to the room, for the metrics.
    counters: RoomCounters,
    /// Who may not join (`operators`).
    bans: Bans,
    /// A reload changed `[moderation] banned`: members it matches are still to be kicked.
    bans_changed: bool,
    /// Cluster mode (SPEC §11): the room comes from the stream (`cluster.rs`).
    cluster: Option<Box<cluster::ClusterMode>>,
}

impl Hub {
    pub fn new(config: &Config) -> Hub {
        Hub {
            settings: Settings::from(config),
            seq: 0,
            next_session: SessionId(1),
            next_guest: 1,
            members: HashMap::new(),
            nicks: HashMap::new(),
            per_ip: HashMap::new(),
            events: VecDeque::new(),
            history: VecDeque::new(),
            history_pushed: 0,
            bans_edits: 0,
            presence_edits: 0,
            presence_log: VecDeque::new(),
            clock: Clock::default(),
            counters: RoomCounters::default(),
            bans: Bans::configured_with(&config.moderation.banned),
            bans_changed: false,
            cluster: None,
        }
    }

    /// Applies a reloaded config; the room itself (members, history, numbering) carries on.
    pub fn reconfigure(&mut self, config: &Config) {
        self.settings = Settings::from(config);
        self.bans_changed = self.bans.configured() != config.moderation.banned.as_slice();
        self.bans.configure(&config.moderation.banned);
        self.trim_events();
        self.trim_history();
    }

    /// Brings a worker that just said Hello up to date: the sequence number, then who is in the
    /// room and the history, in frames of bounded size. Room events sent after these are newer.
    pub fn sync(&self, worker: WorkerId, out: &mut impl Outbox) {
        for frame in self.sync_frames() {
            out.to_worker(worker, frame);
        }
    }

    /// The frames of [`Hub::sync`].
    fn sync_frames(&self) -> Vec<RoomUpdate> {
        let mut frames = vec![RoomUpdate::Sync { seq: self.seq }];
        let mut members: Vec<(SessionId, String)> =
            self.members.iter().map(|(s, m)| (*s, m.nick.to_string())).collect();
        members.sort_unstable_by_key(|(s, _)| *s);
        let history: Vec<String> = self.history.iter().map(|l| l.to_string()).collect();
        let member_runs = split_by_size(members, LINES_PER_FRAME_BYTES, |(_, n)| n.len() + 8);
        for members in member_runs.into_iter().filter(|run| !run.is_empty()) {
            frames.push(RoomUpdate::Snapshot { members, history: Vec::new() });
        }
        for history in split_lines(history).into_iter().filter(|run| !run.is_empty()) {
            frames.push(RoomUpdate::Snapshot { members: Vec::new(), history });
        }
        frames
    }

    /// Everyone in the room.
    pub fn online(&self) -> usize {
        self.members.len()
    }

    /// Members by the worker serving them (workers serving nobody left out), in one pass.
    pub fn online_by_worker(&self) -> HashMap<WorkerId, usize> {
        let mut online = HashMap::new();
        for member in self.members.values() {
            *online.entry(member.worker).or_default() += 1;
        }
        online
    }

    /// Room lines kept for `/history`.
    pub fn history_len(&self) -> usize {
        self.history.len()
    }

    pub fn counters(&self) -> &RoomCounters {
        &self.counters
    }

    /// Members served by one worker.
    pub fn online_on(&self, worker: WorkerId) -> usize {
        self.members.values().filter(|m| m.worker == worker).count()
    }

    /// Handles one request from `worker`.
    pub fn handle(&mut self, worker: WorkerId, msg: RoomRequest, out: &mut impl Outbox) {
        let Some(msg) = self.cluster_request(worker, msg, out) else { return };
        match msg {
            RoomRequest::Join { conn, addr } => self.join(worker, conn, addr, out),
            RoomRequest::Say { session, text } => {
                let Some(member) = self.members.get(&session) else { return };
                let time = self.clock.now(&self.settings.time_format);
                let mut line = String::with_capacity(text.len() + 32);
                self.settings.message_format.render_into(
                    &Values {
                        time,
                        nick: &member.nick,
                        addr: &member.addr_text,
                        text: &text,
                        seq: self.seq + 1,
                    },
                    &mut line,
                );
                let skip = (!self.settings.echo).then_some(session);
                self.publish(skip, line, RoomEvent::Chat, out);
            }
            RoomRequest::Me { session, text } => {
                let time = self.now();
                let Some(member) = self.members.get(&session) else { return };
                let line = format!("{time} * {} {}", member.nick, text);
                let skip = (!self.settings.echo).then_some(session);
                self.publish(skip, line, RoomEvent::Me, out);
            }
            RoomRequest::Nick { session, nick } => self.rename(worker, session, nick, out),
            RoomRequest::Msg { session, to, text } => {
                self.private(worker, session, &to, &text, out)
            }
            RoomRequest::Query { session, query } => {
                // Echoed to wherever the session is now; a session that left gets nothing.
                if let Some(member) = self.members.get(&session) {
                    out.to_worker(member.worker, RoomUpdate::Answer { session, query });
                }
            }
            RoomRequest::Leave { session, reason } => self.leave(session, &reason, out),
            RoomRequest::Adopt { session, last_seq } => self.adopt(worker, session, last_seq, out),
        }
    }

    /// `worker` is gone: its clients leave the room as `connection lost`.
    pub fn worker_lost(&mut self, worker: WorkerId, out: &mut impl Outbox) {
        if self.cluster_worker_lost(worker) {
            return;
        }
        let mut lost: Vec<SessionId> =
            self.members.iter().filter(|(_, m)| m.worker == worker).map(|(s, _)| *s).collect();
        lost.sort_unstable();
        for session in lost {
            // The worker cannot log it any more: the supervisor does.
            if let Some(line) = self.remove_member(session, &LeaveReason::Lost, out) {
                if self.settings.log_connections {
                    log::info!("{line}");
                }
            }
        }
    }

    fn join(&mut self, worker: WorkerId, conn: ConnId, addr: SocketAddr, out: &mut impl Outbox) {
        let ip = addr.ip();
        if self.is_banned(ip) {
            self.counters.rejected(Rejection::Banned);
            out.to_worker(worker, RoomUpdate::Refused { conn, line: "! you are banned".into() });
            return;
        }
        if self.members.len() >= self.settings.max_clients {
            self.counters.rejected(Rejection::Full);
            out.to_worker(worker, RoomUpdate::Refused { conn, line: "! server full".into() });
            return;
        }
        let from_ip = self.per_ip.get(&ip).copied().unwrap_or(0);
        if self.settings.max_clients_per_ip > 0 && from_ip >= self.settings.max_clients_per_ip {
            self.counters.rejected(Rejection::PerIp);
            let line = "! too many connections from your address".to_string();
            out.to_worker(worker, RoomUpdate::Refused { conn, line });
            return;
        }
        let session = self.next_session;
        self.next_session = session.next();
        let nick = self.guest_nick();
        self.nicks.insert(nick.to_ascii_lowercase(), session);
        self.per_ip.insert(ip, from_ip + 1);
        let addr_text = addr.to_string().into_boxed_str();
        let connect = format!("connect {addr_text} as {nick}");
        let since = Instant::now();
        let member = Member { nick: nick.clone().into_boxed_str(), ip, addr_text, worker, since };
        self.members.insert(session, member);
        self.announce_join(Some((worker, conn)), session, nick, out);
        self.audit(worker, connect, out);
    }

    /// A new member is in the list: its worker welcomes it (`admit`, when it is this host's
    /// client: the worker and connection) and the room is told.
    fn announce_join(
        &mut self,
        admit: Option<(WorkerId, ConnId)>,
        session: SessionId,
        nick: String,
        out: &mut impl Outbox,
    ) {
        let online = self.members.len();
        if let Some((worker, conn)) = admit {
            let welcome = format!(
                "* Welcome to {}. You are {nick}. {online} online. Type /help for commands.",
                self.settings.name
            );
            out.to_worker(worker, RoomUpdate::Admitted { conn, session, welcome });
        }
        let line = format!("* {nick} joined ({online} online)");
        self.publish(Some(session), line, RoomEvent::Join { session, nick }, out);
    }

    fn rename(
        &mut self,
        worker: WorkerId,
        session: SessionId,
        nick: String,
        out: &mut impl Outbox,
    ) {
        let Some(nick) = self.check_nick(worker, session, nick, out) else { return };
        let Some(member) = self.members.get(&session) else { return };
        let key = nick.to_ascii_lowercase();
        let old = member.nick.to_string();
        let audit = format!("nick {old} -> {nick} ({})", member.addr_text);
        let audit_worker = member.worker;
        self.nicks.remove(&old.to_ascii_lowercase());
        self.nicks.insert(key, session);
        if let Some(member) = self.members.get_mut(&session) {
            member.nick = nick.clone().into_boxed_str();
        }
        let line = format!("* {old} is now known as {nick}");
        self.publish(None, line, RoomEvent::Nick { session, nick }, out);
        self.audit(audit_worker, audit, out);
    }

    /// What a `/nick` must pass before it is a claim: the client is told why not.
    fn check_nick(
        &self,
        worker: WorkerId,
        session: SessionId,
        nick: String,
        out: &mut impl Outbox,
    ) -> Option<String> {
        let member = self.members.get(&session)?;
        let refusal = if !is_valid_nick(&nick) {
            format!("! {}", crate::protocol::command::CommandError::InvalidNick(nick))
        } else if *member.nick == *nick {
            format!("* you are already {nick}")
        } else if self.settings.reserved_nicks.contains(&nick.to_ascii_lowercase()) {
            format!("! nickname '{nick}' is reserved")
        } else if self.nicks.get(&nick.to_ascii_lowercase()).is_some_and(|o| *o != session) {
            format!("! nickname '{nick}' is taken")
        } else {
            return Some(nick);
        };
        direct(out, worker, session, vec![refusal]);
        None
    }

    fn private(
        &mut self,
        worker: WorkerId,
        session: SessionId,
        to: &str,
        text: &str,
        out: &mut impl Outbox,
    ) {
        let time = self.now();
        let Some(sender) = self.members.get(&session) else { return };
        let target = self.nicks.get(&to.to_ascii_lowercase()).and_then(|s| {
            let member = self.members.get(s)?;
            Some((*s, member))
        });
        let Some((target_session, target)) = target else {
            return direct(out, worker, session, vec![format!("! no such nick '{to}'")]);
        };
        let incoming = format!("{time} [pm from {}] {text}", sender.nick);
        direct(out, target.worker, target_session, vec![incoming]);
        let outgoing = format!("{time} [pm to {}] {text}", target.nick);
        direct(out, worker, session, vec![outgoing]);
    }

    fn leave(&mut self, session: SessionId, reason: &LeaveReason, out: &mut impl Outbox) {
        if self.cluster_leave(session, reason) {
            return;
        }
        let worker = self.members.get(&session).map(|m| m.worker);
        if let (Some(worker), Some(line)) = (worker, self.remove_member(session, reason, out)) {
            self.audit(worker, line, out);
        }
    }

    /// Takes a session out of the room and announces it; returns its audit line.
    fn remove_member(
        &mut self,
        session: SessionId,
        reason: &LeaveReason,
        out: &mut impl Outbox,
    ) -> Option<String> {
        let member = self.members.remove(&session)?;
        self.counters.left(reason);
        self.nicks.remove(&member.nick.to_ascii_lowercase());
        let ip = member.ip;
        match self.per_ip.get_mut(&ip) {
            Some(n) if *n > 1 => *n -= 1,
            _ => {
                self.per_ip.remove(&ip);
            }
        }
        let line = format!("* {} left ({reason})", member.nick);
        self.publish(Some(session), line, RoomEvent::Leave { session }, out);
        out.to_worker(member.worker, RoomUpdate::Left { session });
        let after = crate::config::duration::span(member.since.elapsed());
        Some(format!("disconnect {} {} ({reason}) after {after}", member.nick, member.addr_text))
    }

    /// Has `worker` log an audit line (`log.connections`), under its own name.
    fn audit(&self, worker: WorkerId, line: String, out: &mut impl Outbox) {
        if self.settings.log_connections {
            out.to_worker(worker, RoomUpdate::Log { line });
        }
    }

    /// A session moved to `worker` on reload: route to it from now on, and replay what the
    /// session missed while in transit. Room events after this reply reach it live.
    fn adopt(
        &mut self,
        worker: WorkerId,
        session: SessionId,
        last_seq: u64,
        out: &mut impl Outbox,
    ) {
        let Some(member) = self.members.get_mut(&session) else {
            // It left while moving; the new worker still waits for its resume.
            out.to_worker(worker, RoomUpdate::Resume { session, lines: Vec::new() });
            return;
        };
        member.worker = worker;
        if let Some(oldest) = self.events.front() {
            if oldest.seq > last_seq + 1 && self.seq > last_seq {
                log::error!(
                    "session {session} missed events {}..{} that are no longer kept",
                    last_seq + 1,
                    oldest.seq - 1
                );
            }
        }
        let lines = self
            .events
            .iter()
            .filter(|e| e.seq > last_seq && e.skip != Some(session))
            .map(|e| e.line.to_string())
            .collect();
        let mut runs = split_lines(lines);
        let last = runs.pop().unwrap_or_default();
        for lines in runs {
            out.to_worker(worker, RoomUpdate::Replay { session, lines });
        }
        out.to_worker(worker, RoomUpdate::Resume { session, lines: last });
    }

    /// Numbers a room line, keeps it for history and replay, and sends it to every worker.
    fn publish(
        &mut self,
        skip: Option<SessionId>,
        line: String,
        event: RoomEvent,
        out: &mut impl Outbox,
    ) {
        self.seq += 1;
        self.counters.line(&event);
        if let RoomEvent::Join { session, .. }
        | RoomEvent::Leave { session }
        | RoomEvent::Nick { session, .. } = &event
        {
            self.presence_edits += 1;
            self.presence_log.push_back(*session);
            if self.presence_log.len() > PRESENCE_LOG {
                self.presence_log.pop_front();
            }
        }
        let keep = match self.settings.history_events {
            HistoryEvents::Chat => event.is_talk(),
            HistoryEvents::All => true,
        };
        out.to_all(RoomUpdate::Line { seq: self.seq, skip, line: line.clone(), event });
        let line: Rc<str> = line.into();
        if keep && self.settings.history > 0 {
            self.history.push_back(line.clone());
            self.history_pushed += 1;
            self.trim_history();
        }
        let at = Instant::now();
        self.events.push_back(Event { seq: self.seq, at, skip, line });
        self.trim_events();
    }

    fn trim_events(&mut self) {
        while self.events.len() > REPLAY_EVENTS {
            self.events.pop_front();
        }
    }

    fn trim_history(&mut self) {
        while self.history.len() > self.settings.history {
            self.history.pop_front();
        }
    }

    /// Drops replay-only events that have aged out (called once a second). Returns true when it
    /// freed a lot, so the caller can hand the memory back to the system.
    pub fn expire_events(&mut self) -> bool {
        let before = self.events.len();
        let now = Instant::now();
        while self.events.front().is_some_and(|e| now.duration_since(e.at) > REPLAY_AGE) {
            self.events.pop_front();
        }
        if self.events.capacity() > 4 * self.events.len().max(1024) {
            self.events.shrink_to_fit();
        }
        before - self.events.len() >= 1024
    }

    /// The next free `guest-N`; skips numbers someone took with `/nick`.
    fn guest_nick(&mut self) -> String {
        loop {
            let nick = format!("guest-{}", self.next_guest);
            self.next_guest += 1;
            if !self.nicks.contains_key(&nick) {
                return nick;
            }
        }
    }

    /// The hub's clock: one timestamp per event, the same for every client.
    fn now(&mut self) -> String {
        self.clock.now(&self.settings.time_format).to_string()
    }
}

/// Lines for one client, in as many frames as they need.
fn direct(out: &mut impl Outbox, worker: WorkerId, session: SessionId, lines: Vec<String>) {
    for lines in split_lines(lines) {
        out.to_worker(worker, RoomUpdate::Direct { session, lines });
    }
}

mod clock;
mod cluster;
pub use cluster::{BACK, GIVE_UP, REMOTE};
mod operators;
mod saved;
#[cfg(test)]
pub(super) mod tests;
