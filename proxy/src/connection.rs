//! One client connection: wait for a request, read and parse its head, hand it to
//! [`crate::request::handle`], repeat while keep-alive allows.
//!
//! Memory while idle is the point of the shape of this loop: between requests the
//! connection holds no buffer (it waits for readability under its deadline, then borrows a
//! buffer from the worker's pool; on the epoll driver a busy connection keeps its request
//! slot and a buffer for at most ~10 ms after its response, see [`hot_wait`]), and the
//! per-request state (the parsed head, the
//! exchange) lives in a [`RequestSlot`] borrowed from the worker only while a request is
//! in flight, so an idle keep-alive connection costs its small task, its timer and its
//! socket (under 1 KiB), not kilobytes of buffers. Slots are reused, never moved: a
//! keep-alive request in steady state allocates nothing (`proxy/tests/allocations.rs`).
//!
//! Slowloris: the whole head must arrive within `header_timeout` of its first byte (408 and
//! close otherwise); idle keep-alive connections close after `keepalive_timeout`; on
//! shutdown idle connections close at once and busy ones after their response.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Duration;

use monoio::buf::IoBufMut;
use monoio::io::AsyncReadRent;
use shardgate_core::http1::{HeadError, Parse, RequestHead, parse_request_into};

use crate::deadline::{Elapsed, Timer};
use crate::downstream::Downstream;
use crate::exchange::{Client, Outcome, Tunnel};
use crate::observe::{self, TraceHandle};
use crate::plane::{Plane, WorkerContext};
use crate::refusal::Refusal;
use crate::request;
use crate::tunnel;

/// One of the worker's `--max-connections` places, held for a connection's whole life
/// (a TLS connection's from before its handshake); given back on drop, so a connection
/// whose handler panicked does not keep it.
#[derive(Debug)]
pub struct Slot {
    ctx: Rc<WorkerContext>,
}

impl Slot {
    /// A place, or `None` when the worker already serves `--max-connections`.
    pub fn acquire(ctx: &Rc<WorkerContext>) -> Option<Slot> {
        let plane = ctx.plane();
        let open = plane.connections.get();
        if open >= plane.settings.max_connections {
            return None;
        }
        plane.connections.set(open + 1);
        plane
            .metrics
            .connections
            .store(open as u64 + 1, Ordering::Relaxed);
        Some(Slot { ctx: ctx.clone() })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let plane = self.ctx.plane();
        let open = plane.connections.get().saturating_sub(1);
        plane.connections.set(open);
        plane
            .metrics
            .connections
            .store(open as u64, Ordering::Relaxed);
    }
}

/// A plain connection that opened with the HTTP/2 preface: what the caller serves as
/// HTTP/2 (the connection module knows HTTP/1.1 only).
#[derive(Debug)]
pub struct H2Start {
    pub tcp: monoio::net::TcpStream,
    /// What was read: the preface, perhaps more.
    pub prefix: Vec<u8>,
    pub peer: SocketAddr,
    /// The connection's place among `--max-connections`, kept while it is served.
    pub slot: Slot,
    pub ctx: Rc<WorkerContext>,
}

/// Serves one plain client connection until it is done (or broken), or answers 503 when
/// the worker is full. Errors are the connection's own I/O errors; the caller logs them
/// at debug level. `Some` when the connection turned out to speak HTTP/2.
pub fn serve_connection(
    stream: Downstream,
    peer: SocketAddr,
    ctx: Rc<WorkerContext>,
) -> impl Future<Output = io::Result<Option<H2Start>>> {
    let slot = Slot::acquire(&ctx);
    serve_in_slot(stream, peer, ctx, slot)
}

