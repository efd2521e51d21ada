//! Tunnel: after a `101 Switching Protocols` (WebSocket and other upgrades) the connection
//! is a byte pipe in both directions until either side closes.

use std::io;

use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, Splitable};

use crate::downstream::Downstream;
use crate::exchange::{Client, Tunnel};
use crate::plane::WorkerContext;
use crate::tls::Conn;

/// Copies `reader` → `writer` until EOF, then half-closes the writer.
async fn pipe<R: AsyncReadRent, W: AsyncWriteRent>(
    mut reader: R,
    mut writer: W,
    first: Vec<u8>,
    mut buf: Vec<u8>,
) -> io::Result<()> {
    if !first.is_empty() {
        let (res, _) = writer.write_all(first).await;
        res?;
    }
    loop {
        buf.clear();
        let (res, returned) = reader.read(buf).await;
        buf = returned;
        match res? {
            0 => break,
            _ => {
                let (res, returned) = writer.write_all(buf).await;
                buf = returned;
                res?;
            }
        }
    }
    writer.shutdown().await
}

/// Runs the tunnel to completion.
pub async fn run(client: Client, tunnel: Tunnel, ctx: &WorkerContext) -> io::Result<()> {
    let Tunnel {
        upstream,
        to_client,
    } = tunnel;
    // Bytes the client sent after its upgrade request already belong to the new protocol.
    let Client { stream, buf, .. } = client;
    match stream {
        Downstream::Plain(down) => match upstream {
            Conn::Plain(up) => splice(down, buf, up, to_client, ctx).await,
            Conn::Tls(up) => splice(down, buf, *up, to_client, ctx).await,
        },
        Downstream::Tls(down) => {
            let Some(down) = down.into_inner() else {
                return Err(io::Error::other(
                    "the TLS connection was interrupted before the tunnel",
                ));
            };
            match upstream {
                Conn::Plain(up) => splice(down, buf, up, to_client, ctx).await,
                Conn::Tls(up) => splice(down, buf, *up, to_client, ctx).await,
            }
        }
        // Unreachable: HTTP/2 requests carry no Upgrade, and an unasked-for 101 is refused.
        Downstream::H2(_) => {
            return Err(io::Error::other("no protocol switch on an HTTP/2 stream"));
        }
    }
    Ok(())
}

/// Pipes both ways between the client and an upstream stream until both directions end.
async fn splice<D: Splitable, U: Splitable>(
    client: D,
    to_upstream: Vec<u8>,
    upstream: U,
    to_client: Vec<u8>,
    ctx: &WorkerContext,
) where
    D::OwnedRead: AsyncReadRent,
    D::OwnedWrite: AsyncWriteRent,
    U::OwnedRead: AsyncReadRent,
    U::OwnedWrite: AsyncWriteRent,
{
    let plane = ctx.plane();
    let (client_read, client_write) = client.into_split();
    let (upstream_read, upstream_write) = upstream.into_split();
    let up = pipe(
        client_read,
        upstream_write,
        to_upstream,
        plane.bodies.take(),
    );
    let down = pipe(upstream_read, client_write, to_client, plane.bodies.take());
    let (a, b) = monoio::join!(up, down);
    tracing::debug!(up = ?a.as_ref().err(), down = ?b.as_ref().err(), "tunnel closed");
}
