//! Accept: the first stage of the request flow. Binds the per-worker SO_REUSEPORT
//! listeners (at start-up, on the main thread, so a port conflict fails start-up before any
//! worker runs) and runs each worker's accept loop, which hands every connection to
//! [`crate::connection::serve_connection`] on its own task.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use monoio::io::CancelHandle;
use monoio::net::TcpListener;
use socket2::{Domain, Protocol, Socket, Type};

use crate::connection::{H2Start, Slot, serve_connection, serve_in_slot};
use crate::downstream::{self, Downstream};
use crate::h2io::H2Io;
use crate::plane::WorkerContext;
use crate::shutdown::{InFlight, InFlightGuard};
use crate::unwind::{CatchUnwind, catch_unwind, panic_message};

/// Listen backlog per worker; the kernel caps it at `net.core.somaxconn`.
const BACKLOG: i32 = 4096;

/// Binds `count` listeners on `addr`, all with SO_REUSEPORT on the same port, so the kernel
/// spreads incoming connections across workers. With port 0 the first bind picks a free
/// port and the rest join it.
///
/// Before that, one exclusive bind (SO_REUSEADDR, no SO_REUSEPORT) probes the port: it
/// fails if anything listens there, *including another shardgate* whose listeners all
/// have SO_REUSEPORT and would otherwise silently share (and split) the traffic with us.
pub fn bind_listeners(addr: SocketAddr, count: usize) -> io::Result<Vec<std::net::TcpListener>> {
    let port = {
        let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        // SO_REUSEADDR so that a restart is not refused because of TIME_WAIT connections
        // left by the previous process; it never lets us bind over a listening socket.
        probe.set_reuse_address(true)?;
        probe.bind(&addr.into())?;
        probe
            .local_addr()?
            .as_socket()
            .map(|bound| bound.port())
            .ok_or_else(|| io::Error::other("bound address is not an IP socket address"))?
    };
    let addr = SocketAddr::new(addr.ip(), port);
    (0..count)
        .map(|_| {
            let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
            socket.set_reuse_address(true)?;
            socket.set_reuse_port(true)?;
            socket.bind(&addr.into())?;
            socket.listen(BACKLOG)?;
            Ok(socket.into())
        })
        .collect()
}

/// Which listener a loop serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    Plain,
    /// Every connection starts with a TLS handshake (bounded by the header timeout).
    Tls,
}

