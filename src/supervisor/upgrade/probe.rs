//! The new binary's side of the probe: `chatd serve --config PATH --check-state`, with a
//! supervisor's state on stdin. It reads the state and the config it would run with, and says
//! `ok …` on stdout, or why not; it touches nothing else (no descriptor the state names, no
//! socket, no file).

use super::read_state;
use crate::config::Config;
use std::path::Path;
use std::process::ExitCode;

/// Entry point of `chatd serve --check-state`.
pub fn check_state(config_path: &Path) -> ExitCode {
    match check(config_path) {
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

fn check(config_path: &Path) -> Result<String, String> {
    let state = read_state(std::io::stdin().lock())?;
    let origin = config_path.display().to_string();
    Config::parse(&state.config_text, &origin)
        .map_err(|e| format!("cannot run the current config: {e}"))?;
    if let Some(reload) = &state.reload {
        Config::parse(&reload.config_text, &origin).map_err(|e| e.to_string())?;
    }
    Ok(format!(
        "ok: chatd {} reads state format {} (written by chatd {})",
        crate::version::VERSION,
        state.header.version,
        state.header.release
    ))
}
