//! The three places the HTTP/2 bridge touches monoio's rent buffers by pointer: copying
//! into a read buffer, viewing a write buffer and viewing a vectored write's slices.
//! monoio's own sockets do the same through the kernel; [`crate::h2stream::H2Stream`] is a
//! stream in memory, so it copies itself.

use monoio::buf::{IoBuf, IoBufMut, IoVecBuf};

/// Copies as much of `src` as fits into the start of `buf` and marks it initialised;
/// returns how much was copied.
pub fn fill<T: IoBufMut>(buf: &mut T, src: &[u8]) -> usize {
    let n = src.len().min(buf.bytes_total());
    // SAFETY: `IoBufMut` promises `write_ptr` is valid for writes of `bytes_total()` bytes
    // for as long as the buffer is borrowed; `n` is at most that, `src` is a distinct
    // borrow (it cannot overlap a buffer held by value), and `set_init(n)` is called only
    // after those `n` bytes are written.
    unsafe {
        std::ptr::copy_nonoverlapping(src.as_ptr(), buf.write_ptr(), n);
        buf.set_init(n);
    }
    n
}

/// The initialised bytes of `buf`.
pub fn bytes<T: IoBuf>(buf: &T) -> &[u8] {
    // SAFETY: `IoBuf` promises `read_ptr` points at `bytes_init()` initialised bytes that
    // stay valid and unchanged while the buffer is borrowed (the returned slice borrows it).
    unsafe { std::slice::from_raw_parts(buf.read_ptr(), buf.bytes_init()) }
}

/// The slices of a vectored write buffer, in order.
pub fn slices<T: IoVecBuf>(buf: &T) -> impl Iterator<Item = &[u8]> {
    // SAFETY: `IoVecBuf` promises `read_iovec_ptr` points at `read_iovec_len()` valid
    // `iovec`s that stay unchanged while the buffer is borrowed (the iterator borrows it).
    let iovecs = unsafe { std::slice::from_raw_parts(buf.read_iovec_ptr(), buf.read_iovec_len()) };
    iovecs.iter().map(|v| {
        // SAFETY: each `iovec` of an `IoVecBuf` names `iov_len` initialised bytes at
        // `iov_base`, valid for the same borrow.
        unsafe { std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len) }
    })
}
