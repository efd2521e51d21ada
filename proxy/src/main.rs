//! The `shardgate` binary: everything lives in the library; see
//! [`shardgate_proxy::shell::process`] for the start-up and shutdown sequence and exit codes.

/// mimalloc instead of glibc's malloc: the HTTP/1.1 path allocates nothing per request,
/// but HTTP/2 streams do (the h2 crate's per-stream state, header maps, `Bytes`), and
/// there glibc's malloc and free were ~10 % of the worker (docs/RUNTIME.md). Built with
/// `no_thp` (Cargo.toml): with transparent huge pages an idle connection cost 1.2 KiB.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    shardgate_proxy::shell::process::main()
}
