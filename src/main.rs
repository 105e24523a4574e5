//! The `chatd` binary: parses the command line and hands over to the library.

#![deny(clippy::undocumented_unsafe_blocks)]

use chatd::cli::{Cli, Cmd, ControlArgs};
use chatd::config::Config;
use chatd::control::{self, ControlCommand};
use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Serve { check_state: true, config, .. } => chatd::supervisor::check_state(&config),
        Cmd::Serve { config, resume_fd, .. } => {
            chatd::logging::init("supervisor");
            match resume_fd {
                Some(fd) => chatd::supervisor::resume(fd),
                None => chatd::supervisor::run(&config),
            }
        }
        Cmd::CheckConfig { config } => match Config::load(&config)
            .map_err(|e| e.to_string())
            .and_then(|c| c.check_tls().map_err(|e| format!("{}: {e}", config.display())))
        {
            Ok(_) => {
                println!("{}: ok", config.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Cmd::Reload(args) => control_command(&args, ControlCommand::Reload, false),
        Cmd::Status { control, json } => control_command(&control, ControlCommand::Status, json),
        Cmd::Stop(args) => control_command(&args, ControlCommand::Stop, false),
        Cmd::Who { control, json } => control_command(&control, ControlCommand::Who, json),
        Cmd::Say { control, text } => {
            control_command(&control, ControlCommand::Say { text: text.join(" ") }, false)
        }
        Cmd::Kick { control, nick, reason } => {
            let command = ControlCommand::Kick { nick, reason: words(reason) };
            control_command(&control, command, false)
        }
        Cmd::Ban { control, target, duration, reason } => {
            let duration_ms = match duration.as_deref().map(parse_ban_duration).transpose() {
                Ok(ms) => ms,
                Err(e) => {
                    eprintln!("chatd ban: --for: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let command = ControlCommand::Ban { target, duration_ms, reason: words(reason) };
            control_command(&control, command, false)
        }
        Cmd::Unban { control, target } => {
            control_command(&control, ControlCommand::Unban { target }, false)
        }
        Cmd::Bans { control, json } => control_command(&control, ControlCommand::Bans, json),
        Cmd::Client(args) => chatd::client::run(&args),
        Cmd::Worker(args) => chatd::worker::run(args),
    }
}

/// A reason given as words; none when there are none.
fn words(words: Vec<String>) -> Option<String> {
    (!words.is_empty()).then(|| words.join(" "))
}

/// `chatd ban --for`: a duration as in the config file, longer than 0.
fn parse_ban_duration(text: &str) -> Result<u64, String> {
    let d = chatd::config::duration::parse(text)?;
    if d.is_zero() {
        return Err("a ban must last longer than 0s".into());
    }
    Ok(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn control_command(args: &ControlArgs, command: ControlCommand, json: bool) -> ExitCode {
    let socket = match args.socket_path() {
        Ok(socket) => socket,
        Err(e) => {
            eprintln!("chatd {}: {e}", command.as_str());
            return ExitCode::FAILURE;
        }
    };
    let reply = match control::client::request(&socket, &command) {
        Ok(reply) => reply,
        Err(e) => {
            eprintln!("chatd {}: {e}", command.as_str());
            return ExitCode::FAILURE;
        }
    };
    if let Some(status) = &reply.status {
        if json {
            match serde_json::to_string(status) {
                Ok(text) => println!("{text}"),
                Err(e) => eprintln!("chatd status: {e}"),
            }
        } else {
            print!("{}", control::client::format_status(status));
        }
    }
    let printed = match (&reply.who, &reply.bans) {
        (Some(who), _) if json => serde_json::to_string(who),
        (Some(who), _) => Ok(control::tables::format_who(who)),
        (_, Some(bans)) if json => serde_json::to_string(bans),
        (_, Some(bans)) => Ok(control::tables::format_bans(bans)),
        _ => Ok(String::new()),
    };
    match printed {
        Ok(text) if text.is_empty() => {}
        Ok(text) => println!("{}", text.trim_end()),
        Err(e) => eprintln!("chatd {}: {e}", command.as_str()),
    }
    match (&reply.message, reply.ok) {
        (Some(message), true) => println!("{message}"),
        (Some(message), false) => eprintln!("chatd {}: {message}", command.as_str()),
        (None, _) => {}
    }
    if reply.ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