/// Serves a connection that holds its [`Slot`] (`None`: the worker is full, answer 503).
///
/// A function returning the connection's future rather than an `async fn`: an `async fn`
/// keeps its arguments beside the locals it moves them into, and this future is what an
/// idle keep-alive connection costs. The request loop is inlined here for the same reason.
pub fn serve_in_slot(
    stream: Downstream,
    peer: SocketAddr,
    ctx: Rc<WorkerContext>,
    slot: Option<Slot>,
) -> impl Future<Output = io::Result<Option<H2Start>>> {
    let timer = Timer::new(&ctx.plane().wheel);
    let mut client = Client::new(stream, peer, ctx.plane().settings.client_io_timeout, timer);
    async move {
        let plane = ctx.plane();
        let Some(slot) = slot else {
            let e = Refusal::TooManyConnections.response();
            // Boxed: the rare refusal must not size the task every idle connection keeps.
            let _ = Box::pin(client.send_error(&e, true, false)).await;
            return Ok(None);
        };
        let mut first = true;
        let served: io::Result<Option<Then>> = loop {
            if client.buf.is_empty() {
                if client.buf.capacity() > 0 {
                    plane.heads.give(std::mem::take(&mut client.buf));
                }
                if first {
                    client.buf = plane.heads.take();
                } else {
                    // Waits holding no buffer until the client sends more; closes on idle
                    // timeout, close or shutdown.
                    if ctx.shutdown().is_triggered() {
                        break Ok(None);
                    }
                    let idle = plane.settings.keepalive_timeout;
                    match &client.stream {
                        Downstream::Plain(tcp) => {
                            client.waited_from = millis();
                            let readable = monoio::select! {
                                ready = client.timer.within(idle, tcp.readable(false)) => {
                                    matches!(ready, Ok(Ok(_)))
                                }
                                _ = ctx.shutdown().triggered() => false,
                            };
                            if !readable {
                                break Ok(None);
                            }
                            // A request soon after the response: wait hot after this one.
                            client.hot = plane.hot_wait_on.get()
                                && millis().wrapping_sub(client.waited_from) < HOT_WINDOW_MS;
                            client.buf = plane.heads.take();
                        }
                        // One request per HTTP/2 stream: never idle here.
                        Downstream::H2(_) => break Ok(None),
                        Downstream::Tls(_) => {
                            let buf = plane.heads.take();
                            // Boxed: a plain connection's task must not carry the TLS
                            // read's state while it idles.
                            match Box::pin(wait_for_bytes(&mut client, buf, &ctx, idle)).await {
                                Some(buf) => client.buf = buf,
                                None => break Ok(None),
                            }
                        }
                    }
                }
            }
            first = false;
            // In its own slot: the connection's task stays small while it waits for the
            // next request (see module docs).
            let mut slot = RequestSlot::take();
            let (back, step) = slot.serve(client, ctx.clone()).await;
            slot.free();
            client = back;
            client.fresh = false;
            match step {
                Ok(Step::Next) => {}
                Ok(Step::Close) => break Ok(None),
                Ok(Step::Tunnel(tunnel)) => break Ok(Some(Then::Tunnel(tunnel))),
                Ok(Step::H2) => break Ok(Some(Then::H2)),
                Err(e) => break Err(e),
            }
        };
        match served {
            // The buffer goes with the client: it may hold bytes of the new protocol.
            // Boxed: only upgraded connections pay for the tunnel's state.
            Ok(Some(Then::Tunnel(tunnel))) => Box::pin(tunnel::run(client, tunnel, &ctx))
                .await
                .map(|()| None),
            // h2c with prior knowledge: the preface (and whatever followed it) is in the
            // buffer, and goes with the socket and its place to the caller.
            Ok(Some(Then::H2)) => {
                let Client {
                    stream, peer, buf, ..
                } = client;
                let Downstream::Plain(tcp) = stream else {
                    return Err(io::Error::other("HTTP/2 preface on a non-TCP stream"));
                };
                Ok(Some(H2Start {
                    tcp,
                    prefix: buf,
                    peer,
                    slot,
                    ctx: ctx.clone(),
                }))
            }
            other => {
                if client.buf.capacity() > 0 {
                    plane.heads.give(std::mem::take(&mut client.buf));
                }
                other.map(|_| None)
            }
        }
    }
}

