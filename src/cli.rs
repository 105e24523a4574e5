//! The command line: `chatd serve | check-config | reload | status | stop | client`.
//!
//! `reload`, `status` and `stop` talk to a running server over its control socket.

use crate::config;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(name = "chatd", version, about = "A multi-process line chat server")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Run the server (the supervisor and its workers) in the foreground.
    Serve {
        /// Config file.
        #[arg(long, short, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Validate a config file: exit 0, or print the error with file:line:column and exit 1.
    CheckConfig {
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
    /// Chat from a terminal: prints what the room says while you type; /quit or Ctrl-D leaves.
    Client {
        /// Server address: HOST[:PORT], e.g. 127.0.0.1, [::1]:9999 (port 9999 if none).
        #[arg(default_value = "127.0.0.1:9999")]
        address: String,
    },
    /// A worker process (started by the supervisor, not by hand).
    #[command(hide = true)]
    Worker(crate::worker::Args),
}

/// How `reload|status|stop` find the control socket: `--control`, else the config's
/// `server.control_socket`, else the default.
#[derive(Debug, Clone, clap::Args)]
pub struct ControlArgs {
    /// Control socket path.
    #[arg(long)]
    pub control: Option<PathBuf>,
    /// Config file to take `server.control_socket` from.
    #[arg(long, short, default_value = config::DEFAULT_PATH)]
    pub config: PathBuf,
}

impl ControlArgs {
    pub fn socket_path(&self) -> PathBuf {
        self.control
            .clone()
            .or_else(|| config::control_socket_lenient(&self.config))
            .unwrap_or_else(|| config::Config::default().server.control_socket)
    }
}
