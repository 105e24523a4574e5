//! Giving memory back.
//!
//! A burst of traffic (a thousand clients joining, a slow client's backlog) leaves freed buffers
//! in the allocator, and glibc keeps most of them for the process. Both kinds of process call
//! [`trim`] once things are quiet again, so a server that was busy once does not keep its peak
//! footprint for good.

/// Hands freed heap memory back to the system.
pub fn trim() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks the allocator's free lists and releases unused pages.
    unsafe {
        libc::malloc_trim(0);
    }
}
