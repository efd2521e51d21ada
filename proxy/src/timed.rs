//! Socket reads and writes bounded in time, on monoio's owned buffers: what every stage that
//! talks to a client or an upstream uses, so a stalled peer costs a timeout, never a worker.
//! The bound is the connection's [`Timer`] on its worker's coarse wheel, not a timer per
//! operation. A leaf of the request flow.

use std::io;
use std::time::Duration;

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};

use crate::deadline::Timer;

/// Writes all of `buf` within `timeout`; gives the buffer back for reuse (an empty one when
/// the write timed out, since the kernel may still own the old one's bytes in flight).
pub async fn write_all<S: AsyncWriteRentExt>(
    stream: &mut S,
    buf: Vec<u8>,
    timeout: Duration,
    timer: &Timer,
) -> (io::Result<()>, Vec<u8>) {
    match timer.within(timeout, stream.write_all(buf)).await {
        Ok((Ok(_), buf)) => (Ok(()), buf),
        Ok((Err(e), buf)) => (Err(e), buf),
        Err(_) => (Err(io::ErrorKind::TimedOut.into()), Vec::new()),
    }
}

/// Reads once into the spare capacity of `buf` (appending; grown by 4 KiB when full)
/// within `timeout`.
pub async fn read<S: AsyncReadRent>(
    stream: &mut S,
    buf: Vec<u8>,
    timeout: Duration,
    timer: &Timer,
) -> (io::Result<usize>, Vec<u8>) {
    let mut buf = buf;
    if buf.len() == buf.capacity() {
        buf.reserve(4096);
    }
    let (len, cap) = (buf.len(), buf.capacity());
    match timer
        .within(timeout, stream.read(buf.slice_mut(len..cap)))
        .await
    {
        Ok((res, slice)) => (res, slice.into_inner()),
        Err(_) => (Err(io::ErrorKind::TimedOut.into()), Vec::new()),
    }
}
