//! The supervisor's side of the control socket.
//!
//! The listener runs on its own thread; each accepted connection gets a short-lived thread that
//! checks the peer, reads the request, hands it to the event loop through a channel (waking the
//! loop) and waits for the loop's answer. The event loop never does socket I/O for control
//! clients, and a slow or silent client only ties up its own thread.
//!
//! `stop` is answered once the workers are gone; its thread then tells the loop the answer is
//! written and keeps the connection open until the process exits, so the client's EOF marks
//! the server's end.

use super::{ControlCommand, Reply};
use crate::bad_frame::{BadFrame, Peer};
use crossbeam_channel::{Receiver, Sender};
use log::{info, warn};
use nix::sys::socket::{UnixCredentials, getsockopt, sockopt::PeerCredentials};
use nix::sys::stat::{Mode, umask};
use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// A control request waiting for the event loop.
pub struct Request {
    pub command: ControlCommand,
    /// Where the event loop sends the answer; the client's thread waits on it.
    pub reply: Sender<Reply>,
    /// Signalled once the answer has been written to the client (or could not be).
    pub written: Receiver<()>,
    /// A second descriptor of the client's connection: a supervisor that re-executes itself
    /// while the request waits (`reload`) gives it to its new image, which answers on it.
    pub conn: Option<OwnedFd>,
}

/// A request is one line, a word or a JSON object (a `chatd say` text at most a few KiB):
/// reading stops here, and a longer line is a bad frame.
const MAX_REQUEST: u64 = 16 * 1024;

/// Longest a request may wait for the supervisor, a reload with thousands of sessions included.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(600);

/// The bound control socket; removes its path when dropped.
pub struct ControlSocket {
    path: PathBuf,
    /// The listening socket (the serving thread has its own descriptor of it).
    listener: UnixListener,
}

impl ControlSocket {
    /// The listening descriptor, to be kept across an exec of the supervisor.
    pub fn listener(&self) -> BorrowedFd<'_> {
        self.listener.as_fd()
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds the control socket and starts serving it. Requests arrive on the returned channel,
/// each followed by a wake-up of `waker`.
pub fn start(
    path: &Path,
    waker: Arc<mio::Waker>,
) -> io::Result<(ControlSocket, Receiver<Request>)> {
    let listener = bind(path)?;
    adopt(listener, path, waker)
}

/// Serves a control socket already bound (by this process, or by the image it replaced).
pub fn adopt(
    listener: UnixListener,
    path: &Path,
    waker: Arc<mio::Waker>,
) -> io::Result<(ControlSocket, Receiver<Request>)> {
    let kept = listener.try_clone()?;
    let (tx, rx) = crossbeam_channel::unbounded();
    std::thread::Builder::new().name("control".into()).spawn(move || {
        for stream in listener.incoming() {
            match stream {
                Ok(stream) => {
                    let tx = tx.clone();
                    let waker = waker.clone();
                    let spawned = std::thread::Builder::new()
                        .name("control-client".into())
                        .spawn(move || serve(stream, &tx, &waker));
                    if let Err(e) = spawned {
                        warn!("control: cannot start a thread for a client: {e}");
                    }
                }
                Err(e) => warn!("control: accept failed: {e}"),
            }
        }
    })?;
    Ok((ControlSocket { path: path.to_path_buf(), listener: kept }, rx))
}

/// Answers a request whose client connected to the image this process replaced: the reply
/// the returned channel gets is written to `stream`, as `serve` would have.
pub fn answer_later(stream: UnixStream) -> io::Result<Sender<Reply>> {
    let (tx, rx) = crossbeam_channel::bounded::<Reply>(1);
    std::thread::Builder::new().name("control-client".into()).spawn(move || {
        let reply = rx.recv().unwrap_or_else(|_| Reply::failed("no answer from the server"));
        let mut line = serde_json::to_string(&reply).unwrap_or_else(|_| "{\"ok\":false}".into());
        line.push('\n');
        if let Err(e) = (&stream).write_all(line.as_bytes()) {
            warn!("control: cannot answer: {e}");
        }
    })?;
    Ok(tx)
}

/// Binds with mode 0600 from the start (through the umask, so there is no window where the
/// socket is open to others). A socket file left by a crashed server is replaced; one that
/// still answers belongs to a running server and is an error. Anything else at the path (a
/// regular file, a symbolic link) is an error too and is never deleted: the config may simply
/// name the wrong path.
fn bind(path: &Path) -> io::Result<UnixListener> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{} is in use by a running chatd", path.display()),
                ));
            }
            std::fs::remove_file(path)?;
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "the path exists and is not a socket; chatd does not remove it",
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let old = umask(Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(path);
    umask(old);
    let listener = bound?;
    info!("control socket at {}", path.display());
    Ok(listener)
}

