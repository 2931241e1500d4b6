//! A registered ring of provided buffers: the kernel picks one per receive, we hand it back once
//! its bytes are copied out.

use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::IoUring;
use io_uring::types::BufRingEntry;

/// The buffers and the ring of entries that offers them to the kernel.
pub struct BufRing {
    entries: *mut BufRingEntry,
    entries_len: usize,
    memory: Vec<u8>,
    size: usize,
    mask: u16,
    tail: u16,
}

impl BufRing {
    /// Registers `count` buffers of `size` bytes as buffer group `group` and offers them all.
    pub fn register(ring: &IoUring, group: u16, count: u16, size: usize) -> io::Result<BufRing> {
        assert!(count.is_power_of_two());
        let entries_len = usize::from(count) * std::mem::size_of::<BufRingEntry>();
        // SAFETY: an anonymous private mapping; checked for failure below.
        let entries = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                entries_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if entries == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let mut bufs = BufRing {
            entries: entries.cast(),
            entries_len,
            memory: vec![0; usize::from(count) * size],
            size,
            mask: count - 1,
            tail: 0,
        };
        // SAFETY: the mapping is page-aligned, `count` entries long, and lives as long as `bufs`,
        // which the proxy keeps for as long as the ring.
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(entries as u64, count, group, 0)?
        };
        for bid in 0..count {
            bufs.recycle(bid);
        }
        Ok(bufs)
    }

    /// The first `len` bytes the kernel wrote into buffer `bid`.
    pub fn get(&self, bid: u16, len: usize) -> &[u8] {
        let start = usize::from(bid) * self.size;
        &self.memory[start..start + len.min(self.size)]
    }

    /// Offers buffer `bid` to the kernel again.
    pub fn recycle(&mut self, bid: u16) {
        let addr = self.memory[usize::from(bid) * self.size..].as_ptr() as u64;
        // SAFETY: `tail & mask` indexes one of the `count` entries of the mapping.
        unsafe {
            let entry = &mut *self.entries.add(usize::from(self.tail & self.mask));
            entry.set_addr(addr);
            entry.set_len(self.size as u32);
            entry.set_bid(bid);
        }
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: the ring's tail field, shared with the kernel, written with release ordering so
        // the kernel sees the entry before the new tail.
        unsafe {
            let tail = BufRingEntry::tail(self.entries) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `register`, unmapped once.
        unsafe { libc::munmap(self.entries.cast(), self.entries_len) };
    }
}
