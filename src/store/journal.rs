//! What changed since the last [`super::snapshot`], appended to one more memory file.
//!
//! Rewriting the whole room after every turn of the event loop costs in proportion to the
//! room's history; appending what the turn changed costs in proportion to the turn. A journal
//! names the snapshot version it follows: a reader applies it only on top of that version, so
//! a new snapshot (after which the journal starts over) and a crash between the two never apply
//! an entry twice or skip one.
//!
//! Layout: a 32-byte header — magic, the snapshot version it follows, the committed length of
//! the entries — then the entries, each a 4-byte length, an 8-byte checksum ([`checksum`]) and
//! the payload, little-endian. An entry is written before the committed length moves past it, so
//! a reader never sees half of one; one that fails its checksum ends the journal.
//!
//! The writer maps the file shared and appends with plain stores, no system call per entry (a
//! store to memory survives a SIGKILL of the writer, like the workers' session tables): the
//! file has a fixed capacity, [`CAPACITY`], and an entry that does not fit is refused (the
//! caller writes a snapshot instead).

use super::mapping::Mapping;
use nix::sys::memfd::{MFdFlags, memfd_create};
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;

const MAGIC: &[u8; 8] = b"chatdjn1";
const HEADER: u64 = 32;
/// Length and checksum before each entry's payload.
const ENTRY_HEADER: usize = 12;
/// The file's size, header included: pages are allocated as entries reach them.
pub const CAPACITY: usize = 4 << 20;

