//! The `shardgate` binary: everything lives in the library; see
//! [`shardgate_proxy::shell::process`] for the start-up and shutdown sequence and exit codes.

fn main() -> std::process::ExitCode {
    shardgate_proxy::shell::process::main()
}
