//! The command line: `chatd serve | check-config | reload | status | stop | who | say | kick |
//! ban | unban | bans | client`.
//!
//! All but `serve`, `check-config` and `client` talk to a running server over its control
//! socket.

use crate::config;
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};

#[derive(Debug, Parser)]
#[command(name = "chatd", version = crate::version::VERSION, about = "A multi-process line chat server")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Run the server (the supervisor and its workers) in the foreground.
    Serve {
        /// Config file to run with (a regular file of at most 1 MiB).
        #[arg(long, short, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
        /// Upgrade: take over from the previous binary, whose state is in this descriptor.
        #[arg(long, hide = true, value_name = "FD")]
        resume_fd: Option<i32>,
        /// Upgrade: read a supervisor's state on stdin and say whether this binary can run it.
        #[arg(long, hide = true, conflicts_with = "resume_fd")]
        check_state: bool,
    },
    /// Validate a config file: exit 0, or print the error with file:line:column and exit 1.
    CheckConfig {
        /// Config file to check (a regular file of at most 1 MiB).
        #[arg(long, short, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Reload the running server with its config file (and binary); waits until done.
    Reload(ControlArgs),
    /// Show the running server's workers and clients.
    Status {
        #[command(flatten)]
        control: ControlArgs,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Stop the running server (clients are told, output is flushed).
    Stop(ControlArgs),
    /// List every session: nick, address, worker slot, connected and idle time, queued output.
    Who {
        #[command(flatten)]
        control: ControlArgs,
        /// Print one JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Say TEXT to the room as `* notice: TEXT`.
    Say {
        #[command(flatten)]
        control: ControlArgs,
        /// The notice; several words are joined with spaces.
        #[arg(required = true, num_args = 1..)]
        text: Vec<String>,
    },
    /// Disconnect a client: it gets `* you were kicked[: REASON]`, the room sees it leave.
    Kick {
        #[command(flatten)]
        control: ControlArgs,
        /// The client's nickname (any case).
        nick: String,
        /// Why, shown to the client and the room; several words are joined with spaces.
        reason: Vec<String>,
    },
    /// Ban an address or prefix (ADDR or ADDR/PREFIX): clients from it are kicked, new
    /// connections from it refused with `! you are banned`. Lasts until unbanned, or --for.
    Ban {
        #[command(flatten)]
        control: ControlArgs,
        /// ADDR or ADDR/PREFIX, e.g. 203.0.113.7, 203.0.113.0/24, 2001:db8::/32.
        target: String,
        /// How long, e.g. 30m, 2h, 7d; without it the ban lasts until `chatd unban`.
        #[arg(long = "for", value_name = "DURATION")]
        duration: Option<String>,
        /// Why, shown to the kicked clients and the room; several words are joined with spaces.
        reason: Vec<String>,
    },
    /// Lift a ban given with `chatd ban` (the same ADDR or ADDR/PREFIX).
    Unban {
        #[command(flatten)]
        control: ControlArgs,
        /// ADDR or ADDR/PREFIX, as banned.
        target: String,
    },
    /// List the bans in force, with the time left.
    Bans {
        #[command(flatten)]
        control: ControlArgs,
        /// Print one JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Chat from a terminal: a line editor with the room printed above it, reconnecting when
    /// the connection drops; /quit or Ctrl-D leaves. With stdin not a terminal: sends stdin's
    /// lines, prints what the server says, and exits after its answers.
    Client(crate::client::Args),
    /// A worker process (started by the supervisor, not by hand).
    #[command(hide = true)]
    Worker(crate::worker::Args),
}

/// How the control commands find the control socket: `--control`, else the config's
/// `server.control_socket`, else the default (docs/operations.md).
#[derive(Debug, Clone, clap::Args)]
pub struct ControlArgs {
    /// Control socket of the running server; when given, no config file is read.
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,
    /// Config file to take `server.control_socket` from [default: /etc/chatd/chatd.toml].
    #[arg(long, short, value_name = "PATH")]
    pub config: Option<PathBuf>,
}

impl ControlArgs {
    /// The socket to connect to, or why it cannot be told.
    ///
    /// Only a missing default config falls back to the default socket: a config named on the
    /// command line must be read, and one that is not TOML is reported rather than guessed
    /// around, since the default socket may belong to another server.
    pub fn socket_path(&self) -> Result<PathBuf, String> {
        if let Some(control) = &self.control {
            return Ok(control.clone());
        }
        let default_socket = || config::Config::default().server.control_socket;
        let (path, named) = match &self.config {
            Some(path) => (path.as_path(), true),
            None => (Path::new(config::DEFAULT_PATH), false),
        };
        match config::control_socket_lenient(path) {
            Ok(socket) => Ok(socket.unwrap_or_else(default_socket)),
            Err(e) if e.is_not_found() && !named => Ok(default_socket()),
            Err(e) => Err(format!(
                "{e}; the control socket is taken from this file: fix it, or give the socket \
                 with --control PATH"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// `--help` of every subcommand explains every option it lists.
    #[test]
    fn every_option_has_help() {
        let cli = Cli::command();
        for sub in cli.get_subcommands().filter(|sub| !sub.is_hide_set()) {
            for arg in sub.get_arguments().filter(|arg| !arg.is_hide_set()) {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
                assert!(!help.trim().is_empty(), "chatd {} --{id} has no help", sub.get_name());
            }
        }
    }

    fn client(args: &[&str]) -> Result<crate::client::Args, clap::Error> {
        let cli = Cli::try_parse_from([&["chatd", "client"], args].concat())?;
        match cli.command {
            Cmd::Client(args) => Ok(args),
            other => panic!("not the client: {other:?}"),
        }
    }

    /// `chatd client` connects to 9999, or 9998 with --tls, when the address names no port.
    #[test]
    fn client_ports_and_tls_options() {
        use crate::client::Trust;
        let plain = client(&["chat.example.org"]).unwrap();
        assert_eq!((plain.address(), plain.trust()), ("chat.example.org:9999".into(), None));
        let tls = client(&["--tls", "chat.example.org"]).unwrap();
        assert_eq!(
            (tls.address(), tls.trust()),
            ("chat.example.org:9998".into(), Some(Trust::System))
        );
        assert_eq!(client(&["--tls", "[::1]"]).unwrap().address(), "[::1]:9998");
        assert_eq!(client(&["--tls", "h:7000"]).unwrap().address(), "h:7000");
        assert_eq!(client(&["--tls"]).unwrap().address(), "127.0.0.1:9998");
        assert_eq!(client(&[]).unwrap().address(), "127.0.0.1:9999");
        let ca = client(&["--tls", "--ca", "ca.pem", "h"]).unwrap();
        assert_eq!(ca.trust(), Some(Trust::Ca("ca.pem".into())));
        let insecure = client(&["--tls", "--insecure", "h"]).unwrap();
        assert_eq!(insecure.trust(), Some(Trust::Insecure));
        // The TLS options need --tls, and --insecure contradicts --ca.
        assert!(client(&["--ca", "ca.pem", "h"]).is_err());
        assert!(client(&["--insecure", "h"]).is_err());
        assert!(client(&["--tls", "--insecure", "--ca", "ca.pem", "h"]).is_err());
    }
}
