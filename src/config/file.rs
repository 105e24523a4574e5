//! Reading a config file without trusting what the path names (docs/operations.md).
//!
//! `chatd serve`, `check-config`, the control commands and a reload all read the config through
//! [`read`], so a FIFO cannot hang them, a device such as `/dev/zero` cannot be read without end
//! and a directory gets a plain answer: only a regular file of at most [`MAX_BYTES`] is read.

use std::fs::{File, FileType, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use super::ConfigError;

/// The largest config file accepted; a real one is a few kilobytes.
pub const MAX_BYTES: u64 = 1024 * 1024;

/// The text of the config file at `path`, or why it cannot be one.
pub fn read(path: &Path) -> Result<String, ConfigError> {
    let origin = path.display().to_string();
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer. O_NOCTTY: a
    // terminal named as config must not become our controlling terminal.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| ConfigError::read(&origin, e))?;
    // Judged on the opened file, not on the path, so the check and the read see the same file.
    let meta = file.metadata().map_err(|e| ConfigError::read(&origin, e))?;
    if !meta.is_file() {
        let kind = describe(meta.file_type());
        return Err(ConfigError::unusable(&origin, format!("is {kind}, not a regular file")));
    }
    if meta.len() > MAX_BYTES {
        return Err(too_big(&origin));
    }
    let bytes = read_capped(file).map_err(|e| ConfigError::read(&origin, e))?;
    // The file may have grown since fstat.
    if bytes.len() as u64 > MAX_BYTES {
        return Err(too_big(&origin));
    }
    String::from_utf8(bytes).map_err(|e| {
        let valid = e.utf8_error().valid_up_to();
        let bytes = e.into_bytes();
        // The prefix is valid UTF-8 by definition, so this never falls back.
        let before = std::str::from_utf8(&bytes[..valid]).unwrap_or_default();
        ConfigError::not_utf8(&origin, before)
    })
}

/// Reads at most one byte more than [`MAX_BYTES`], enough to tell that a file is too big.
fn read_capped(file: File) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    file.take(MAX_BYTES + 1).read_to_end(&mut bytes)?;
    Ok(bytes)
}

fn too_big(origin: &str) -> ConfigError {
    ConfigError::unusable(origin, format!("is larger than {} KiB", MAX_BYTES / 1024))
}

/// "a FIFO", "a directory": what a path names, for messages.
pub(crate) fn describe(kind: FileType) -> &'static str {
    if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_symlink() {
        "a symbolic link"
    } else if kind.is_file() {
        "a regular file"
    } else {
        "a special file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// The message for `path`, with the path itself cut off.
    fn refused(path: &Path) -> String {
        let started = Instant::now();
        let message = read(path).expect_err("the path should be refused").to_string();
        // "At once": no wait for a writer, no read of an endless device.
        assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
        message.strip_prefix(&path.display().to_string()).unwrap_or(&message).to_owned()
    }

    #[test]
    fn only_regular_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo.toml");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert_eq!(refused(&fifo), ": cannot read: the path is a FIFO, not a regular file");
        assert_eq!(
            refused(dir.path()),
            ": cannot read: the path is a directory, not a regular file"
        );
        assert_eq!(
            refused(Path::new("/dev/zero")),
            ": cannot read: the path is a character device, not a regular file"
        );
    }

    #[test]
    fn large_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.toml");
        let file = File::create(&path).unwrap();
        file.set_len(MAX_BYTES + 1).unwrap();
        assert_eq!(refused(&path), ": cannot read: the path is larger than 1024 KiB");
        // Exactly the limit is fine (and, all NUL bytes, valid UTF-8).
        file.set_len(MAX_BYTES).unwrap();
        assert_eq!(read(&path).unwrap().len() as u64, MAX_BYTES);
    }

    #[test]
    fn text_must_be_utf8() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("latin1.toml");
        std::fs::write(&path, b"[server]\nname = \"caf\xe9\"\n").unwrap();
        assert_eq!(refused(&path), ":2:12: invalid TOML: not valid UTF-8");
        let missing = read(&dir.path().join("missing.toml")).unwrap_err();
        assert!(missing.is_not_found(), "{missing}");
    }
}
