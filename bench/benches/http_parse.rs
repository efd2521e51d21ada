//! Request-head parsing: `shardgate_core::http1::parse_request` against raw `httparse` (the
//! lower bound: the same tokenizer with no framing checks) and monoio-http 0.3's request
//! head decoder (the codec the data-plane issue asked us to consider).
//!
//! Heads: a ~400-byte curl/XHR-style GET and a ~1 KiB browser GET with 20 fields. shardgate
//! is measured both ways: `parse_request_into` (a head reused per connection: the proxy's
//! path) and `parse_request` (a fresh 2 KiB head returned by value).
//!
//! monoio-http is driven synchronously: `GenericHeadDecoder<_, RequestHeadDecoder,
//! DirectWrapper>` implements `monoio_codec::Decoder` over a `BytesMut`, so no runtime is
//! needed. That is the decoder its `RequestDecoder` runs after each read, including its
//! Content-Length / Transfer-Encoding decision. Each iteration gets a fresh `BytesMut`
//! holding the head, built outside the timed region and already in the shared ("arc") state
//! a long-lived read buffer is in, so the time is split + parse + `http::HeaderMap` build +
//! drop, as per request on a keep-alive connection.
//!
//! Before measuring, the three must agree on the field count, and the binary prints how
//! monoio-http treats a few request-smuggling shapes (the correctness half of the decision).
//!
//! `cargo bench -p shardgate-bench --bench http_parse -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::mem::MaybeUninit;

use bytes::BytesMut;
use criterion::{BatchSize, Criterion, criterion_group};
use monoio_codec::{Decoded, Decoder};
use monoio_http::common::request::Request;
use monoio_http::h1::codec::decoder::{
    ChunkedBodyDecoder, DirectWrapper, GenericHeadDecoder, PayloadDecoder, RequestHeadDecoder,
};
use shardgate_core::http1::{self, Limits, Parse, RequestHead};

type MonoioRequestDecoder = GenericHeadDecoder<Request, RequestHeadDecoder, DirectWrapper>;

/// A typical API call from curl or a browser's fetch(): 8 fields, ~400 bytes.
const SMALL: &[u8] = b"GET /api/v1/users/12345/orders?status=open&limit=20 HTTP/1.1\r\n\
Host: shop.localhost:8081\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:126.0) Gecko/20100101 Firefox/126.0\r\n\
Accept: application/json, text/plain, */*\r\n\
Accept-Language: en-US,en;q=0.5\r\n\
Accept-Encoding: gzip, deflate, br, zstd\r\n\
X-API-Key: tg_live_3f9a1c2b7d4e8f60a1b2c3d4e5f60718\r\n\
Referer: https://shop.localhost:8081/account/orders\r\n\
Connection: keep-alive\r\n\
\r\n";

/// A browser navigation with cookies: 20 fields, ~1 KiB.
const LARGE: &[u8] = b"GET /account/orders/2024/summary?tab=open&sort=-created&page=2 HTTP/1.1\r\n\
Host: shop.localhost:8081\r\n\
User-Agent: Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/125.0.0.0 Safari/537.36\r\n\
Accept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8\r\n\
Accept-Language: en-US,en;q=0.9,de;q=0.8\r\n\
Accept-Encoding: gzip, deflate, br, zstd\r\n\
Cache-Control: max-age=0\r\n\
Connection: keep-alive\r\n\
Cookie: session=9f8e7d6c5b4a39281706f5e4d3c2b1a0; theme=dark; consent=analytics%3Dno%26ads%3Dno; ab=checkout-v2\r\n\
DNT: 1\r\n\
Referer: https://shop.localhost:8081/account\r\n\
Sec-Fetch-Dest: document\r\n\
Sec-Fetch-Mode: navigate\r\n\
Sec-Fetch-Site: same-origin\r\n\
Sec-Fetch-User: ?1\r\n\
Sec-CH-UA: \"Chromium\";v=\"125\", \"Not.A/Brand\";v=\"24\"\r\n\
Sec-CH-UA-Mobile: ?0\r\n\
Sec-CH-UA-Platform: \"Windows\"\r\n\
Upgrade-Insecure-Requests: 1\r\n\
X-Request-ID: 01J0ABCDEF0123456789XYZWVU\r\n\
\r\n";

fn shardgate_parse(buf: &[u8], limits: &Limits) -> usize {
    match http1::parse_request(buf, limits) {
        Ok(Parse::Complete(head)) => head.headers.len(),
        other => panic!("shardgate rejected a benchmark head: {other:?}"),
    }
}

/// The proxy's hot path: one head per connection, filled in place.
fn shardgate_parse_into(buf: &[u8], limits: &Limits, head: &mut RequestHead) -> usize {
    match http1::parse_request_into(buf, limits, head) {
        Ok(Parse::Complete(())) => head.headers.len(),
        other => panic!("shardgate rejected a benchmark head: {other:?}"),
    }
}

fn httparse_parse(buf: &[u8]) -> usize {
    let mut raw = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; 100];
    let mut req = httparse::Request::new(&mut []);
    match req.parse_with_uninit_headers(buf, &mut raw) {
        Ok(httparse::Status::Complete(_)) => req.headers.len(),
        other => panic!("httparse rejected a benchmark head: {other:?}"),
    }
}

