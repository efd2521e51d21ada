//! One vectored write of a response head and the body bytes that came with the upstream's
//! head, so those bytes go out from the buffer they were read into instead of being copied
//! behind the head first (at 16 KiB that copy was 2.9 % of the worker: docs/RUNTIME.md).
//!
//! monoio's own vectored types do not fit the hot path: `VecBuf` allocates two vectors per
//! write, and `write_vectored_all` allocates its own iovec copy per call (and does not
//! advance a partly written iovec). [`HeadAndBody`] owns both buffers and a pooled, boxed
//! pair of iovecs, so a write allocates nothing in steady state, and a write given up on
//! (its future dropped while the kernel still holds the operation) keeps everything the
//! kernel reads alive until the operation completes, as monoio's owned buffers do.
//!
//! A leaf: it knows only monoio's buffer traits.

use std::cell::RefCell;
use std::ops::Range;

use monoio::buf::IoVecBuf;

/// Free iovec pairs kept per worker.
const MAX_FREE: usize = 1024;

type Pair = Box<[libc::iovec; 2]>;

fn empty_pair() -> Pair {
    Box::new(
        [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; 2],
    )
}

/// One worker's free iovec pairs.
#[derive(Debug, Default)]
pub struct Vectors {
    free: RefCell<Vec<Pair>>,
}

impl Vectors {
    fn take(&self) -> Pair {
        self.free.borrow_mut().pop().unwrap_or_else(empty_pair)
    }

    fn give(&self, pair: Pair) {
        let mut free = self.free.borrow_mut();
        if free.len() < MAX_FREE {
            free.push(pair);
        }
    }
}

/// `head`, then `body[range]`, as one vectored write; what is left after a partial write.
pub struct HeadAndBody {
    /// Boxed so that the pointer handed to the kernel stays put while this value moves
    /// (into the operation, and with it).
    iov: Pair,
    head: Vec<u8>,
    body: Vec<u8>,
    range: Range<usize>,
    /// Bytes written so far.
    sent: usize,
}

impl HeadAndBody {
    /// `range` must lie within `body` (it is clamped to it).
    pub fn new(vectors: &Vectors, head: Vec<u8>, body: Vec<u8>, range: Range<usize>) -> Self {
        let end = range.end.min(body.len());
        let mut this = HeadAndBody {
            iov: vectors.take(),
            head,
            body,
            range: range.start.min(end)..end,
            sent: 0,
        };
        this.aim();
        this
    }

    pub fn len(&self) -> usize {
        self.head.len() + self.range.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Notes `n` more bytes written and points the iovecs at what is left.
    pub fn advance(&mut self, n: usize) {
        self.sent = (self.sent + n).min(self.len());
        self.aim();
    }

    pub fn remaining(&self) -> usize {
        self.len() - self.sent
    }

    fn aim(&mut self) {
        let in_head = self.sent.min(self.head.len());
        let head = &self.head[in_head..];
        let body = &self.body[self.range.start + (self.sent - in_head)..self.range.end];
        self.iov[0] = libc::iovec {
            iov_base: head.as_ptr() as *mut libc::c_void,
            iov_len: head.len(),
        };
        self.iov[1] = libc::iovec {
            iov_base: body.as_ptr() as *mut libc::c_void,
            iov_len: body.len(),
        };
    }

    /// The two buffers back (the iovec pair back to `vectors`).
    pub fn into_parts(self, vectors: &Vectors) -> (Vec<u8>, Vec<u8>) {
        vectors.give(self.iov);
        (self.head, self.body)
    }
}

impl std::fmt::Debug for HeadAndBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeadAndBody")
            .field("len", &self.len())
            .field("sent", &self.sent)
            .finish_non_exhaustive()
    }
}

// SAFETY: `read_iovec_ptr` points at two iovecs in a box this value owns, so the pointer
// stays valid while the value moves into the runtime's operation and while the operation
// holds it. Each iovec points into `head` or `body` (made by `aim` from slices of them);
// both are owned by this value, their heap storage does not move when the `Vec`s move, and
// nothing changes them or the iovecs while the runtime owns the value: the fields are
// private and `aim` needs `&mut self`, which the caller has only before handing the value
// over or after getting it back.
unsafe impl IoVecBuf for HeadAndBody {
    fn read_iovec_ptr(&self) -> *const libc::iovec {
        self.iov.as_ptr()
    }

    fn read_iovec_len(&self) -> usize {
        2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(write: &HeadAndBody) -> Vec<u8> {
        let mut out = Vec::new();
        for iov in write.iov.iter() {
            // The test reads what the kernel would: the bytes each iovec names.
            let bytes = if iov.iov_len == 0 {
                &[][..]
            } else {
                let in_head = write
                    .head
                    .as_ptr_range()
                    .contains(&(iov.iov_base as *const u8));
                let start = if in_head { &write.head } else { &write.body };
                let offset = iov.iov_base as usize - start.as_ptr() as usize;
                &start[offset..offset + iov.iov_len]
            };
            out.extend_from_slice(bytes);
        }
        out
    }

    #[test]
    fn partial_writes_move_through_the_head_then_the_body_range() {
        let vectors = Vectors::default();
        let mut write = HeadAndBody::new(&vectors, b"HEAD".to_vec(), b"xxbodyyy".to_vec(), 2..6);
        assert_eq!(write.len(), 8);
        assert_eq!(pending(&write), b"HEADbody");
        write.advance(3);
        assert_eq!(pending(&write), b"Dbody");
        write.advance(2);
        assert_eq!(pending(&write), b"ody");
        assert_eq!(write.remaining(), 3);
        write.advance(10);
        assert_eq!(write.remaining(), 0);
        assert_eq!(pending(&write), b"");
        let (head, body) = write.into_parts(&vectors);
        assert_eq!(
            (head.as_slice(), body.as_slice()),
            (&b"HEAD"[..], &b"xxbodyyy"[..])
        );
        assert_eq!(
            vectors.free.borrow().len(),
            1,
            "the iovec pair is kept for reuse"
        );
    }

    #[test]
    fn a_range_past_the_body_is_clamped() {
        let vectors = Vectors::default();
        let write = HeadAndBody::new(&vectors, b"H".to_vec(), b"abc".to_vec(), 1..9);
        assert_eq!(pending(&write), b"Hbc");
    }
}