/// How soon after its response a connection must send its next request to be waited for
/// [hot](hot_wait) after that one, and how long a hot wait holds its buffer (plus up to two
/// ticks of the deadline wheel) before the connection waits as an idle one does.
const HOT_WINDOW: Duration = Duration::from_millis(10);
const HOT_WINDOW_MS: u32 = HOT_WINDOW.as_millis() as u32;

/// Hot waits at once on one worker: each holds a head buffer and a request slot (~33 KiB).
const MAX_HOT_WAITS: usize = 256;

/// The worker's clock in wrapping milliseconds: how long a connection waited, kept in four
/// bytes of its [`Client`].
fn millis() -> u32 {
    crate::plane::now_ms() as u32
}

enum HotWait {
    /// The next request's first bytes are in `client.buf`.
    Bytes,
    /// The client closed, or the socket failed.
    Closed,
    /// Nothing came within the window: wait as an idle connection.
    Cold,
}

/// A busy keep-alive connection's wait for its next request, on the epoll driver: a
/// `recv` into a pooled head buffer, where an idle connection's wait confirms readiness
/// with a `poll(2)` and then receives (`docs/RUNTIME.md`, "Hot waits": about 4 % less CPU
/// per request). It runs in the request slot that served the last request, right after
/// it, so the connection's own future (what an idle connection costs) does not carry its
/// state. The buffer is held for at most [`HOT_WINDOW`]; then the receive is given up
/// (its future dropped: an epoll receive runs its syscall within one poll, so nothing is
/// in flight and no byte is lost), the buffer goes back to the pool
/// ([`Lent`](crate::buffer::Lent)) and the connection waits holding none. Only connections
/// whose last wait was shorter than the window wait this way (`Client::hot`), at most
/// [`MAX_HOT_WAITS`] at once, so idle connections hold no buffer. Not on io_uring, where
/// the readiness poll and the receive cost no more than one receive (measured) and a
/// posted receive can only be given up by a cancellation.
async fn hot_wait(client: &mut Client, plane: &Plane) -> HotWait {
    let waits = &plane.hot_waits;
    let Downstream::Plain(tcp) = &mut client.stream else {
        return HotWait::Cold;
    };
    if waits.get() >= MAX_HOT_WAITS {
        return HotWait::Cold;
    }
    let _counted = Counted::enter(waits);
    if client.buf.capacity() > 0 {
        plane.heads.give(std::mem::take(&mut client.buf));
    }
    match client
        .timer
        .within(HOT_WINDOW, tcp.read(plane.heads.lend()))
        .await
    {
        Ok((Ok(n), lent)) if n > 0 => {
            client.buf = lent.into_inner();
            HotWait::Bytes
        }
        Ok(_) => HotWait::Closed,
        Err(Elapsed) => HotWait::Cold,
    }
}

/// One hot wait in the worker's count, counted out when it ends, however it ends.
struct Counted<'a>(&'a Cell<usize>);

