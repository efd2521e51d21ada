//! HTTP/2 to upstreams (gRPC services and upstreams with `http2: true`): filled in below.
