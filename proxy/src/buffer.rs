//! Per-worker buffer pools.
//!
//! Idle keep-alive connections hold no buffer: a connection borrows one when bytes arrive
//! and gives it back when its request is done and nothing is left over. The pool keeps a
//! bounded number of free buffers so steady traffic allocates nothing, and a burst that
//! needed more frees the excess.

use std::cell::RefCell;

/// Buffers for request and response heads (and what arrives with them).
pub const HEAD_BUFFER: usize = 16 * 1024 + 512;
/// Buffers for the response head sent to the client with the body bytes that came with
/// the upstream's head: a head buffer plus room for the headers the gateway adds.
pub const REPLY_BUFFER: usize = HEAD_BUFFER + 4096;
/// Buffers for the upstream request's line and header block (prepared per request).
pub const LINE_BUFFER: usize = 4096;
/// Buffers for streaming bodies.
pub const BODY_BUFFER: usize = 64 * 1024;

/// A pool of equally sized byte buffers, owned by one worker thread.
#[derive(Debug)]
pub struct BufferPool {
    size: usize,
    max_free: usize,
    free: RefCell<Vec<Vec<u8>>>,
}

impl BufferPool {
    pub fn new(size: usize, max_free: usize) -> BufferPool {
        BufferPool {
            size,
            max_free,
            free: RefCell::new(Vec::new()),
        }
    }

    /// An empty buffer with at least `size` capacity.
    pub fn take(&self) -> Vec<u8> {
        self.free
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(self.size))
    }

    /// Returns a buffer; odd-sized or surplus buffers are freed.
    pub fn give(&self, mut buf: Vec<u8>) {
        if buf.capacity() != self.size {
            return;
        }
        let mut free = self.free.borrow_mut();
        if free.len() < self.max_free {
            buf.clear();
            free.push(buf);
        }
    }

    pub fn buffer_size(&self) -> usize {
        self.size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_and_surplus_is_freed() {
        let pool = BufferPool::new(1024, 1);
        let mut a = pool.take();
        a.extend_from_slice(b"abc");
        let ptr = a.as_ptr();
        pool.give(a);
        let b = pool.take();
        assert_eq!(b.as_ptr(), ptr, "the freed buffer is reused");
        assert!(b.is_empty());
        pool.give(b);
        pool.give(Vec::with_capacity(1024));
        assert_eq!(
            pool.free.borrow().len(),
            1,
            "beyond max_free buffers are dropped"
        );
        pool.give(Vec::with_capacity(10));
        assert_eq!(pool.free.borrow().len(), 1, "odd sizes are never pooled");
    }
}
