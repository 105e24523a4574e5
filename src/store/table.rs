//! The session table: one fixed-size record per session a worker serves, in a memory file the
//! worker maps shared and updates in place as it writes to its clients (a store to memory
//! survives a SIGKILL of the worker; no system call per line). Stored in systemd's descriptor
//! store next to the bag of sockets ([`super::bag`]), it tells the supervisor started after a
//! crash what each socket in the bag was: which session, how far its output got, its
//! unfinished input line and its rate-limit tokens.
//!
//! A record (little-endian, [`RECORD`] bytes): `session` (0: free slot), the socket's `inode`,
//! two copies of the output position and the index of the valid one (written last, so a crash
//! in the middle of an update leaves the other copy intact), tokens (`NaN`: no limit), and the
//! unfinished input line (at most [`INPUT`] bytes). The file starts with a 16-byte header
//! (magic and record size) and grows by whole records.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;

use super::mapping::Mapping;

const MAGIC: &[u8; 8] = b"chatdst1";
const HEADER: usize = 16;
/// Bytes per record.
pub const RECORD: usize = 512;
/// Unfinished input kept per session; a longer partial line keeps its first `INPUT` bytes.
pub const INPUT: usize = RECORD - 112;
/// Records the mapping has room for: the file grows into it, the mapping never moves.
const MAX_RECORDS: usize = 1 << 20;

const SESSION: usize = 0;
const INODE: usize = 8;
const POS: usize = 16;
const POS_LEN: usize = 32;
const WHICH: usize = 80;
const TOKENS: usize = 88;
const INPUT_LEN: usize = 104;
const INPUT_AT: usize = 112;

/// How far a session's output got: the bytes written to the socket in total, the last room
/// event written whole, and what the last byte written was in the middle of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    pub written: u64,
    pub last_full: u64,
    pub tail: Tail,
}

/// Where the output written so far ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Tail {
    /// At the end of a line.
    #[default]
    Clean,
    /// Inside room event `seq`, of which `len` bytes were written.
    Room { seq: u64, len: u64 },
    /// Inside a line of another kind (a private line, an answer).
    Other,
}

impl Position {
    fn encode(&self) -> [u8; POS_LEN] {
        let (kind, seq, len) = match self.tail {
            Tail::Clean => (0u64, 0, 0),
            Tail::Room { seq, len } => (1, seq, len),
            Tail::Other => (2, 0, 0),
        };
        let mut b = [0u8; POS_LEN];
        for (i, v) in [self.written, self.last_full, seq, (len << 2) | kind].iter().enumerate() {
            b[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
        b
    }

    fn decode(b: &[u8]) -> Position {
        let w = |i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap_or_default());
        let tail = match w(3) & 3 {
            1 => Tail::Room { seq: w(2), len: w(3) >> 2 },
            2 => Tail::Other,
            _ => Tail::Clean,
        };
        Position { written: w(0), last_full: w(1), tail }
    }
}

/// Bytes the application wrote to a TCP socket so far: acknowledged plus still queued.
pub fn socket_written(fd: BorrowedFd<'_>) -> u64 {
    let mut info = [0u8; 232];
    let mut len = info.len() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into the buffer we own.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    // `tcpi_bytes_acked` is at offset 120 of `struct tcp_info` (Linux 4.1 and later).
    if rc != 0 || (len as usize) < 128 {
        return 0;
    }
    let acked = u64::from_le_bytes(info[120..128].try_into().unwrap_or_default());
    let mut queued: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (TIOCOUTQ) writes one int through the pointer we pass.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCOUTQ, &mut queued) };
    acked + if rc < 0 { 0 } else { queued.max(0) as u64 }
}

/// A record as read back.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub session: u64,
    pub inode: u64,
    pub position: Position,
    pub tokens: Option<f64>,
    pub input: Vec<u8>,
}

/// The worker's side: the file, mapped shared.
pub struct Table {
    file: File,
    map: Mapping,
    records: usize,
}

impl Table {
    /// A new, empty table with room for `records` sessions before it grows.
    pub fn create(name: &str, records: usize) -> io::Result<Table> {
        let fd = nix::sys::memfd::memfd_create(
            format!("chatd-{name}").as_str(),
            nix::sys::memfd::MFdFlags::MFD_CLOEXEC,
        )?;
        let file = File::from(fd);
        let mut header = [0u8; HEADER];
        header[..8].copy_from_slice(MAGIC);
        header[8..16].copy_from_slice(&(RECORD as u64).to_le_bytes());
        file.write_all_at(&header, 0)?;
        // Pages past the file's end are never touched: `records` bounds every access.
        let map = Mapping::new(&file, HEADER + MAX_RECORDS * RECORD)?;
        let mut table = Table { file, map, records: 0 };
        table.grow(records.max(1))?;
        Ok(table)
    }

    /// The memory file, to be stored.
    pub fn file(&self) -> std::os::fd::BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// Records there is room for now.
    pub fn capacity(&self) -> usize {
        self.records
    }

    /// Room for at least `records` (at most [`MAX_RECORDS`]).
    pub fn grow(&mut self, records: usize) -> io::Result<()> {
        let records = records.min(MAX_RECORDS);
        if records > self.records {
            self.file.set_len((HEADER + records * RECORD) as u64)?;
            self.records = records;
        }
        Ok(())
    }

    fn bytes(&mut self, index: usize, at: usize, len: usize) -> &mut [u8] {
        // The file has `self.records` records: the bytes are backed by it.
        assert!(index < self.records && at + len <= RECORD, "record {index} out of range");
        self.map.bytes(HEADER + index * RECORD + at, len)
    }

