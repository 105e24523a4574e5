//! A record kept in two memory files, written alternately, so that a crash in the middle of a
//! write leaves the previous version readable.
//!
//! Each file holds a header — magic, a version counter, the payload's length and its FNV-1a
//! checksum — then the payload. A reader takes the valid file with the higher counter; a file
//! torn by a crash fails its checksum and is ignored.

use nix::sys::memfd::{MFdFlags, memfd_create};
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;

const MAGIC: &[u8; 8] = b"chatdsn1";
const HEADER: usize = 32;

/// FNV-1a, 64 bits: detects a torn write, nothing more is asked of it.
fn checksum(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3))
}

/// The writing side: two memory files and the counter of the last version written.
pub struct Snapshot {
    files: [File; 2],
    counter: u64,
}

impl Snapshot {
    /// Two new, empty memory files named after `name`.
    pub fn create(name: &str) -> io::Result<Snapshot> {
        let open = |suffix: &str| -> io::Result<File> {
            let fd =
                memfd_create(format!("chatd-{name}-{suffix}").as_str(), MFdFlags::MFD_CLOEXEC)?;
            Ok(File::from(fd))
        };
        Ok(Snapshot { files: [open("a")?, open("b")?], counter: 0 })
    }

    /// The version written last (0 before the first write).
    pub fn version(&self) -> u64 {
        self.counter
    }

    /// The two files, to be stored.
    pub fn files(&self) -> [&File; 2] {
        [&self.files[0], &self.files[1]]
    }

    /// Writes the next version over the older of the two files.
    pub fn write(&mut self, payload: &[u8]) -> io::Result<()> {
        self.counter += 1;
        let file = &self.files[(self.counter % 2) as usize];
        let mut header = [0u8; HEADER];
        header[..8].copy_from_slice(MAGIC);
        header[16..24].copy_from_slice(&(payload.len() as u64).to_le_bytes());
        header[24..32].copy_from_slice(&checksum(payload).to_le_bytes());
        // Counter 0 first: the file is invalid until the payload and the final header are in.
        file.write_all_at(&header, 0)?;
        file.set_len((HEADER + payload.len()) as u64)?;
        file.write_all_at(payload, HEADER as u64)?;
        header[8..16].copy_from_slice(&self.counter.to_le_bytes());
        file.write_all_at(&header, 0)
    }
}

/// The newest intact payload among `files`, if any, with its version.
pub fn read_newest(files: &[OwnedFd]) -> Option<(u64, Vec<u8>)> {
    let mut best: Option<(u64, Vec<u8>)> = None;
    for fd in files {
        let Ok(fd) = fd.try_clone() else { continue };
        let Some((counter, payload)) = read_one(File::from(fd)) else { continue };
        if best.as_ref().is_none_or(|(c, _)| counter > *c) {
            best = Some((counter, payload));
        }
    }
    best
}

fn read_one(file: File) -> Option<(u64, Vec<u8>)> {
    let mut header = [0u8; HEADER];
    file.read_exact_at(&mut header, 0).ok()?;
    let word = |i: usize| u64::from_le_bytes(header[i..i + 8].try_into().unwrap_or_default());
    let (counter, len, sum) = (word(8), word(16), word(24));
    if &header[..8] != MAGIC || counter == 0 {
        return None;
    }
    // Positioned reads: the descriptor shares its offset with the copy systemd keeps.
    let size = file.metadata().ok()?.len();
    if len > size.saturating_sub(HEADER as u64) {
        return None;
    }
    let mut payload = vec![0u8; usize::try_from(len).ok()?];
    file.read_exact_at(&mut payload, HEADER as u64).ok()?;
    (checksum(&payload) == sum).then_some((counter, payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fds(s: &Snapshot) -> Vec<OwnedFd> {
        s.files().iter().map(|f| OwnedFd::from(f.try_clone().unwrap())).collect()
    }

    #[test]
    fn the_newest_intact_version_is_read() {
        let mut s = Snapshot::create("test").unwrap();
        assert_eq!(read_newest(&fds(&s)), None);
        s.write(b"one").unwrap();
        s.write(b"two, longer").unwrap();
        assert_eq!(read_newest(&fds(&s)), Some((2, b"two, longer".to_vec())));
        s.write(b"three").unwrap();
        assert_eq!(read_newest(&fds(&s)), Some((3, b"three".to_vec())));
    }

    #[test]
    fn a_torn_write_falls_back_to_the_previous_version() {
        let mut s = Snapshot::create("test").unwrap();
        s.write(b"one").unwrap();
        s.write(b"two").unwrap();
        // A crash while writing "three" over "one": the payload changed, the header did not.
        s.files[1].write_all_at(b"thr", HEADER as u64).unwrap();
        assert_eq!(read_newest(&fds(&s)), Some((2, b"two".to_vec())));
    }
}
