//! The operators' control commands on the supervisor's side: `chatd say`, `kick`, `ban`,
//! `unban` and `bans` are answered at once from the hub; `chatd who` needs what only the
//! workers know (idle time, queued output), so it asks every worker and answers when all have
//! replied, or after [`WHO_WAIT`] with what it has.

use super::Supervisor;
use super::hub::WorkerId;
use super::workers::Mailboxes;
use crate::bus::message::{SessionId, SessionLoad};
use crate::bus::{ToWorker, WorkerOrder};
use crate::config::duration;
use crate::control::{BanEntry, ControlCommand, Reply, WhoEntry};
use crate::moderation::{Ban, Target};
use crate::protocol::sanitize::{is_blank, sanitize};
use crossbeam_channel::Sender;
use log::info;
use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// How long `chatd who` waits for the workers; a worker that has not answered by then (busy,
/// or starting) leaves its sessions' idle time and queued output unknown.
const WHO_WAIT: Duration = Duration::from_secs(2);

/// `chatd who` requests waiting for the workers' answers.
#[derive(Default)]
pub(super) struct Operators {
    next_id: u64,
    pending: Vec<PendingWho>,
}

impl Operators {
    /// None waiting; the next round gets `next_id` (an upgraded supervisor goes on counting,
    /// so no late answer from before is taken for a new round's).
    pub(super) fn starting_at(next_id: u64) -> Operators {
        Operators { next_id, pending: Vec::new() }
    }

    pub(super) fn next_id(&self) -> u64 {
        self.next_id
    }
}

struct PendingWho {
    id: u64,
    reply: Sender<Reply>,
    waiting: BTreeSet<WorkerId>,
    loads: HashMap<SessionId, SessionLoad>,
    deadline: Instant,
}

impl Supervisor {
    /// A control command of the operators' (not status, reload or stop).
    pub(super) fn on_operator(&mut self, command: ControlCommand, reply: Sender<Reply>) {
        let answer = match command {
            ControlCommand::Who => return self.ask_workers(reply),
            ControlCommand::Say { text } => self.say(&text),
            ControlCommand::Kick { nick, reason } => {
                let reason = clean(reason);
                match self.hub.kick(&nick, reason.clone(), &mut Mailboxes(&mut self.workers)) {
                    Ok(nick) => {
                        info!("kicked {nick}{}", because(&reason));
                        Reply::done(format!("kicked {nick}"))
                    }
                    Err(e) => Reply::failed(e),
                }
            }
            ControlCommand::Ban { target, duration_ms, reason } => {
                self.ban(&target, duration_ms, clean(reason))
            }
            ControlCommand::Unban { target } => self.unban(&target),
            ControlCommand::Bans => Reply::bans(self.ban_list()),
            ControlCommand::Status | ControlCommand::Reload | ControlCommand::Stop => {
                Reply::failed("not an operator command")
            }
        };
        let _ = reply.send(answer);
    }

    fn say(&mut self, text: &str) -> Reply {
        let text = sanitize(text.as_bytes());
        if is_blank(&text) {
            return Reply::failed("nothing to say");
        }
        self.hub.notice(&text, &mut Mailboxes(&mut self.workers));
        info!("notice: {text}");
        Reply::done(format!("said to {} online", self.hub.online()))
    }

    fn ban(&mut self, target: &str, duration_ms: Option<u64>, reason: Option<String>) -> Reply {
        let target = match Target::parse(target) {
            Ok(target) => target,
            Err(e) => return Reply::failed(e),
        };
        let span = duration_ms.map(Duration::from_millis);
        let until = match span.map(|d| Instant::now().checked_add(d)) {
            Some(None) => return Reply::failed("the ban is too long"),
            Some(Some(until)) => Some(until),
            None => None,
        };
        let ban = Ban { target, until, reason: reason.clone() };
        let kicked = self.hub.ban(ban, &mut Mailboxes(&mut self.workers));
        let time = span.map_or(String::new(), |d| format!(" for {}", duration::span(d)));
        info!("banned {target}{time}{}", because(&reason));
        let mut message = format!("banned {target}{time}");
        if !kicked.is_empty() {
            message += &format!("; kicked {}", kicked.join(", "));
        }
        Reply::done(message)
    }

    fn unban(&mut self, target: &str) -> Reply {
        let target = match Target::parse(target) {
            Ok(target) => target,
            Err(e) => return Reply::failed(e),
        };
        if self.hub.unban(&target) {
            info!("unbanned {target}");
            return Reply::done(format!("unbanned {target}"));
        }
        if self.hub.bans().is_configured(&target) {
            return Reply::failed(format!(
                "{target} is banned by [moderation] banned in the config file: remove it there \
                 and reload"
            ));
        }
        Reply::failed(format!("no ban on {target}"))
    }

