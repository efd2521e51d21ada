//! HTTP/2 from clients: ALPN `h2` on the TLS listener and h2c with prior knowledge on the
//! plain one (the connection preface is recognised where an HTTP/1.1 head would start).
//!
//! The protocol is hyperium's `h2` over the connection's bytes ([`crate::h2io`]); each
//! stream runs as its own task through the HTTP/1.1 request flow ([`crate::h2stream`]),
//! or, for services whose upstream speaks HTTP/2 (gRPC), is relayed frame for frame
//! ([`crate::h2upstream`]).
//!
//! The attack surface, each bound with its default in [`H2Limits`](crate::settings::H2Limits) (docs/SECURITY.md has
//! the table): concurrent streams, header list size, flow-control windows that bound the
//! memory a connection can make the gateway hold, a send buffer per stream, rapid reset
//! (CVE-2023-44487: streams the client resets before their answer count against it, and a
//! client that resets more than it lets finish is sent GOAWAY `ENHANCE_YOUR_CALM` and
//! closed), CONTINUATION floods (CVE-2024-27316: `h2` caps a header block at the header
//! list size however many frames carry it), SETTINGS and PING floods (`h2` acknowledges
//! one at a time and stops reading while an acknowledgement is unsent), and the idle and
//! header timeouts of HTTP/1.1 (the preface must arrive within the header timeout; a
//! connection with no stream open closes after the keep-alive timeout).

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::Poll;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{Reason, RecvStream};
use http::Request;

use crate::connection::RequestSlot;
use crate::deadline::Timer;
use crate::downstream::Downstream;
use crate::exchange::Client;
use crate::h2io::H2Io;
use crate::h2stream::{self as stream, H2Stream};
use crate::plane::WorkerContext;

/// How long a connection that failed is given to send its GOAWAY.
const GOAWAY_FLUSH: std::time::Duration = std::time::Duration::from_secs(1);

/// What a connection's streams tell its accept loop.
#[derive(Debug, Default)]
struct Tally {
    /// Stream tasks running.
    open: Cell<usize>,
    /// Streams answered in full.
    done: Cell<u64>,
    /// Streams the client reset before their answer was complete.
    reset: Cell<u64>,
}

/// Serves an HTTP/2 connection until the client closes it, it idles out, or the worker
/// shuts down (GOAWAY, then the streams in flight finish).
pub async fn serve(
    io: H2Io,
    peer: SocketAddr,
    ctx: Rc<WorkerContext>,
    tls: bool,
) -> std::io::Result<()> {
    let plane = ctx.plane();
    let settings = &plane.settings;
    let limits = &settings.h2;
    let mut builder = h2::server::Builder::new();
    builder
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(limits.max_header_list_size)
        .initial_window_size(limits.stream_window)
        .initial_connection_window_size(limits.connection_window)
        .max_send_buffer_size(limits.send_buffer)
        .max_pending_accept_reset_streams(20)
        .max_local_error_reset_streams(Some(1024));
    let handshake = builder.handshake::<_, Bytes>(io);
    let mut conn = match monoio::time::timeout(settings.header_timeout, handshake).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => return Err(stream::h2_error(e)),
        Err(_) => {
            tracing::debug!(%peer, "HTTP/2 preface timed out");
            return Ok(());
        }
    };
    let timer = Timer::new(&plane.wheel);
    let tally = Rc::new(Tally::default());
    let mut closing = false;
    loop {
        let next = monoio::select! {
            next = timer.within(settings.keepalive_timeout, conn.accept()) => next,
            _ = ctx.shutdown().triggered(), if !closing => {
                closing = true;
                conn.graceful_shutdown();
                continue;
            }
        };
        match next {
            Ok(Some(Ok((request, respond)))) => {
                if tally.reset.get() > tally.done.get() + limits.reset_allowance {
                    tracing::warn!(%peer, resets = tally.reset.get(), answered = tally.done.get(),
                        "HTTP/2 client resets streams faster than it lets them finish: GOAWAY");
                    conn.abrupt_shutdown(Reason::ENHANCE_YOUR_CALM);
                    closing = true;
                    drop((request, respond));
                    continue;
                }
                tally.open.set(tally.open.get() + 1);
                let task = run_stream(request, respond, peer, ctx.clone(), tls, tally.clone());
                monoio::spawn(crate::unwind::contained(task));
            }
            Ok(Some(Err(e))) => {
                tracing::debug!(%peer, error = %e, "HTTP/2 connection error");
                // h2 queued a GOAWAY saying why (ENHANCE_YOUR_CALM after too many resets
                // before accept, PROTOCOL_ERROR, ...): let it go out before the close.
                let flush = poll_fn(|cx| conn.poll_closed(cx));
                let _ = monoio::time::timeout(GOAWAY_FLUSH, flush).await;
                return Err(stream::h2_error(e));
            }
            Ok(None) => return Ok(()),
            Err(_elapsed) => {
                if closing && tally.open.get() == 0 {
                    // GOAWAY was sent a keep-alive timeout ago and the client neither
                    // closed nor acknowledged the PING that ends a graceful close: its place
                    // is given back now.
                    conn.abrupt_shutdown(Reason::NO_ERROR);
                    let flush = poll_fn(|cx| conn.poll_closed(cx));
                    let _ = monoio::time::timeout(GOAWAY_FLUSH, flush).await;
                    return Ok(());
                }
                if tally.open.get() == 0 && !closing {
                    closing = true;
                    conn.graceful_shutdown();
                }
            }
        }
        if ctx.shutdown().is_triggered() && !closing {
            closing = true;
            conn.graceful_shutdown();
        }
    }
}

