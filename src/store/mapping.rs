//! A memory file mapped shared, written in place: the workers' session tables and the room's
//! journal live in one, so that keeping them current is a store to memory — which survives a
//! SIGKILL of the writer — rather than a system call per update.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering, fence};

/// `len` bytes of a file from its start, mapped for reading and writing, unmapped on drop.
pub struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    /// Maps the first `len` bytes of `file`, shared. The mapping may reach past the file's
    /// end (it never moves when the file grows); callers touch only bytes the file has.
    pub fn new(file: &File, len: usize) -> io::Result<Mapping> {
        // SAFETY: a fresh shared mapping of a file we own; the kernel picks the address, and
        // nothing else refers to the memory.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping { ptr: ptr.cast(), len })
    }

    /// The bytes `at..at + n`.
    pub fn bytes(&mut self, at: usize, n: usize) -> &mut [u8] {
        assert!(at.checked_add(n).is_some_and(|end| end <= self.len), "bytes {at}+{n} unmapped");
        // SAFETY: inside the mapping (checked above); only this process writes it, through
        // this `&mut self`, and readers read the file.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(at), n) }
    }

    /// Stores `value` little-endian at `at` in one piece, after everything written before it
    /// (a reader after a crash sees both or only the earlier writes).
    pub fn store_u64(&mut self, at: usize, value: u64) {
        assert!(at % 8 == 0 && at + 8 <= self.len, "u64 at {at} unaligned or unmapped");
        fence(Ordering::Release);
        // SAFETY: the mapping is page-aligned, so `at`, a multiple of 8 inside it (checked),
        // is aligned for an AtomicU64; the atomic store is neither split nor moved.
        let cell = unsafe { &*self.ptr.add(at).cast::<AtomicU64>() };
        cell.store(value.to_le(), Ordering::Release);
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`, which nothing uses any more.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}