    fn ban_list(&mut self) -> Vec<BanEntry> {
        let now = Instant::now();
        let bans = self.hub.bans();
        let commanded = bans.commanded().iter().map(|b| BanEntry {
            target: b.target.to_string(),
            left_s: b.left(now).map(|d| d.as_secs_f64().ceil() as u64),
            reason: b.reason.clone(),
            source: "command".into(),
        });
        let configured = bans.configured().iter().map(|t| BanEntry {
            target: t.to_string(),
            left_s: None,
            reason: None,
            source: "config".into(),
        });
        commanded.chain(configured).collect()
    }

    /// `chatd who`: asks every worker about its sessions.
    fn ask_workers(&mut self, reply: Sender<Reply>) {
        let id = self.operators.next_id;
        self.operators.next_id += 1;
        let mut waiting = BTreeSet::new();
        for (worker_id, worker) in self.workers.iter_mut().filter(|(_, w)| w.bus_open()) {
            worker.conn.send(&ToWorker::Control(WorkerOrder::Inspect { id }));
            waiting.insert(*worker_id);
        }
        let deadline = Instant::now() + WHO_WAIT;
        let pending = PendingWho { id, reply, waiting, loads: HashMap::new(), deadline };
        self.operators.pending.push(pending);
        self.tend_operators();
    }

    /// A worker's answer to `Inspect`.
    pub(super) fn on_sessions(
        &mut self,
        worker: WorkerId,
        id: u64,
        sessions: Vec<SessionLoad>,
        last: bool,
    ) {
        let Some(pending) = self.operators.pending.iter_mut().find(|p| p.id == id) else {
            return;
        };
        pending.loads.extend(sessions.into_iter().map(|load| (load.session, load)));
        if last {
            pending.waiting.remove(&worker);
        }
        self.tend_operators();
    }

    /// Answers the `who` requests that have all their answers (or waited long enough), and
    /// kicks whoever a reloaded `[moderation] banned` matches. Called every loop turn.
    pub(super) fn tend_operators(&mut self) {
        self.hub.enforce_configured_bans(&mut Mailboxes(&mut self.workers));
        if self.operators.pending.is_empty() {
            return;
        }
        let now = Instant::now();
        let workers = &self.workers;
        let mut done = Vec::new();
        self.operators.pending.retain_mut(|p| {
            p.waiting.retain(|w| workers.get(w).is_some_and(|w| w.bus_open()));
            if p.waiting.is_empty() || now >= p.deadline {
                done.push((std::mem::take(&mut p.loads), p.reply.clone()));
                return false;
            }
            true
        });
        for (loads, reply) in done {
            let _ = reply.send(Reply::who(self.who(&loads)));
        }
    }

    /// When the next `who` gives up waiting.
    /// Answers every `chatd who` waiting for the workers with what has come so far (the
    /// supervisor is about to exec: those requests' connections would not survive).
    pub(super) fn answer_operators_now(&mut self) {
        let now = Instant::now();
        for p in &mut self.operators.pending {
            p.deadline = now;
        }
        self.tend_operators();
    }

    pub(super) fn operators_deadline(&self) -> Option<Instant> {
        self.operators.pending.iter().map(|p| p.deadline).min()
    }

    fn who(&self, loads: &HashMap<SessionId, SessionLoad>) -> Vec<WhoEntry> {
        self.hub
            .sessions()
            .into_iter()
            .map(|s| {
                let load = loads.get(&s.session);
                WhoEntry {
                    nick: s.nick,
                    addr: s.addr,
                    slot: self.workers.get(&s.worker).map_or(0, |w| w.slot),
                    transport: load.map_or("-", |l| l.transport.label()).into(),
                    connected_s: s.connected.as_secs(),
                    idle_s: load.map(|l| l.idle_ms / 1000),
                    queued_bytes: load.map(|l| l.queued),
                }
            })
            .collect()
    }
}

/// An operator's reason, cleaned like a chat line; an empty one is none.
fn clean(reason: Option<String>) -> Option<String> {
    let reason = sanitize(reason?.as_bytes());
    (!is_blank(&reason)).then(|| reason.trim().to_owned())
}

fn because(reason: &Option<String>) -> String {
    reason.as_ref().map_or(String::new(), |r| format!(" ({r})"))
}
