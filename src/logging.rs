//! Logging to stderr, journald-aware.
//!
//! Under systemd, stderr goes to the journal (systemd sets `JOURNAL_STREAM`); there a line that
//! starts with `<N>` gets syslog priority N, so errors show as errors in `journalctl -p`. A
//! timestamp would be noise there (the journal stamps lines itself), so it is added only when
//! stderr is something else, like a terminal or a test's pipe.
//!
//! Each process logs under a name no other live process has (`supervisor`; `worker 2/g3` for
//! slot 2 of generation 3, since during a reload two workers serve one slot), so one stream of
//! interleaved lines from several processes stays readable. `CHATD_LOG=debug` (or `warn`, …)
//! sets the level.

use log::{Level, LevelFilter, Log, Metadata, Record};
use std::io::Write;
use std::sync::OnceLock;

struct Logger {
    role: String,
    journal: bool,
}

static LOGGER: OnceLock<Logger> = OnceLock::new();

/// Installs the logger for this process. Later calls keep the first role.
pub fn init(role: impl Into<String>) {
    let journal = std::env::var_os("JOURNAL_STREAM").is_some();
    let logger = LOGGER.get_or_init(|| Logger { role: role.into(), journal });
    let level = match std::env::var("CHATD_LOG").as_deref() {
        Ok("error") => LevelFilter::Error,
        Ok("warn") => LevelFilter::Warn,
        Ok("debug") => LevelFilter::Debug,
        Ok("trace") => LevelFilter::Trace,
        _ => LevelFilter::Info,
    };
    if log::set_logger(logger).is_ok() {
        log::set_max_level(level);
    }
}

/// sd-daemon(3) priority of a level.
fn priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = if self.journal {
            format!("<{}>{}: {}\n", priority(record.level()), self.role, record.args())
        } else {
            let now = chrono::Local::now().format("%Y-%m-%dT%H:%M:%S%.3f");
            format!("{now} {:<5} {}: {}\n", record.level(), self.role, record.args())
        };
        // One write per line keeps lines from different processes whole on a shared pipe.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}
