//! A task's panic, contained: the connection (or stream) whose handler panicked is dropped
//! and logged, and the worker goes on serving everyone else.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};

/// A spawned task whose panic is logged and contained (HTTP/2 stream tasks): the stream is
/// dropped, its connection and the worker go on.
pub async fn contained<F: Future<Output = ()>>(fut: F) {
    if let Err(panic) = catch_unwind(fut).await {
        tracing::error!(
            panic = panic_message(&*panic),
            "HTTP/2 stream handler panicked; stream dropped, worker continues"
        );
    }
}

pub fn catch_unwind<F: Future>(fut: F) -> CatchUnwind<F> {
    CatchUnwind { fut }
}

pin_project_lite::pin_project! {
    /// A future that turns its inner future's panic into an `Err`.
    #[derive(Debug)]
    pub struct CatchUnwind<F> {
        #[pin]
        fut: F,
    }
}

impl<F: Future> Future for CatchUnwind<F> {
    type Output = std::thread::Result<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let fut = self.project().fut;
        // Every connection's and stream's task is polled here: one clock reading per poll.
        let _clock = crate::clock::PollScope::enter();
        match std::panic::catch_unwind(AssertUnwindSafe(|| fut.poll(cx))) {
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}

/// The message of a panic payload (`panic!("...")` gives `&str` or `String`).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    if let Some(message) = payload.downcast_ref::<&str>() {
        message
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message
    } else {
        "(non-string panic payload)"
    }
}
