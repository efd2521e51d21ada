//! Socket reads and writes bounded in time, on monoio's owned buffers: what every stage that
//! talks to a client or an upstream uses, so a stalled peer costs a timeout, never a worker.
//! The bound is the connection's [`Timer`] on its worker's coarse wheel, not a timer per
//! operation. A leaf of the request flow.

use std::io;
use std::time::Duration;

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};

use crate::deadline::Timer;
use crate::vectored::HeadAndBody;

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

/// Writes all of `write` (a head and body bytes, one vectored write while the socket takes
/// it all) within `timeout`; gives it back for reuse (`None` when the write timed out: the
/// kernel may still own its bytes in flight).
pub async fn write_head_and_body<S: AsyncWriteRent>(
    stream: &mut S,
    write: HeadAndBody,
    timeout: Duration,
    timer: &Timer,
) -> (io::Result<()>, Option<HeadAndBody>) {
    let all = async move {
        let mut write = write;
        while write.remaining() > 0 {
            let (res, back) = stream.writev(write).await;
            write = back;
            match res {
                Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), write),
                Ok(n) => write.advance(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return (Err(e), write),
            }
        }
        (Ok(()), write)
    };
    match timer.within(timeout, all).await {
        Ok((res, write)) => (res, Some(write)),
        Err(_) => (Err(io::ErrorKind::TimedOut.into()), None),
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