/// FNV-1a over 8-byte little-endian words (the last one zero-padded), then the length: it
/// detects a torn entry, nothing more is asked of it, and is written for every turn of the
/// supervisor's loop, so it takes eight bytes at a step.
fn checksum(bytes: &[u8]) -> u64 {
    let mut chunks = bytes.chunks_exact(8);
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for chunk in &mut chunks {
        let word = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
        h = (h ^ word).wrapping_mul(0x100_0000_01b3);
    }
    let mut tail = [0u8; 8];
    tail[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
    h = (h ^ u64::from_le_bytes(tail)).wrapping_mul(0x100_0000_01b3);
    (h ^ bytes.len() as u64).wrapping_mul(0x100_0000_01b3)
}

/// The writing side: one memory file, mapped, and where the next entry goes.
pub struct Journal {
    file: File,
    map: Mapping,
    /// Bytes of entries committed.
    len: u64,
}

impl Journal {
    /// A new, empty memory file named after `name`; it follows no snapshot until [`Self::restart`].
    pub fn create(name: &str) -> io::Result<Journal> {
        let fd = memfd_create(format!("chatd-{name}-journal").as_str(), MFdFlags::MFD_CLOEXEC)?;
        let file = File::from(fd);
        file.set_len(CAPACITY as u64)?;
        let map = Mapping::new(&file, CAPACITY)?;
        Ok(Journal { file, map, len: 0 })
    }

    /// Sets the committed length, after everything written before it.
    fn commit(&mut self, len: u64) {
        self.map.store_u64(16, len);
        self.len = len;
    }

    /// The file, to be stored.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Bytes of entries since the last restart.
    pub fn bytes(&self) -> u64 {
        self.len
    }

    /// Empties the journal, which from now on follows snapshot version `version` (written and
    /// complete before this is called).
    pub fn restart(&mut self, version: u64) -> io::Result<()> {
        // Nothing committed first: a crash in between leaves an empty journal, never entries
        // under the wrong version.
        self.commit(0);
        std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
        self.map.bytes(8, 8).copy_from_slice(&version.to_le_bytes());
        self.map.bytes(0, 8).copy_from_slice(MAGIC);
        Ok(())
    }

    /// Appends one entry and commits it; refused when it does not fit.
    pub fn append(&mut self, payload: &[u8]) -> io::Result<()> {
        let at = HEADER as usize + self.len as usize;
        let end = at + ENTRY_HEADER + payload.len();
        let len = u32::try_from(payload.len()).ok().filter(|_| end <= CAPACITY);
        let Some(len) = len else {
            return Err(io::Error::new(io::ErrorKind::StorageFull, "journal full"));
        };
        self.map.bytes(at, 4).copy_from_slice(&len.to_le_bytes());
        self.map.bytes(at + 4, 8).copy_from_slice(&checksum(payload).to_le_bytes());
        self.map.bytes(at + ENTRY_HEADER, payload.len()).copy_from_slice(payload);
        self.commit((end - HEADER as usize) as u64);
        Ok(())
    }
}

/// The snapshot version a journal among `files` follows, and its intact entries in order; `None`
/// if none of them is a journal.
pub fn read(files: &[OwnedFd]) -> Option<(u64, Vec<Vec<u8>>)> {
    files.iter().find_map(|fd| read_one(File::from(fd.try_clone().ok()?)))
}

fn read_one(file: File) -> Option<(u64, Vec<Vec<u8>>)> {
    let mut h = [0u8; HEADER as usize];
    file.read_exact_at(&mut h, 0).ok()?;
    if &h[..8] != MAGIC {
        return None;
    }
    let word = |i: usize| u64::from_le_bytes(h[i..i + 8].try_into().unwrap_or_default());
    let (version, len) = (word(8), word(16));
    // Positioned reads: the descriptor shares its offset with the copy systemd keeps.
    let size = file.metadata().ok()?.len().saturating_sub(HEADER);
    let mut bytes = vec![0u8; usize::try_from(len.min(size)).ok()?];
    file.read_exact_at(&mut bytes, HEADER).ok()?;
    let mut entries = Vec::new();
    let mut rest = &bytes[..];
    while rest.len() >= ENTRY_HEADER {
        let n = u32::from_le_bytes(rest[..4].try_into().unwrap_or_default()) as usize;
        let sum = u64::from_le_bytes(rest[4..12].try_into().unwrap_or_default());
        let Some(payload) = rest.get(ENTRY_HEADER..ENTRY_HEADER + n) else { break };
        if checksum(payload) != sum {
            break;
        }
        entries.push(payload.to_vec());
        rest = &rest[ENTRY_HEADER + n..];
    }
    Some((version, entries))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fds(j: &Journal) -> Vec<OwnedFd> {
        vec![OwnedFd::from(j.file().try_clone().unwrap())]
    }

    #[test]
    fn entries_come_back_in_order_after_the_version_they_follow() {
        let mut j = Journal::create("test").unwrap();
        j.restart(3).unwrap();
        j.append(b"one").unwrap();
        j.append(b"two, longer").unwrap();
        assert_eq!(read(&fds(&j)), Some((3, vec![b"one".to_vec(), b"two, longer".to_vec()])));
        j.restart(4).unwrap();
        assert_eq!(read(&fds(&j)), Some((4, vec![])));
        j.append(b"three").unwrap();
        assert_eq!(read(&fds(&j)), Some((4, vec![b"three".to_vec()])));
    }

    #[test]
    fn an_uncommitted_or_torn_entry_ends_the_journal() {
        let mut j = Journal::create("test").unwrap();
        j.restart(1).unwrap();
        j.append(b"kept").unwrap();
        j.append(b"torn").unwrap();
        // A crash in the middle of the second entry's payload.
        j.file.write_all_at(b"XX", HEADER + 12 + 4 + 12).unwrap();
        assert_eq!(read(&fds(&j)), Some((1, vec![b"kept".to_vec()])));
        // Written but not committed: not there.
        let committed = j.len;
        j.append(b"late").unwrap();
        j.file.write_all_at(&committed.to_le_bytes(), 16).unwrap();
        assert_eq!(read(&fds(&j)), Some((1, vec![b"kept".to_vec()])));
    }

    #[test]
    fn an_entry_past_the_capacity_is_refused_and_nothing_changes() {
        let mut j = Journal::create("test").unwrap();
        j.restart(2).unwrap();
        j.append(b"fits").unwrap();
        let big = vec![7u8; CAPACITY];
        assert_eq!(j.append(&big).unwrap_err().kind(), io::ErrorKind::StorageFull);
        assert_eq!(read(&fds(&j)), Some((2, vec![b"fits".to_vec()])));
    }

    #[test]
    fn a_snapshot_file_is_no_journal() {
        let mut s = super::super::snapshot::Snapshot::create("test").unwrap();
        s.write(b"payload").unwrap();
        let files: Vec<OwnedFd> =
            s.files().iter().map(|f| OwnedFd::from(f.try_clone().unwrap())).collect();
        assert_eq!(read(&files), None);
    }
}
