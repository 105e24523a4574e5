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
        Cmd::Serve { config } => {
            chatd::logging::init("supervisor");
            chatd::supervisor::run(&config)
        }
        Cmd::CheckConfig { config } => match Config::load(&config) {
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
        Cmd::Client { address } => chatd::client::run(&address),
        Cmd::Worker(args) => chatd::worker::run(args),
    }
}

fn control_command(args: &ControlArgs, command: ControlCommand, json: bool) -> ExitCode {
    let socket = match args.socket_path() {
        Ok(socket) => socket,
        Err(e) => {
            eprintln!("chatd {}: {e}", command.as_str());
            return ExitCode::FAILURE;
        }
    };
    let reply = match control::client::request(&socket, command) {
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
    match (&reply.message, reply.ok) {
        (Some(message), true) => println!("{message}"),
        (Some(message), false) => eprintln!("chatd {}: {message}", command.as_str()),
        (None, _) => {}
    }
    if reply.ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