/// One stream through the request flow, abandoned as soon as the client resets it.
async fn run_stream(
    request: Request<RecvStream>,
    respond: SendResponse<Bytes>,
    peer: SocketAddr,
    ctx: Rc<WorkerContext>,
    tls: bool,
    tally: Rc<Tally>,
) {
    let plane = ctx.plane();
    let settings = &plane.settings;
    let respond = Rc::new(RefCell::new(Some(respond)));
    let send = Rc::new(RefCell::new(None));
    let stream = H2Stream::new(
        request,
        respond.clone(),
        send.clone(),
        tls,
        settings.head_limits,
    );
    let timer = Timer::new(&plane.wheel);
    let mut client = Client::new(
        Downstream::H2(Box::new(stream)),
        peer,
        settings.client_io_timeout,
        timer,
    );
    client.buf = plane.heads.take();
    client.fresh = false;
    // The client's RST_STREAM ends the work at once: while the answer is prepared (rapid
    // reset costs the gateway a decision, not an upstream exchange) and while its body is
    // awaited (a long poll the client gave up on frees its upstream). Only the client's
    // resets wake this: a stream that ends normally never does.
    let reset = poll_fn(|cx| {
        if let Some(respond) = respond.borrow_mut().as_mut() {
            return respond.poll_reset(cx).map(|_| ());
        }
        match send.borrow_mut().as_mut() {
            Some(send) => send.poll_reset(cx).map(|_| ()),
            None => Poll::Pending,
        }
    });
    // The request runs in one of the worker's request slots, as an HTTP/1.1 request does:
    // its state (tens of kilobytes) is reused, not allocated and moved per stream.
    let mut slot = RequestSlot::take();
    let served = monoio::select! {
        served = slot.serve(client, ctx.clone()) => Some(served),
        _ = reset => None,
    };
    // Only the client's own resets count against it (rapid reset); a stream the gateway
    // ended for an upstream's failure is not the client's doing.
    let reset_by_client = match served {
        Some((mut client, _step)) => {
            slot.free();
            let reset = match &mut client.stream {
                Downstream::H2(stream) => {
                    stream.finish();
                    stream.peer_reset
                }
                _ => false,
            };
            plane.heads.give(std::mem::take(&mut client.buf));
            reset
        }
        // Abandoned mid-request: the slot's future holds the request half done, so the slot
        // is dropped with it, never reused.
        None => {
            drop(slot);
            true
        }
    };
    tally.open.set(tally.open.get().saturating_sub(1));
    if reset_by_client {
        tally.reset.set(tally.reset.get() + 1);
    } else {
        tally.done.set(tally.done.get() + 1);
    }
}