/// Only root and the user the service runs as may control it.
fn allowed(cred: &UnixCredentials) -> bool {
    cred.uid() == 0 || cred.uid() == nix::unistd::geteuid().as_raw()
}

fn serve(stream: UnixStream, tx: &Sender<Request>, waker: &mio::Waker) {
    let (written_tx, written_rx) = crossbeam_channel::bounded(1);
    // A connection closed without a request is someone checking whether we are alive.
    let Some((command, reply)) = answer(&stream, tx, waker, written_rx) else { return };
    let mut line = serde_json::to_string(&reply).unwrap_or_else(|_| "{\"ok\":false}".into());
    line.push('\n');
    let mut stream = stream;
    if let Err(e) = stream.write_all(line.as_bytes()) {
        warn!("control: cannot answer: {e}");
    }
    let _ = written_tx.send(());
    if command == Some(ControlCommand::Stop) && reply.ok {
        // The answer to `stop` goes out once the workers are gone; the connection stays open
        // until the process exits, so the client's EOF means the server is gone.
        loop {
            std::thread::park();
        }
    }
}

fn answer(
    stream: &UnixStream,
    tx: &Sender<Request>,
    waker: &mio::Waker,
    written: Receiver<()>,
) -> Option<(Option<ControlCommand>, Reply)> {
    let Ok(cred) = getsockopt(stream, PeerCredentials) else {
        warn!("control: refused a client whose credentials cannot be read");
        return Some((None, Reply::failed("permission denied")));
    };
    let peer = Peer::ControlClient { pid: cred.pid(), uid: cred.uid() };
    if !allowed(&cred) {
        warn!("{peer}: refused: neither root nor the service user");
        return Some((None, Reply::failed("permission denied")));
    }
    if stream.set_read_timeout(Some(Duration::from_secs(10))).is_err() {
        return Some((None, Reply::failed("internal error")));
    }
    let mut line = String::new();
    let mut reader = BufReader::new(io::Read::take(stream, MAX_REQUEST));
    // What was wrong, and the reply when it should not say the same (docs/control.md: any
    // line that is no request is answered as an unknown request).
    let (reason, reply) = match reader.read_line(&mut line) {
        Ok(0) => return None,
        Ok(n) if n as u64 == MAX_REQUEST && !line.ends_with('\n') => (
            format!("request longer than {MAX_REQUEST} bytes"),
            Some(format!("unknown request {:?}", line.trim())),
        ),
        Ok(_) => match ControlCommand::parse(&line) {
            Some(command) => {
                let reply = forward(stream, command.clone(), tx, waker, written);
                return Some((Some(command), reply));
            }
            None => (format!("unknown request {:?}", line.trim()), None),
        },
        Err(e) if e.kind() == io::ErrorKind::InvalidData => {
            (format!("unreadable request: {e}"), None)
        }
        Err(e) => {
            warn!("{peer}: no request: {e}");
            return Some((None, Reply::failed(format!("unreadable request: {e}"))));
        }
    };
    // The connection closes after the reply.
    let bad = BadFrame::new(&peer, reason);
    Some((None, Reply::failed(reply.unwrap_or_else(|| bad.reason().to_owned()))))
}

/// Hands a request to the event loop and waits for its answer.
fn forward(
    stream: &UnixStream,
    command: ControlCommand,
    tx: &Sender<Request>,
    waker: &mio::Waker,
    written: Receiver<()>,
) -> Reply {
    let (reply_tx, reply_rx) = crossbeam_channel::bounded(1);
    let conn = (command == ControlCommand::Reload)
        .then(|| stream.as_fd().try_clone_to_owned().ok())
        .flatten();
    let request = Request { command, reply: reply_tx, written, conn };
    if tx.send(request).is_err() || waker.wake().is_err() {
        return Reply::failed("server is shutting down");
    }
    reply_rx
        .recv_timeout(ANSWER_TIMEOUT)
        .unwrap_or_else(|_| Reply::failed("no answer from the server"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_never_removes_what_is_not_a_socket() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("control.sock");
        std::fs::write(&path, "precious").expect("write");
        let error = bind(&path).expect_err("a regular file is no socket to replace");
        assert_eq!(error.kind(), io::ErrorKind::AlreadyExists, "{error}");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "precious");

        // A socket nobody answers on (left by a crashed server) is replaced.
        std::fs::remove_file(&path).expect("remove");
        drop(UnixListener::bind(&path).expect("stale socket"));
        assert!(bind(&path).is_ok());
    }
}