/// Accepts connections until `cancel` fires (shutdown), spawning one task per connection.
pub(crate) async fn accept_loop(
    listener: &TcpListener,
    kind: Listener,
    cancel: CancelHandle,
    ctx: &Rc<WorkerContext>,
    in_flight: &InFlight,
) {
    loop {
        if ctx.shutdown().is_triggered() {
            return;
        }
        match listener.cancelable_accept(cancel.clone()).await {
            Ok((stream, peer)) => {
                // Responses go out as soon as they are written; no Nagle delay.
                let _ = stream.set_nodelay(true);
                let guard = in_flight.enter();
                let ctx = ctx.clone();
                // Two task types, so a plain connection's task carries no TLS state (its
                // size is what an idle keep-alive connection costs).
                let worker = ctx.id();
                match kind {
                    // A future built here, not an `async` block: a block would keep the stream,
                    // peer and context beside the futures they move into.
                    Listener::Plain => monoio::spawn(Reported {
                        served: catch_unwind(Plain::Http1 {
                            first: serve_connection(Downstream::Plain(stream), peer, ctx),
                        }),
                        worker,
                        peer,
                        _counted: guard,
                    }),
                    Listener::Tls => monoio::spawn(async move {
                        let _counted = guard;
                        let served = catch_unwind(async move {
                            // Counted from before the handshake: handshakes in progress
                            // are connections too. Over the limit, closed unanswered
                            // (a 503 would cost the handshake it refuses).
                            let Some(slot) = Slot::acquire(&ctx) else {
                                return Ok(());
                            };
                            let config = ctx
                                .plane()
                                .listener_tls
                                .server_config(&ctx.snapshot().certificates);
                            let limit = ctx.plane().settings.header_timeout;
                            // Boxed: the handshake's state is gone once it is done, and the
                            // session (over a kilobyte) is never part of this task.
                            let done =
                                Box::pin(downstream::handshake(&config, stream, limit)).await?;
                            drop(config);
                            if done.is_h2() {
                                let served =
                                    crate::h2server::serve(done.into_h2()?, peer, ctx, true);
                                let served = Box::pin(served).await;
                                drop(slot);
                                return served;
                            }
                            let downstream = Downstream::Tls(done.into_http1());
                            // A TLS connection never becomes h2c: ALPN decided.
                            serve_in_slot(downstream, peer, ctx, Some(slot))
                                .await
                                .map(drop)
                        });
                        report(worker, peer, served.await);
                    }),
                };
            }
            Err(_) if ctx.shutdown().is_triggered() => return,
            Err(e) => {
                let pause = match e.raw_os_error() {
                    // Out of descriptors or memory: the connection stays in the backlog;
                    // back off instead of spinning on the same error.
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
                        Duration::from_millis(100)
                    }
                    // The peer gave up between SYN and accept: nothing to do.
                    Some(libc::ECONNABORTED | libc::EINTR | libc::EAGAIN) => continue,
                    _ => Duration::from_millis(10),
                };
                tracing::warn!(worker = ctx.id(), error = %e, "accept failed; retrying in {pause:?}");
                monoio::time::sleep(pause).await;
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// A plain connection: HTTP/1.1, which may turn into h2c. A future of its own rather
    /// than an `async` block: a block would keep the stream, peer and context it moves into
    /// the HTTP/1.1 future beside it, and this is what every idle connection's task holds.
    #[project = PlainProj]
    enum Plain<F> {
        Http1 { #[pin] first: F },
        /// Boxed: only HTTP/2 connections pay for its state.
        H2 { served: Pin<Box<dyn Future<Output = io::Result<()>>>> },
    }
}

impl<F: Future<Output = io::Result<Option<H2Start>>>> Future for Plain<F> {
    type Output = io::Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            match self.as_mut().project() {
                PlainProj::Http1 { first } => match std::task::ready!(first.poll(cx)) {
                    Ok(Some(start)) => self.set(Plain::H2 {
                        served: Box::pin(serve_h2c(start)),
                    }),
                    Ok(None) => return Poll::Ready(Ok(())),
                    Err(e) => return Poll::Ready(Err(e)),
                },
                PlainProj::H2 { served } => return served.as_mut().poll(cx),
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// A connection's task: serves it, then logs how it ended (see [`report`]).
    struct Reported<F> {
        #[pin]
        served: CatchUnwind<F>,
        worker: usize,
        peer: SocketAddr,
        // Counts the connection as in flight for graceful shutdown until the task ends.
        _counted: InFlightGuard,
    }
}

impl<F: Future<Output = io::Result<()>>> Future for Reported<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        let served = std::task::ready!(this.served.poll(cx));
        report(*this.worker, *this.peer, served);
        Poll::Ready(())
    }
}

/// A plain connection that opened with the HTTP/2 preface, served as HTTP/2 in its place.
async fn serve_h2c(start: H2Start) -> io::Result<()> {
    let H2Start {
        tcp,
        prefix,
        peer,
        slot,
        ctx,
    } = start;
    let served = crate::h2server::serve(H2Io::plain(tcp, prefix)?, peer, ctx, false).await;
    drop(slot);
    served
}

/// Logs how a connection ended: an I/O error at debug, a panic (caught, the worker goes
/// on) at error.
fn report(worker: usize, peer: SocketAddr, served: std::thread::Result<io::Result<()>>) {
    match served {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::debug!(worker, %peer, error = %e, "connection ended with an error")
        }
        Err(panic) => tracing::error!(
            worker,
            %peer,
            panic = panic_message(&*panic),
            "connection handler panicked; connection dropped, worker continues"
        ),
    }
}

/// Runs `fut`, turning a panic inside any of its polls into `Err`, so that one broken
/// request cannot take down the worker and every other connection on it (the release
/// profile keeps `panic = "unwind"` for this). A future struct, not an `async fn`: an
/// `async fn` would keep its argument and the pinned copy of it side by side, doubling what
/// every idle connection's task costs.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_handler_is_contained() -> io::Result<()> {
        let mut runtime = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new().build()?;
        let outcome = runtime.block_on(catch_unwind(async {
            if std::hint::black_box(true) {
                panic!("handler bug");
            }
            7
        }));
        let Err(payload) = outcome else {
            panic!("the panic escaped catch_unwind's Err");
        };
        assert_eq!(panic_message(&*payload), "handler bug");
        let fine = runtime.block_on(catch_unwind(async { 7 }));
        assert!(matches!(fine, Ok(7)));
        Ok(())
    }

    #[test]
    fn port_zero_gives_every_listener_the_same_port() -> io::Result<()> {
        let listeners = bind_listeners("127.0.0.1:0".parse().map_err(io::Error::other)?, 4)?;
        let ports = listeners
            .iter()
            .map(|l| l.local_addr().map(|a| a.port()))
            .collect::<io::Result<Vec<_>>>()?;
        assert_ne!(ports[0], 0);
        assert!(ports.iter().all(|p| *p == ports[0]), "{ports:?}");
        Ok(())
    }

    #[test]
    fn a_port_held_by_another_shardgate_is_refused() -> io::Result<()> {
        // The first "instance" binds with SO_REUSEPORT, as shardgate does.
        let first = bind_listeners("127.0.0.1:0".parse().map_err(io::Error::other)?, 2)?;
        let taken = first[0].local_addr()?;
        let Err(err) = bind_listeners(taken, 2) else {
            panic!("a second instance silently shared port {taken}");
        };
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        Ok(())
    }

    #[test]
    fn a_port_held_by_a_plain_listener_is_refused() -> io::Result<()> {
        let plain = std::net::TcpListener::bind("127.0.0.1:0")?;
        let Err(err) = bind_listeners(plain.local_addr()?, 1) else {
            panic!("bound over a listening socket");
        };
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        Ok(())
    }
}