impl<'a> Counted<'a> {
    fn enter(waits: &'a Cell<usize>) -> Counted<'a> {
        waits.set(waits.get() + 1);
        Counted(waits)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

/// What the request loop does after one request.
pub(crate) enum Step {
    Next,
    Close,
    Tunnel(Tunnel),
    /// The connection opened with the HTTP/2 preface.
    H2,
}

/// What the connection becomes after its HTTP/1.1 requests.
enum Then {
    Tunnel(Tunnel),
    H2,
}

/// What a request gives back to the connection loop: the client, and what comes next.
pub(crate) type Served = (Client, io::Result<Step>);

/// Where a request runs: a long-lived future, allocated once and reused by one request
/// after another, that serves whatever client is handed to it (everything a request
/// needs — the head read, the parsed head, the exchange — lives in it). A connection takes
/// one from its worker's free list for each request and gives it back after, so an idle
/// connection holds none, a request in steady state allocates none, and the request's
/// state (about 16 KiB) is never moved: the connection polls the slot's future in place
/// and hands the client over through [`Handoff`].
pub(crate) struct RequestSlot {
    future: Pin<Box<dyn Future<Output = ()>>>,
    handoff: Rc<Handoff>,
}

/// The slot's mailbox: the job in, the result out.
#[derive(Default)]
struct Handoff {
    job: Cell<Option<(Client, Rc<WorkerContext>)>>,
    done: Cell<Option<Served>>,
}

/// Free request slots a worker keeps however few were in use lately.
const MIN_KEPT_SLOTS: usize = 256;

/// A worker's free request slots. A slot given back is kept; [`RequestSlot::trim`] (once a
/// second) frees those beyond the most in use at once since the trim before, or
/// [`MIN_KEPT_SLOTS`] if more. So a steady load of many requests at once (1 000 HTTP/2
/// streams) reuses its slots, where a fixed cap had it allocate (and drop) ~16 KiB per
/// request beyond the cap, and a burst's slots are gone a second or two after it.
#[derive(Default)]
struct FreeSlots {
    free: Vec<RequestSlot>,
    /// The most slots in use at once since the last trim.
    peak: usize,
}

thread_local! {
    /// This worker thread's free request slots (one runtime per thread: per worker).
    static FREE_SLOTS: RefCell<FreeSlots> = RefCell::new(FreeSlots::default());
    /// This worker's slots, free or in use (counted by construction and drop, so a slot
    /// dropped with its connection instead of given back is not counted as in use).
    static LIVE_SLOTS: Cell<usize> = const { Cell::new(0) };
}

impl Drop for RequestSlot {
    fn drop(&mut self) {
        LIVE_SLOTS.with(|live| live.set(live.get().saturating_sub(1)));
    }
}

impl RequestSlot {
    /// A free slot, or a new one.
    pub(crate) fn take() -> RequestSlot {
        let reused = FREE_SLOTS.with(|slots| {
            let mut slots = slots.borrow_mut();
            let slot = slots.free.pop();
            let live = LIVE_SLOTS.with(Cell::get) + usize::from(slot.is_none());
            slots.peak = slots.peak.max(live.saturating_sub(slots.free.len()));
            slot
        });
        reused.unwrap_or_else(|| {
            LIVE_SLOTS.with(|live| live.set(live.get() + 1));
            let handoff = Rc::new(Handoff::default());
            RequestSlot {
                future: Box::pin(run_slot(handoff.clone())),
                handoff,
            }
        })
    }

    /// Serves one request of `client` in this slot. The slot's future is polled by (and
    /// so wakes) the connection's task.
    pub(crate) fn serve(
        &mut self,
        client: Client,
        ctx: Rc<WorkerContext>,
    ) -> impl Future<Output = Served> + '_ {
        self.handoff.job.set(Some((client, ctx)));
        let RequestSlot { future, handoff } = self;
        std::future::poll_fn(move |cx| {
            let _ = future.as_mut().poll(cx);
            match handoff.done.take() {
                Some(served) => Poll::Ready(served),
                None => Poll::Pending,
            }
        })
    }

    pub(crate) fn free(self) {
        FREE_SLOTS.with(|slots| slots.borrow_mut().free.push(self));
    }

    /// Frees the slots beyond what the last second needed (see [`FreeSlots`]); the
    /// worker's housekeeping calls it once a second. Returns how many are kept free.
    pub(crate) fn trim() -> usize {
        let extra = FREE_SLOTS.with(|slots| {
            let mut slots = slots.borrow_mut();
            let in_use = LIVE_SLOTS.with(Cell::get).saturating_sub(slots.free.len());
            let keep = slots.peak.max(MIN_KEPT_SLOTS).saturating_sub(in_use);
            slots.peak = in_use;
            let extra = slots.free.len().saturating_sub(keep);
            // The oldest: the stack's top is the slots used last, warm in the cache.
            slots.free.drain(..extra).collect::<Vec<_>>()
        });
        // Dropped outside the borrow.
        drop(extra);
        FREE_SLOTS.with(|slots| slots.borrow().free.len())
    }
}

/// A slot's future: serves the requests handed to it, one after another, for as long as
/// the slot lives.
async fn run_slot(handoff: Rc<Handoff>) {
    // Parsed in place, request after request: the 2 KiB field table lives in the slot and is
    // neither zeroed nor moved per request (`parse_request_into` overwrites what it uses).
    let mut head = RequestHead::default();
    // The request's trace, reused like the head (see `observe`).
    let trace: TraceHandle = Rc::default();
    loop {
        let (mut client, ctx) = std::future::poll_fn(|_| match handoff.job.take() {
            Some(job) => Poll::Ready(job),
            // No waker: the next job's `serve` polls this future itself.
            None => Poll::Pending,
        })
        .await;
        let step = loop {
            trace.borrow_mut().reset();
            client.trace = Some(trace.clone());
            // Records the request even when its future is dropped midway (an HTTP/2 stream
            // the client reset): then as 499 unless an answer already went out.
            let mut unfinished = Unfinished {
                trace: trace.clone(),
                ctx: ctx.clone(),
                peer: client.peer,
                armed: true,
            };
            let step = serve_request(&mut client, &mut head, &ctx).await;
            client.trace = None;
            unfinished.armed = false;
            drop(unfinished);
            observe::finish(&mut trace.borrow_mut(), &ctx, client.peer);
            if !(client.hot && matches!(step, Ok(Step::Next))) {
                break step;
            }
            client.fresh = false;
            if !client.buf.is_empty() {
                // Pipelined: the next request is here already.
                continue;
            }
            match hot_wait(&mut client, ctx.plane()).await {
                HotWait::Bytes => {}
                HotWait::Closed => break Ok(Step::Close),
                HotWait::Cold => {
                    client.hot = false;
                    break step;
                }
            }
        };
        handoff.done.set(Some((client, step)));
    }
}

/// A request in progress in a slot whose future may be dropped (see `run_slot`).
struct Unfinished {
    trace: TraceHandle,
    ctx: Rc<WorkerContext>,
    peer: SocketAddr,
    armed: bool,
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Ok(mut trace) = self.trace.try_borrow_mut() {
            trace.client_left();
            observe::finish(&mut trace, &self.ctx, self.peer);
        }
    }
}

/// Reads one request head (under the header timeout) and serves the request.
pub(crate) async fn serve_request(
    client: &mut Client,
    head: &mut RequestHead,
    ctx: &WorkerContext,
) -> io::Result<Step> {
    let settings = &ctx.plane().settings;
    let timer = client.timer.clone();
    let limits = &settings.head_limits;
    match timer
        .within(settings.header_timeout, read_head(client, limits, head))
        .await
    {
        Err(_elapsed) => {
            tracing::debug!(peer = %client.peer, "request head timed out");
            let e = Refusal::HeadTimeout.response();
            let _ = client.send_error(&e, true, false).await;
            return Ok(Step::Close);
        }
        Ok(Ok(false)) => return Ok(Step::Close),
        Ok(Ok(true)) => {}
        Ok(Err(ReadHead::Invalid(e))) => {
            let error = Refusal::BadHead(e).response();
            client.buf.clear();
            client.send_error(&error, true, false).await?;
            client.linger().await;
            return Ok(Step::Close);
        }
        Ok(Err(ReadHead::Io(e))) => return Err(e),
        Ok(Err(ReadHead::H2)) => return Ok(Step::H2),
    };
    let logged = ctx.plane().access_log.is_some();
    client.note(|t| {
        t.head_seen = true;
        t.obs.method = head.method.map_or(9, |m| m as u8);
        if logged {
            t.path.extend_from_slice(head.path(&client.buf));
        }
    });
    Ok(match request::handle(client, head, ctx).await? {
        Outcome::Upgrade(tunnel) => Step::Tunnel(tunnel),
        Outcome::Done { keep_alive } if keep_alive && !ctx.shutdown().is_triggered() => Step::Next,
        Outcome::Done { .. } => Step::Close,
    })
}

/// The idle wait of a TLS client, whose next request may already be
/// decrypted and buffered inside the TLS session (a readable socket is no sign of it):
/// reads into `buf`. `None` on idle timeout, close, error or shutdown (the connection then
/// closes: an interrupted TLS read leaves the session unusable).
async fn wait_for_bytes(
    client: &mut Client,
    buf: Vec<u8>,
    ctx: &WorkerContext,
    idle: Duration,
) -> Option<Vec<u8>> {
    if ctx.shutdown().is_triggered() {
        return None;
    }
    let mut buf = buf;
    buf.clear();
    let cap = buf.capacity();
    let timer = client.timer.clone();
    monoio::select! {
        read = timer.within(idle, client.stream.read(buf.slice_mut(0..cap))) => match read {
            Ok((Ok(n), slice)) if n > 0 => Some(slice.into_inner()),
            _ => None,
        },
        _ = ctx.shutdown().triggered() => None,
    }
}

enum ReadHead {
    Invalid(HeadError),
    Io(io::Error),
    /// The HTTP/2 connection preface, on a fresh connection.
    H2,
}

/// Reads until a whole request head is buffered, parsing it into `head`. `false`: the
/// client closed cleanly before sending anything.
async fn read_head(
    client: &mut Client,
    limits: &shardgate_core::http1::Limits,
    head: &mut RequestHead,
) -> Result<bool, ReadHead> {
    loop {
        let preface = match client.fresh {
            true => crate::wire::h2_preface(&client.buf),
            false => None,
        };
        match preface {
            Some(true) => return Err(ReadHead::H2),
            // Not yet a whole preface, and not an HTTP/1.1 head either: read on.
            Some(false) if !client.buf.is_empty() => {}
            _ if client.buf.is_empty() => {}
            _ => match parse_request_into(&client.buf, limits, head) {
                Ok(Parse::Complete(())) => return Ok(true),
                Ok(Parse::Partial) => {}
                Err(e) => return Err(ReadHead::Invalid(e)),
            },
        }
        let mut buf = std::mem::take(&mut client.buf);
        if buf.len() == buf.capacity() {
            buf.reserve(4096);
        }
        let (len, cap) = (buf.len(), buf.capacity());
        let (res, slice) = client.stream.read(buf.slice_mut(len..cap)).await;
        client.buf = slice.into_inner();
        match res {
            Ok(0) if client.buf.is_empty() => return Ok(false),
            Ok(0) => {
                return Err(ReadHead::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "client closed mid-head",
                )));
            }
            Ok(_) => {}
            Err(e) => return Err(ReadHead::Io(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What an idle keep-alive connection's task holds is this future (plus the task's
    /// header, its timer and its socket): `bench/run`'s idle test measures the whole, this
    /// catches growth where it starts. The allocator rounds to size classes 128 bytes apart
    /// here, so a few bytes over a class cost 128 per connection.
    const IDLE_FUTURE_LIMIT: usize = 432;

    #[test]
    fn a_connections_future_stays_within_its_size() {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("a runtime");
        rt.block_on(async {
            let listener = monoio::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            let addr = listener.local_addr().expect("its address");
            let tcp = monoio::net::TcpStream::connect(addr)
                .await
                .expect("connect");
            let snapshot = shardgate_core::snapshot::Snapshot::compile(
                1,
                &shardgate_core::state::State::default(),
                &shardgate_core::snapshot::LiteralOnly,
            );
            let ctx = Rc::new(WorkerContext::new(
                0,
                std::sync::Arc::new(snapshot),
                std::sync::Arc::new(crate::settings::ProxySettings::new("localhost")),
            ));
            let future = serve_in_slot(Downstream::Plain(tcp), addr, ctx, None);
            let size = std::mem::size_of_val(&future);
            eprintln!("serve_in_slot future: {size} bytes");
            assert!(
                size <= IDLE_FUTURE_LIMIT,
                "a connection's future is {size} bytes, over {IDLE_FUTURE_LIMIT}"
            );
        });
    }

    /// `hot_wait` itself, on the epoll driver over a real socket: bytes already sent come
    /// back in the client's buffer; with nothing sent it gives up within the window plus two
    /// ticks and its buffer is back in the pool (not freed); a closed peer is `Closed`; and
    /// the worker's count of hot waits is back to 0 after each.
    #[test]
    fn a_hot_wait_gets_bytes_gives_up_its_buffer_after_the_window_and_sees_a_close() {
        use std::io::Write;
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("a runtime");
        rt.block_on(async {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            let addr = listener.local_addr().expect("its address");
            let tcp = monoio::net::TcpStream::connect(addr)
                .await
                .expect("connect");
            let (mut peer, _) = listener.accept().expect("accept");
            let snapshot = shardgate_core::snapshot::Snapshot::compile(
                1,
                &shardgate_core::state::State::default(),
                &shardgate_core::snapshot::LiteralOnly,
            );
            let ctx = Rc::new(WorkerContext::new(
                0,
                std::sync::Arc::new(snapshot),
                std::sync::Arc::new(crate::settings::ProxySettings::new("localhost")),
            ));
            let plane = ctx.plane();
            monoio::spawn(crate::deadline::tick(plane.wheel.clone()));
            let timer = Timer::new(&plane.wheel);
            let mut client = Client::new(Downstream::Plain(tcp), addr, HOT_WINDOW, timer);

            peer.write_all(b"GET / HTTP/1.1\r\n").expect("send");
            assert!(matches!(hot_wait(&mut client, plane).await, HotWait::Bytes));
            assert_eq!(client.buf, b"GET / HTTP/1.1\r\n");
            assert_eq!(plane.hot_waits.get(), 0);

            let lent = plane.heads.take();
            let ptr = lent.as_ptr();
            plane.heads.give(lent);
            client.buf = Vec::new();
            let began = std::time::Instant::now();
            assert!(matches!(hot_wait(&mut client, plane).await, HotWait::Cold));
            let waited = began.elapsed();
            assert!(
                waited >= HOT_WINDOW && waited < HOT_WINDOW + 4 * crate::deadline::TICK,
                "gave up after {waited:?}"
            );
            let back = plane.heads.take();
            assert_eq!(back.as_ptr(), ptr, "the lent buffer is back in the pool");
            assert_eq!(plane.hot_waits.get(), 0);

            drop(peer);
            assert!(matches!(
                hot_wait(&mut client, plane).await,
                HotWait::Closed
            ));
            assert_eq!(plane.hot_waits.get(), 0);
        });
    }

    fn free_now() -> usize {
        FREE_SLOTS.with(|slots| slots.borrow().free.len())
    }

    #[test]
    fn free_slots_follow_the_last_seconds_peak_and_never_drop_below_the_floor() {
        // A burst of 300 at once: all kept through the next trim, then back to the floor.
        let burst: Vec<RequestSlot> = (0..300).map(|_| RequestSlot::take()).collect();
        burst.into_iter().for_each(RequestSlot::free);
        assert_eq!(free_now(), 300);
        assert_eq!(
            RequestSlot::trim(),
            300,
            "the second that needed 300 keeps 300"
        );
        assert_eq!(
            RequestSlot::trim(),
            MIN_KEPT_SLOTS,
            "a quiet second: the floor"
        );
        assert_eq!(LIVE_SLOTS.with(Cell::get), MIN_KEPT_SLOTS);

        // Slots in use count against the peak; one dropped instead of given back is gone.
        let held: Vec<RequestSlot> = (0..10).map(|_| RequestSlot::take()).collect();
        assert_eq!(RequestSlot::trim(), MIN_KEPT_SLOTS - 10);
        let mut held = held.into_iter();
        drop(held.next());
        held.for_each(RequestSlot::free);
        assert_eq!(LIVE_SLOTS.with(Cell::get), MIN_KEPT_SLOTS - 1);
        assert_eq!(RequestSlot::trim(), MIN_KEPT_SLOTS - 1);
    }
}
