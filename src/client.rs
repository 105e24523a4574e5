//! `chatd client HOST:PORT`: a small terminal client.
//!
//! Two threads feed one loop through channels: one reads the server, one reads the terminal.
//! The loop prints what the server says as it arrives (while you type), sends what you type,
//! and ends when you type `/quit`, press Ctrl-D, or the server goes away.

use crossbeam_channel::{Receiver, select, unbounded};
use std::io::{self, BufRead, BufReader, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::thread;
use std::time::Duration;

enum FromServer {
    Line(String),
    Closed(Option<io::Error>),
}

/// Runs the client until the session ends.
pub fn run(address: &str) -> ExitCode {
    let stream = match connect(address) {
        Ok(stream) => stream,
        Err(e) => {
            eprintln!("chatd client: cannot connect to {address}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let server = match stream.try_clone() {
        Ok(reader) => spawn_server_reader(reader),
        Err(e) => {
            eprintln!("chatd client: {e}");
            return ExitCode::FAILURE;
        }
    };
    let terminal = spawn_terminal_reader();
    session(stream, &server, &terminal)
}

fn connect(address: &str) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::InvalidInput, "no address to connect to");
    for addr in address.to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(10)) {
            Ok(stream) => return Ok(stream),
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn session(
    mut stream: TcpStream,
    server: &Receiver<FromServer>,
    terminal: &Receiver<Option<String>>,
) -> ExitCode {
    let mut stdout = io::stdout();
    let mut typing = true;
    loop {
        select! {
            recv(server) -> msg => match msg {
                Ok(FromServer::Line(line)) => {
                    let _ = writeln!(stdout, "{line}");
                    let _ = stdout.flush();
                }
                Ok(FromServer::Closed(None)) | Err(_) => return ExitCode::SUCCESS,
                Ok(FromServer::Closed(Some(e))) => {
                    eprintln!("chatd client: connection lost: {e}");
                    return ExitCode::FAILURE;
                }
            },
            recv(terminal) -> msg => match msg {
                Ok(Some(line)) if typing => {
                    if let Err(e) = stream.write_all(format!("{line}\n").as_bytes()) {
                        eprintln!("chatd client: cannot send: {e}");
                        return ExitCode::FAILURE;
                    }
                }
                // Ctrl-D: say goodbye and wait for the server to close.
                Ok(None) | Err(_) if typing => {
                    typing = false;
                    let _ = stream.write_all(b"/quit\n");
                    let _ = stream.shutdown(Shutdown::Write);
                }
                _ => {}
            },
        }
    }
}

fn spawn_server_reader(stream: TcpStream) -> Receiver<FromServer> {
    let (tx, rx) = unbounded();
    thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) => {
                    let _ = tx.send(FromServer::Closed(None));
                    return;
                }
                Ok(_) => {
                    let text = String::from_utf8_lossy(&buf);
                    let line = text.trim_end_matches(['\r', '\n']).to_string();
                    if tx.send(FromServer::Line(line)).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.send(FromServer::Closed(Some(e)));
                    return;
                }
            }
        }
    });
    rx
}

fn spawn_terminal_reader() -> Receiver<Option<String>> {
    let (tx, rx) = unbounded();
    thread::spawn(move || {
        for line in io::stdin().lock().lines() {
            match line {
                Ok(line) => {
                    if tx.send(Some(line)).is_err() {
                        return;
                    }
                }
                Err(_) => break,
            }
        }
        let _ = tx.send(None);
    });
    rx
}