    /// Fills slot `index` for a session whose socket has inode `inode`.
    pub fn open(&mut self, index: usize, session: u64, inode: u64, position: Position) {
        self.bytes(index, INODE, 8).copy_from_slice(&inode.to_le_bytes());
        self.bytes(index, TOKENS, 8).copy_from_slice(&f64::NAN.to_le_bytes());
        self.bytes(index, INPUT_LEN, 8).fill(0);
        self.set_position(index, position);
        // Last: the slot counts as used from here on.
        self.bytes(index, SESSION, 8).copy_from_slice(&session.to_le_bytes());
    }

    /// Frees slot `index`.
    pub fn close(&mut self, index: usize) {
        self.bytes(index, SESSION, 8).fill(0);
    }

    /// Records how far the output of slot `index` got: into the copy not in use, then that
    /// copy is made the valid one.
    pub fn set_position(&mut self, index: usize, position: Position) {
        let which = self.bytes(index, WHICH, 8)[0] & 1;
        let other = 1 - which;
        let at = POS + usize::from(other) * POS_LEN;
        self.bytes(index, at, POS_LEN).copy_from_slice(&position.encode());
        self.bytes(index, WHICH, 8)[0] = other;
    }

    /// Records the rate limiter's tokens.
    pub fn set_tokens(&mut self, index: usize, tokens: Option<f64>) {
        let v = tokens.unwrap_or(f64::NAN);
        self.bytes(index, TOKENS, 8).copy_from_slice(&v.to_le_bytes());
    }

    /// Records the unfinished input line (its first [`INPUT`] bytes).
    pub fn set_input(&mut self, index: usize, input: &[u8]) {
        let input = &input[..input.len().min(INPUT)];
        self.bytes(index, INPUT_LEN, 8)[..2].copy_from_slice(&0u16.to_le_bytes());
        self.bytes(index, INPUT_AT, input.len()).copy_from_slice(input);
        let len = (input.len() as u16).to_le_bytes();
        self.bytes(index, INPUT_LEN, 8)[..2].copy_from_slice(&len);
    }
}

/// The sessions recorded in a stored table (free slots skipped); empty if it is not one.
pub fn read(fd: &OwnedFd) -> Vec<Entry> {
    let Ok(fd) = fd.try_clone() else { return Vec::new() };
    let file = File::from(fd);
    let mut header = [0u8; HEADER];
    if file.read_exact_at(&mut header, 0).is_err()
        || &header[..8] != MAGIC
        || header[8..16] != (RECORD as u64).to_le_bytes()
    {
        return Vec::new();
    }
    let size = file.metadata().map_or(0, |m| m.len() as usize);
    let count = size.saturating_sub(HEADER) / RECORD;
    let mut bytes = vec![0u8; count * RECORD];
    if file.read_exact_at(&mut bytes, HEADER as u64).is_err() {
        return Vec::new();
    }
    bytes.chunks_exact(RECORD).filter_map(decode).collect()
}

fn decode(r: &[u8]) -> Option<Entry> {
    let word = |at: usize| u64::from_le_bytes(r[at..at + 8].try_into().unwrap_or_default());
    let session = word(SESSION);
    if session == 0 {
        return None;
    }
    let which = usize::from(r[WHICH] & 1);
    let position = Position::decode(&r[POS + which * POS_LEN..POS + (which + 1) * POS_LEN]);
    let tokens = f64::from_le_bytes(r[TOKENS..TOKENS + 8].try_into().unwrap_or_default());
    let input_len = usize::from(u16::from_le_bytes([r[INPUT_LEN], r[INPUT_LEN + 1]])).min(INPUT);
    Some(Entry {
        session,
        inode: word(INODE),
        position,
        tokens: (!tokens.is_nan()).then_some(tokens),
        input: r[INPUT_AT..INPUT_AT + input_len].to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_written_in_place_are_read_back() {
        let mut t = Table::create("test", 2).unwrap();
        t.open(0, 7, 1234, Position::default());
        t.open(1, 8, 99, Position::default());
        t.grow(5).unwrap();
        t.open(4, 9, 5, Position::default());
        let pos = Position { written: 500, last_full: 41, tail: Tail::Room { seq: 42, len: 3 } };
        t.set_position(0, pos);
        t.set_tokens(0, Some(2.5));
        t.set_input(0, b"hal");
        t.close(1);
        let fd = OwnedFd::from(t.file.try_clone().unwrap());
        let back = read(&fd);
        assert_eq!(back.len(), 2);
        assert_eq!(back[0].session, 7);
        assert_eq!((back[0].inode, back[0].position, back[0].tokens), (1234, pos, Some(2.5)));
        assert_eq!(back[0].input, b"hal");
        assert_eq!(
            (back[1].session, back[1].position.tail, back[1].tokens),
            (9, Tail::Clean, None)
        );
    }

    #[test]
    fn an_update_torn_before_its_switch_leaves_the_previous_position() {
        let mut t = Table::create("test", 1).unwrap();
        t.open(0, 7, 1, Position::default());
        let first = Position { written: 10, last_full: 3, tail: Tail::Other };
        t.set_position(0, first);
        // A crash after the copy is written but before the switch: the copy not in use changed.
        let which = usize::from(t.bytes(0, WHICH, 1)[0]);
        let spare = POS + (1 - which) * POS_LEN;
        t.bytes(0, spare, 8).copy_from_slice(&999u64.to_le_bytes());
        let fd = OwnedFd::from(t.file.try_clone().unwrap());
        assert_eq!(read(&fd)[0].position, first);
    }
}
