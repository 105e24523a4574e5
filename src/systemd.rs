//! Talking to systemd: `sd_notify` readiness, reload, stop, status text and watchdog pings.
//!
//! Everything here is a no-op outside systemd (no `NOTIFY_SOCKET`), so `chatd serve` behaves
//! the same in a terminal. Only the supervisor notifies; workers never see the socket.

use log::debug;
use sd_notify::NotifyState;
use std::time::Duration;

pub struct Notifier {
    last_status: String,
}

impl Notifier {
    pub fn new() -> Notifier {
        Notifier { last_status: String::new() }
    }

    fn send(&self, states: &[NotifyState<'_>]) {
        if let Err(e) = sd_notify::notify(states) {
            debug!("sd_notify failed: {e}");
        }
    }

    /// A notifier that last sent `STATUS=status` (a supervisor that re-executed itself).
    pub fn with_status(status: String) -> Notifier {
        Notifier { last_status: status }
    }

    /// The last `STATUS=` sent.
    pub fn last_status(&self) -> &str {
        &self.last_status
    }

    /// Startup or a reload finished: the service accepts connections.
    pub fn ready(&mut self, status: &str) {
        self.last_status = status.to_string();
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// A reload starts; systemd wants the monotonic time with it to tell reloads apart.
    pub fn reloading(&mut self) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[NotifyState::Reloading, now]),
            Err(_) => self.send(&[NotifyState::Reloading]),
        }
    }

    pub fn stopping(&mut self) {
        self.send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }

    /// Updates `STATUS=` when the text changed.
    pub fn status(&mut self, status: &str) {
        if status != self.last_status {
            self.last_status = status.to_string();
            self.send(&[NotifyState::Status(status)]);
        }
    }

    pub fn watchdog(&self) {
        self.send(&[NotifyState::Watchdog]);
    }

    /// The watchdog interval systemd asked for, if any.
    pub fn watchdog_interval() -> Option<Duration> {
        sd_notify::watchdog_enabled()
    }
}

impl Default for Notifier {
    fn default() -> Self {
        Notifier::new()
    }
}
