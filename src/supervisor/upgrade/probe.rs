//! The new binary's side of the probe: `chatd serve --config PATH --check-state`, with a
//! supervisor's state on stdin. It reads the state and the config it would run with, and says
//! `ok …` on stdout, or why not; it touches nothing else (no descriptor the state names, no
//! socket, no file).

use super::read_all;
use super::state::SupervisorState;
use crate::bus::frame;
use crate::config::Config;
use std::path::Path;
use std::process::ExitCode;

/// Entry point of `chatd serve --check-state`.
pub fn check_state(config_path: &Path) -> ExitCode {
    let origin = config_path.display().to_string();
    match read_all(std::io::stdin().lock()).and_then(|bytes| check(&bytes, &origin)) {
        Ok(answer) => {
            println!("{answer}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Whether this binary can take over the supervisor whose state is `bytes`: it reads the
/// state, speaks its workers' bus frames, and accepts both configs (`origin` names the file).
fn check(bytes: &[u8], origin: &str) -> Result<String, String> {
    let state = SupervisorState::decode(bytes).map_err(|e| e.to_string())?;
    if state.bus_frame_version != frame::VERSION {
        return Err(format!(
            "the running workers speak bus frame version {}, this binary {}: it cannot take \
             them over (restart the service to upgrade)",
            state.bus_frame_version,
            frame::VERSION
        ));
    }
    Config::parse(&state.config_text, origin)
        .map_err(|e| format!("cannot run the current config: {e}"))?;
    if let Some(reload) = &state.reload {
        Config::parse(&reload.config_text, origin).map_err(|e| e.to_string())?;
    }
    Ok(format!(
        "ok: chatd {} reads state format {} (written by chatd {})",
        crate::version::VERSION,
        state.header.version,
        state.header.release
    ))
}

#[cfg(test)]
mod tests {
    use super::super::state::tests::sample;
    use super::*;

    #[test]
    fn answers_ok_only_for_what_it_can_run() {
        let answer = check(&sample().encode(), "chatd.toml").expect("a state it can take over");
        assert!(answer.starts_with("ok: chatd "), "{answer}");

        let mut other_bus = sample();
        other_bus.bus_frame_version = frame::VERSION.wrapping_add(1);
        let e = check(&other_bus.encode(), "chatd.toml").expect_err("another bus");
        assert!(e.contains("bus frame version"), "{e}");

        let mut bad_config = sample();
        if let Some(reload) = &mut bad_config.reload {
            reload.config_text = "[server]\nwrokers = 2\n".into();
        }
        let e = check(&bad_config.encode(), "chatd.toml").expect_err("a bad config");
        assert!(e.starts_with("chatd.toml:2:1"), "{e}");

        let e = check(b"{}", "chatd.toml").expect_err("no state");
        assert!(e.starts_with("not a supervisor state"), "{e}");
    }
}
