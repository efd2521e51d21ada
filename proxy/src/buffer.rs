//! Per-worker buffer pools.
//!
//! Idle keep-alive connections hold no buffer: a connection borrows one when bytes arrive
//! and gives it back when its request is done and nothing is left over. The pool keeps a
//! bounded number of free buffers so steady traffic allocates nothing, and a burst that
//! needed more frees the excess.

use std::cell::RefCell;
use std::rc::Rc;

use monoio::buf::IoBufMut;

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

    /// A buffer lent to a receive that may be given up on (see [`Lent`]).
    pub fn lend(self: &Rc<Self>) -> Lent {
        Lent {
            buf: self.take(),
            pool: self.clone(),
        }
    }
}

/// A pooled buffer lent to a receive that may be given up on: dropped with the receive's
/// future, it goes back to its pool instead of being freed, so giving up allocates nothing
/// later. Only for receives that hold no kernel operation while they wait (the epoll
/// driver's, whose `recv` runs within one poll): an io_uring receive given up on may still
/// complete into the buffer, and its bytes would be lost with it.
#[derive(Debug)]
pub struct Lent {
    buf: Vec<u8>,
    pool: Rc<BufferPool>,
}

impl Lent {
    /// The buffer, with what was received into it, no longer lent.
    pub fn into_inner(mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        if self.buf.capacity() > 0 {
            self.pool.give(std::mem::take(&mut self.buf));
        }
    }
}

// SAFETY: every method is `Vec<u8>`'s own implementation, applied to the one vector this
// value owns. Nothing else reaches that vector while it is lent (the field is private, and
// `into_inner` consumes the `Lent`), and the address `write_ptr` gives is the vector's heap
// allocation, which does not move when the `Lent` does. So what `Vec<u8>`'s implementation
// promises holds here unchanged.
#[allow(unsafe_code)]
unsafe impl IoBufMut for Lent {
    #[inline]
    fn write_ptr(&mut self) -> *mut u8 {
        self.buf.write_ptr()
    }

    #[inline]
    fn bytes_total(&mut self) -> usize {
        self.buf.bytes_total()
    }

    #[inline]
    unsafe fn set_init(&mut self, pos: usize) {
        // SAFETY: the caller's promise (the first `pos` bytes are initialized) is the one
        // `Vec<u8>::set_init` needs.
        unsafe { self.buf.set_init(pos) }
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

    #[test]
    fn a_lent_buffer_dropped_goes_back_to_its_pool_and_one_kept_does_not() {
        let pool = Rc::new(BufferPool::new(1024, 4));
        let warm = pool.take();
        let ptr = warm.as_ptr();
        pool.give(warm);
        // Given up on (dropped, as with a receive's future): back in the pool, unfreed.
        drop(pool.lend());
        assert_eq!(pool.free.borrow().len(), 1);
        let back = pool.take();
        assert_eq!(back.as_ptr(), ptr, "the same buffer, not a new one");
        // Received into and kept: it is the caller's, with its bytes.
        let mut lent = pool.lend();
        let n = 3;
        // SAFETY (test): `n` bytes are written at `write_ptr` before `set_init(n)`.
        #[allow(unsafe_code)]
        unsafe {
            std::ptr::copy_nonoverlapping(b"abc".as_ptr(), lent.write_ptr(), n);
            lent.set_init(n);
        }
        assert_eq!(lent.bytes_total(), 1024);
        let kept = lent.into_inner();
        assert_eq!(kept, b"abc");
        assert!(
            pool.free.borrow().is_empty(),
            "a kept buffer is not pooled twice"
        );
    }
}