/// A `BytesMut` holding `head`, already in the shared state a reused read buffer is in.
fn read_buffer(head: &[u8]) -> BytesMut {
    let mut buf = BytesMut::with_capacity(head.len() + 1);
    buf.extend_from_slice(b"x");
    buf.extend_from_slice(head);
    drop(buf.split_to(1));
    buf
}

/// Decodes one head; returns the field count and what is left of the buffer (dropped by
/// the caller, outside the timed region, like a connection's read buffer).
fn monoio_decode(mut buf: BytesMut) -> (usize, BytesMut) {
    match MonoioRequestDecoder::default().decode(&mut buf) {
        Ok(Decoded::Some((head, _payload))) => (head.headers.len(), buf),
        Ok(_) => panic!("monoio-http wants more bytes for a complete benchmark head"),
        Err(e) => panic!("monoio-http rejected a benchmark head: {e}"),
    }
}

fn parse_heads(c: &mut Criterion) {
    let limits = Limits::default();
    for (name, head) in [
        ("small_400B_8_fields", SMALL),
        ("large_1KiB_20_fields", LARGE),
    ] {
        let fields = httparse_parse(head);
        assert_eq!(
            shardgate_parse(head, &limits),
            fields,
            "{name}: shardgate vs httparse"
        );
        assert_eq!(
            monoio_decode(read_buffer(head)).0,
            fields,
            "{name}: monoio-http vs httparse"
        );

        let mut group = c.benchmark_group(format!("{name} ({} bytes)", head.len()));
        let mut reused = RequestHead::default();
        group.bench_function("shardgate_parse_request_into", |b| {
            b.iter(|| shardgate_parse_into(black_box(head), &limits, &mut reused))
        });
        group.bench_function("shardgate_parse_request", |b| {
            b.iter(|| shardgate_parse(black_box(head), &limits))
        });
        group.bench_function("httparse_raw", |b| {
            b.iter(|| httparse_parse(black_box(head)))
        });
        group.bench_function("monoio_http_0.3", |b| {
            b.iter_batched(
                || read_buffer(head),
                |buf| {
                    let (fields, rest) = monoio_decode(buf);
                    black_box(fields);
                    rest
                },
                BatchSize::SmallInput,
            )
        });
        group.finish();
    }
}

/// How monoio-http's request decoder treats request-smuggling shapes that shardgate rejects
/// with 400. Printed, not asserted: it documents a dependency's behaviour, not ours.
fn report_monoio_http_smuggling_behaviour() {
    let shapes: [(&str, &[u8]); 6] = [
        (
            "CL + TE",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        ),
        (
            "duplicate CL 5 / 6",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        ),
        (
            "TE identity + TE chunked + CL",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
        ),
        (
            "bare LF inside the head",
            b"GET / HTTP/1.1\r\nHost: a\nX: y\r\n\r\n",
        ),
        ("bare LF only", b"GET / HTTP/1.1\nHost: a\n\n"),
        ("HTTP/1.1 without Host", b"GET / HTTP/1.1\r\n\r\n"),
    ];
    println!("monoio-http 0.3 request decoder vs shardgate http1 on smuggling shapes:");
    for (name, raw) in shapes {
        let theirs = match MonoioRequestDecoder::default().decode(&mut BytesMut::from(raw)) {
            Ok(Decoded::Some((_, PayloadDecoder::None))) => "accepted, no body".to_owned(),
            Ok(Decoded::Some((_, PayloadDecoder::Fixed(_)))) => "accepted, CL body".to_owned(),
            Ok(Decoded::Some((_, PayloadDecoder::Streamed(_)))) => {
                "accepted, chunked body".to_owned()
            }
            Ok(_) => "waits for more bytes".to_owned(),
            Err(e) => format!("rejected ({e})"),
        };
        let ours = match http1::parse_request(raw, &Limits::default()) {
            Err(e) => format!("{} {e}", e.status()),
            Ok(other) => format!("{other:?}"),
        };
        println!("  {name:32} monoio-http: {theirs:28} shardgate: {ours}");
    }
    let chunked: [(&str, &[u8]); 2] = [
        ("chunk extension (valid)", b"5;a=b\r\nhello\r\n0\r\n\r\n"),
        ("trailer field (valid)", b"0\r\nX-T: v\r\n\r\n"),
    ];
    for (name, raw) in chunked {
        let mut decoder = ChunkedBodyDecoder::default();
        let mut buf = BytesMut::from(raw);
        let theirs = match decoder.decode(&mut buf) {
            Ok(_) => "accepted".to_owned(),
            Err(e) => format!("rejected ({e})"),
        };
        let ours = match http1::ChunkedScanner::default().scan(raw) {
            Ok(scanned) => format!("{scanned:?}"),
            Err(e) => format!("{e}"),
        };
        println!("  {name:32} monoio-http: {theirs:28} shardgate: {ours}");
    }
}

criterion_group!(benches, parse_heads);

fn main() {
    report_monoio_http_smuggling_behaviour();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
