//! The command line: `shardgate [run] [flags]` and `shardgate doctor [flags]` (see
//! [`crate::shell::doctor`]), and how flags, environment variables and the `--config` TOML file
//! combine into one validated [`Config`].
//!
//! Every setting is declared once, as a field of [`RunArgs`]: its clap argument carries the
//! flag, the environment variable, the default and the help. Everything else is derived
//! from that argument: the TOML key is the flag's long name, the README's table is rendered
//! from the help ([`crate::shell::docs`]), and the data plane's defaults are the constants the
//! arguments take theirs from ([`ProxySettings`]).
//!
//! Precedence, per setting: command line > environment (`SHARDGATE_*`) > TOML file >
//! built-in default. Clap resolves the first two and the default; the file is read into a
//! table, each key is matched to the argument of that long name and parsed by that
//! argument's own value parser, and it replaces the value only where
//! [`ArgMatches::value_source`] says clap had nothing better than its default. Every refusal
//! names the setting and where its value came from.

use std::any::TypeId;
use std::ffi::OsString;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use shardgate_core::duration::Span;
use shardgate_core::net::CidrSet;
use shardgate_core::path::EncodedSlashes;

use crate::settings::ProxySettings;
pub use crate::worker::IoDriver;

/// Most workers one process runs; beyond this, run several processes.
pub const MAX_WORKERS: usize = 1024;

/// `--data-dir`'s default, shared with `shardgate doctor --data-dir`.
pub const DEFAULT_DATA_DIR: &str = "./data";

/// `--io-driver`'s default, shared with `shardgate doctor --io-driver`.
pub const DEFAULT_IO_DRIVER: IoDriver = IoDriver::Auto;

/// The id of `--config`: the one flag that is not also a key of the file it names.
const CONFIG: &str = "config";

/// shardgate: a shard-per-core API gateway.
///
/// Every flag can also be set by an environment variable (shown below) or by a key of the
/// same name in the `--config` TOML file. Precedence: command line > environment > file >
/// default.
#[derive(Debug, Parser)]
#[command(name = "shardgate", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// `shardgate [flags]` is `shardgate run [flags]`.
    #[command(flatten)]
    pub run: RunArgs,
}

/// What to do. No subcommand means `run`.
// Parsed once per process: the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway (the default when no subcommand is given).
    Run(RunArgs),
    /// Check this host (io_uring, limits, sysctls, CPUs, data directory) and print each
    /// finding with its fix; exit code 1 when something would break at load.
    Doctor(crate::shell::doctor::DoctorArgs),
}

/// Flags of `shardgate run`. Each field is one setting: its argument's long name is also
/// its key in the `--config` file, its first help sentence is its line in the README's
/// table, and a help sentence `Default: ...` is allowed only where clap shows no default
/// (none, or one that depends on the host).
#[derive(Debug, Args)]
pub struct RunArgs {
    /// TOML file with any of these settings, each under its flag's name
    /// (`admin-listen = "127.0.0.1:8080"`). Flags and environment variables override it;
    /// unknown keys are refused. Default: none.
    #[arg(long, env = "SHARDGATE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Address of the admin REST API. Keep it on loopback (the default) unless you also
    /// set an admin token: anyone who reaches this port can reconfigure the gateway.
    #[arg(
        long,
        env = "SHARDGATE_ADMIN_LISTEN",
        value_name = "ADDR",
        default_value = "127.0.0.1:8080"
    )]
    pub admin_listen: SocketAddr,

    /// Address client traffic is proxied on. Every worker binds its own SO_REUSEPORT
    /// listener here, so the kernel spreads connections across cores. Port 0 picks a free
    /// port (shared by all workers).
    #[arg(
        long,
        env = "SHARDGATE_PROXY_LISTEN",
        value_name = "ADDR",
        default_value = "0.0.0.0:8081"
    )]
    pub proxy_listen: SocketAddr,

    /// Address of the HTTPS listener; `off` disables it. TLS 1.2/1.3 with the certificates
    /// of `/api/v1/certificates` chosen by SNI, and a self-signed development certificate
    /// for the base domain until one covers `*.<base-domain>`. One SO_REUSEPORT listener
    /// per worker, like the plain one.
    #[arg(
        long,
        env = "SHARDGATE_TLS_LISTEN",
        value_name = "ADDR|off",
        default_value = "0.0.0.0:8443",
        value_parser = parse_tls_listen
    )]
    pub tls_listen: TlsListen,

    /// Directory of the durable store (journal + checkpoint). Put it on a local disk:
    /// every admin write is fsynced here before it is acknowledged. Relative paths in the
    /// TOML file are relative to the file's directory.
    #[arg(
        long,
        env = "SHARDGATE_DATA_DIR",
        value_name = "DIR",
        default_value = DEFAULT_DATA_DIR
    )]
    pub data_dir: PathBuf,

    /// Number of worker threads, each pinned to a core with its own event loop. More
    /// workers than cores only adds context switches; fewer leaves cores for other
    /// processes. Range 1..=1024. Default: the CPUs available to this process.
    #[arg(
        long,
        env = "SHARDGATE_WORKERS",
        value_name = "N",
        default_value_t = default_workers(),
        hide_default_value = true
    )]
    pub workers: usize,

    /// Domain under which gateways get their subdomains: a request for
    /// `<subdomain>.<base-domain>` goes to that gateway. `localhost` works on any machine
    /// without DNS; production uses a domain with a wildcard record.
    #[arg(
        long,
        env = "SHARDGATE_BASE_DOMAIN",
        value_name = "DOMAIN",
        default_value = "localhost"
    )]
    pub base_domain: String,

    /// Token the admin API requires as `Authorization: Bearer <token>`. Required when
    /// --admin-listen is not a loopback address. Prefer the environment variable or the
    /// TOML file (mode 0600): command lines are visible to other local users in `ps`.
    /// Never logged. Default: none (no authentication, loopback only).
    #[arg(
        long,
        env = "SHARDGATE_ADMIN_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub admin_token: Option<AdminToken>,

    /// Event-loop driver: `auto` (io_uring, else epoll), `uring` or `epoll`. `auto` uses
    /// io_uring when the kernel offers it and falls back to epoll; `uring` refuses to start
    /// without io_uring (so a fallback cannot go unnoticed); `epoll` works on every Linux
    /// kernel, at more syscalls per request.
    #[arg(
        long,
        env = "SHARDGATE_IO_DRIVER",
        value_enum,
        value_name = "DRIVER",
        default_value_t = DEFAULT_IO_DRIVER
    )]
    pub io_driver: IoDriver,

    /// Log filter for stderr: error, warn, info, debug, trace, or a tracing env-filter
    /// directive such as `info,shardgate_proxy=debug`. debug and trace log per connection
    /// and cost throughput.
    #[arg(
        long,
        env = "SHARDGATE_LOG",
        value_name = "FILTER",
        default_value = "info"
    )]
    pub log: String,

    /// On SIGTERM/SIGINT, how long in-flight connections may take to finish after the
    /// listeners close; the rest are then cut. Longer is kinder to slow clients, shorter
    /// makes restarts faster. Format: integer + unit (ms, s, m, h).
    #[arg(
        long,
        env = "SHARDGATE_SHUTDOWN_GRACE",
        value_name = "DURATION",
        default_value = "10s",
        value_parser = Span::parse
    )]
    pub shutdown_grace: Span,

    /// A client must send a whole request head within this once it starts one; slower
    /// clients get 408 and are closed. This is the slowloris bound: a connection that
    /// trickles bytes is cut after it whatever its rate.
    #[arg(
        long,
        env = "SHARDGATE_HEADER_TIMEOUT",
        value_name = "DURATION",
        default_value_t = span(ProxySettings::DEFAULT_HEADER_TIMEOUT),
        value_parser = Span::parse
    )]
    pub header_timeout: Span,

    /// How long an idle keep-alive client connection is kept open. Idle connections hold
    /// no buffer, so long values cost little memory but do hold file descriptors.
    #[arg(
        long,
        env = "SHARDGATE_KEEPALIVE_TIMEOUT",
        value_name = "DURATION",
        default_value_t = span(ProxySettings::DEFAULT_KEEPALIVE_TIMEOUT),
        value_parser = Span::parse
    )]
    pub keepalive_timeout: Span,

    /// Client connections per worker beyond which new connections get 503 and are closed,
    /// so an overload degrades cleanly instead of exhausting descriptors.
    #[arg(
        long,
        env = "SHARDGATE_MAX_CONNECTIONS",
        value_name = "N",
        default_value_t = ProxySettings::DEFAULT_MAX_CONNECTIONS
    )]
    pub max_connections: usize,

    /// Largest request body in bytes, 413 beyond it; 0 means unlimited. Bodies stream
    /// through without being buffered either way.
    #[arg(
        long,
        env = "SHARDGATE_MAX_BODY",
        value_name = "BYTES",
        default_value_t = 0
    )]
    pub max_body: u64,

    /// Comma-separated CIDRs of proxies in front of shardgate (load balancers) whose
    /// X-Forwarded-For is believed: for requests from them the client is the rightmost
    /// address not in this list. Empty: the socket peer is the client, and a client-sent
    /// X-Forwarded-For is only appended to, never believed.
    #[arg(
        long,
        env = "SHARDGATE_TRUSTED_PROXIES",
        value_name = "CIDRS",
        default_value = ""
    )]
    pub trusted_proxies: CidrSet,

    /// What to do with an encoded slash or backslash (`%2F`, `%5C`) or a raw `\` in a
    /// request path: `reject` (400) or `keep` (forwarded encoded). `reject` because an
    /// upstream that decodes them sees other path segments than the router did, so a
    /// key-protected rule could be walked around; `keep` for upstreams that need `%2F` in a
    /// segment and do not decode it before their own routing. See docs/SECURITY.md.
    #[arg(
        long,
        env = "SHARDGATE_ENCODED_SLASHES",
        value_name = "POLICY",
        default_value = EncodedSlashes::default().as_str(),
        value_parser = parse_encoded_slashes
    )]
    pub encoded_slashes: EncodedSlashes,

    /// Write one JSON line per request to this file (`-`: stdout), through a writer
    /// thread that never makes a request wait: lines the disk cannot take are dropped and
    /// counted. SIGHUP reopens the file (for logrotate). Default: off.
    #[arg(long, env = "SHARDGATE_ACCESS_LOG", value_name = "PATH|-")]
    pub access_log: Option<PathBuf>,

    /// Count every request in `/metrics` (`on`), or keep only the configuration gauges
    /// there (`off`).
    #[arg(
        long,
        env = "SHARDGATE_REQUEST_METRICS",
        value_name = "on|off",
        default_value = "on",
        action = clap::ArgAction::Set,
        value_parser = parse_switch
    )]
    pub request_metrics: bool,

    /// Count every request per API key and gateway for the usage export
    /// (`GET .../usage`) and the anomaly detector (`on`), or not at all (`off`: the
    /// exports then show only what was counted before).
    #[arg(
        long,
        env = "SHARDGATE_USAGE",
        value_name = "on|off",
        default_value = "on",
        action = clap::ArgAction::Set,
        value_parser = parse_switch
    )]
    pub usage: bool,

    /// How long daily usage buckets are kept (minute buckets are kept 48 hours and hour
    /// buckets 90 days). At least 90 days.
    #[arg(
        long,
        env = "SHARDGATE_USAGE_DAY_RETENTION",
        value_name = "DURATION",
        default_value = "730d",
        value_parser = Span::parse
    )]
    pub usage_day_retention: Span,
}

fn parse_switch(text: &str) -> Result<bool, String> {
    match text.trim() {
        "on" => Ok(true),
        "off" => Ok(false),
        other => Err(format!("{other:?} is neither `on` nor `off`")),
    }
}

/// `--tls-listen`: an address, or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsListen {
    Off,
    On(SocketAddr),
}

impl TlsListen {
    pub fn addr(self) -> Option<SocketAddr> {
        match self {
            TlsListen::Off => None,
            TlsListen::On(addr) => Some(addr),
        }
    }
}

fn parse_tls_listen(text: &str) -> Result<TlsListen, String> {
    if text.trim().eq_ignore_ascii_case("off") {
        return Ok(TlsListen::Off);
    }
    text.trim()
        .parse()
        .map(TlsListen::On)
        .map_err(|_| format!("{text:?} is neither an address (IP:PORT) nor `off`"))
}

#[cfg(test)]
#[test]
fn tls_listen_is_an_address_or_off() {
    assert_eq!(parse_tls_listen("off"), Ok(TlsListen::Off));
    assert_eq!(parse_tls_listen("OFF"), Ok(TlsListen::Off));
    assert_eq!(
        parse_tls_listen("127.0.0.1:0").map(TlsListen::addr),
        Ok("127.0.0.1:0".parse().ok())
    );
    let err = parse_tls_listen("8443").expect_err("a port alone is not an address");
    assert!(err.contains("neither an address"), "{err}");
}

fn parse_encoded_slashes(text: &str) -> Result<EncodedSlashes, String> {
    text.parse()
}

/// A data-plane default as the text a user would write.
fn span(duration: Duration) -> Span {
    if duration.subsec_nanos() == 0 {
        Span::from_secs(duration.as_secs())
    } else {
        Span::from_millis(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
    }
}

/// The CPUs this process may run on (affinity mask and cgroup quota), capped to the
/// supported maximum; 1 when unknown.
pub fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(MAX_WORKERS)
}

/// The arguments of `command` that are settings of `shardgate run` (every flag that takes
/// a value, `--config` included), in declaration order.
pub fn run_settings(command: &clap::Command) -> impl Iterator<Item = &Arg> {
    command
        .get_arguments()
        .filter(|arg| arg.get_long().is_some() && matches!(arg.get_action(), ArgAction::Set))
}

/// The settings a `--config` file may hold: all of them but `--config` itself.
pub fn file_settings(command: &clap::Command) -> impl Iterator<Item = &Arg> {
    run_settings(command).filter(|arg| arg.get_id() != CONFIG)
}

/// The admin API token. Its `Debug` is redacted and it has no `Display`, so it cannot end
/// up in a log line or an error message by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(String);

impl AdminToken {
    /// The token itself, for the one place that compares it.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }
}

impl From<String> for AdminToken {
    fn from(token: String) -> Self {
        AdminToken(token)
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

/// The fully resolved, validated settings of `shardgate run`.
#[derive(Debug, Clone)]
pub struct Config {
    pub admin_listen: SocketAddr,
    pub proxy_listen: SocketAddr,
    pub tls_listen: TlsListen,
    pub data_dir: PathBuf,
    pub workers: usize,
    /// Lower-cased, validated DNS name.
    pub base_domain: String,
    pub admin_token: Option<AdminToken>,
    pub io_driver: IoDriver,
    /// A valid tracing env-filter directive.
    pub log: String,
    pub shutdown_grace: Duration,
    pub header_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub max_connections: usize,
    /// 0: unlimited.
    pub max_body: u64,
    pub trusted_proxies: CidrSet,
    pub encoded_slashes: EncodedSlashes,
    /// `--access-log`: a file, `-` for stdout; `None`: off.
    pub access_log: Option<PathBuf>,
    pub request_metrics: bool,
    /// `--usage`: count usage per key and gateway.
    pub usage: bool,
    pub usage_day_retention: Duration,
}

impl Config {
    /// The settings `shardgate run` was started with.
    pub fn proxy_settings(&self) -> ProxySettings {
        ProxySettings {
            header_timeout: self.header_timeout,
            keepalive_timeout: self.keepalive_timeout,
            max_connections: self.max_connections,
            trusted_proxies: self.trusted_proxies.clone(),
            encoded_slashes: self.encoded_slashes,
            request_metrics: self.request_metrics,
            usage: self.usage,
            max_body: if self.max_body == 0 {
                u64::MAX
            } else {
                self.max_body
            },
            ..ProxySettings::new(&self.base_domain)
        }
    }
}

/// What the command line asked for.
// Built once per process: the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Invocation {
    Run(Config),
    Doctor(crate::shell::doctor::DoctorArgs),
}

/// Why the command line or the configuration was refused.
#[derive(Debug)]
pub enum CliError {
    /// Clap's own error (also `--help` and `--version`): call `.exit()` on it.
    Clap(clap::Error),
    /// The `--config` file could not be read.
    ReadConfig {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The `--config` file is not valid TOML or has a key that is no setting.
    ParseConfig { path: PathBuf, message: String },
    /// A setting (named by its flag's long name) has a value shardgate refuses.
    Invalid {
        setting: String,
        origin: Origin,
        message: String,
    },
    /// The admin API would be reachable from other hosts without authentication.
    AdminTokenRequired {
        admin_listen: SocketAddr,
        origin: Origin,
        /// How to set a token or bind to loopback, naming the real flags and variable.
        fix: String,
    },
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Clap(e) => write!(f, "{e}"),
            CliError::ReadConfig { path, source } => {
                write!(f, "cannot read config file {}: {source}", path.display())
            }
            CliError::ParseConfig { path, message } => {
                write!(f, "invalid config file {}: {message}", path.display())
            }
            CliError::Invalid {
                setting,
                origin,
                message,
            } => {
                write!(f, "invalid {setting} ({origin}): {message}")
            }
            CliError::AdminTokenRequired {
                admin_listen,
                origin,
                fix,
            } => write!(
                f,
                "refusing to serve the admin API on non-loopback address {admin_listen} ({origin}) \
                 without an admin token: anyone who can reach it could reconfigure the gateway. \
                 {fix}"
            ),
        }
    }
}

impl std::error::Error for CliError {}

/// Where a setting's value came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    CommandLine,
    /// The environment variable's name.
    Environment(String),
    File(PathBuf),
    Default,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::CommandLine => f.write_str("from the command line"),
            Origin::Environment(var) => write!(f, "from environment variable {var}"),
            Origin::File(path) => write!(f, "from config file {}", path.display()),
            Origin::Default => f.write_str("the default"),
        }
    }
}

/// Parses the process's own arguments and environment.
pub fn parse() -> Result<Invocation, CliError> {
    parse_from(std::env::args_os())
}

/// Parses `args` (the first item is the program name) with the process environment.
pub fn parse_from<I, T>(args: I) -> Result<Invocation, CliError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    parse_with(Cli::command(), args)
}

fn parse_with<I, T>(command: clap::Command, args: I) -> Result<Invocation, CliError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let matches = command
        .clone()
        .try_get_matches_from(args)
        .map_err(CliError::Clap)?;
    let cli = Cli::from_arg_matches(&matches).map_err(CliError::Clap)?;
    match cli.command {
        Some(Command::Run(args)) => {
            let run_matches = matches.subcommand_matches("run").unwrap_or(&matches);
            let run_command = command.find_subcommand("run").unwrap_or(&command);
            resolve(args, run_command, run_matches).map(Invocation::Run)
        }
        Some(Command::Doctor(args)) => Ok(Invocation::Doctor(args)),
        None => resolve(cli.run, &command, &matches).map(Invocation::Run),
    }
}

/// Merges the TOML file under the flags and validates the result. `command` and `matches`
/// are the level (top or `run`) the flags were parsed at.
fn resolve(
    mut args: RunArgs,
    command: &clap::Command,
    matches: &ArgMatches,
) -> Result<Config, CliError> {
    let mut sources = Sources {
        command,
        matches,
        file: None,
    };
    if let Some(path) = args.config.clone() {
        let decided = apply_config_file(&path, &mut args, command, matches)?;
        sources.file = Some((path, decided));
    }
    let RunArgs {
        config: _,
        admin_listen,
        proxy_listen,
        tls_listen,
        data_dir,
        workers,
        base_domain,
        admin_token,
        io_driver,
        log,
        shutdown_grace,
        header_timeout,
        keepalive_timeout,
        max_connections,
        max_body,
        trusted_proxies,
        encoded_slashes,
        access_log,
        request_metrics,
        usage,
        usage_day_retention,
    } = args;

    if usage_day_retention.as_duration() < Duration::from_secs(90 * 86_400) {
        return Err(sources.invalid(
            "usage_day_retention",
            "must be at least 90d (hour buckets are kept 90 days)",
        ));
    }

    if max_connections == 0 {
        return Err(sources.invalid("max_connections", "must be at least 1"));
    }
    if data_dir.as_os_str().is_empty() {
        return Err(sources.invalid("data_dir", "must not be empty"));
    }
    if !(1..=MAX_WORKERS).contains(&workers) {
        return Err(sources.invalid(
            "workers",
            format!("{workers} is out of range: must be between 1 and {MAX_WORKERS}"),
        ));
    }
    let base_domain = validate_dns_name(&base_domain)
        .map_err(|message| sources.invalid("base_domain", message))?;
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&log) {
        return Err(sources.invalid(
            "log",
            format!(
                "{log:?} is not a level (error, warn, info, debug, trace) nor an env-filter directive: {e}"
            ),
        ));
    }
    if let Some(token) = &admin_token {
        validate_token(token).map_err(|message| sources.invalid("admin_token", message))?;
    }
    if admin_token.is_none() && !admin_listen.ip().is_loopback() {
        let token = sources.name("admin_token");
        // The real variable, whatever `command` the caller parsed with (tests parse with one
        // that has no environment variables).
        let token_env = run_settings(&Cli::command())
            .find(|arg| arg.get_id() == "admin_token")
            .map(env_name)
            .unwrap_or_default();
        let listen = sources.name("admin_listen");
        return Err(CliError::AdminTokenRequired {
            admin_listen,
            origin: sources.origin("admin_listen"),
            fix: format!(
                "Pass --{token} or set {token_env} (or {token} in the config file), or bind \
                 --{listen} to 127.0.0.1"
            ),
        });
    }

    Ok(Config {
        admin_listen,
        proxy_listen,
        tls_listen,
        data_dir,
        workers,
        base_domain,
        admin_token,
        io_driver,
        log,
        shutdown_grace: shutdown_grace.as_duration(),
        header_timeout: header_timeout.as_duration(),
        keepalive_timeout: keepalive_timeout.as_duration(),
        max_connections,
        max_body,
        trusted_proxies,
        encoded_slashes,
        access_log,
        request_metrics,
        usage,
        usage_day_retention: usage_day_retention.as_duration(),
    })
}

/// Where each setting's value came from: clap knows the command line and the environment,
/// the file layer knows which settings it decided.
struct Sources<'a> {
    command: &'a clap::Command,
    matches: &'a ArgMatches,
    /// The `--config` file and the ids of the settings it decided.
    file: Option<(PathBuf, Vec<clap::Id>)>,
}

impl Sources<'_> {
    fn arg(&self, id: &str) -> Option<&Arg> {
        self.command.get_arguments().find(|arg| arg.get_id() == id)
    }

    /// The setting's flag name, which is also its key in the file.
    fn name(&self, id: &str) -> String {
        self.arg(id)
            .and_then(Arg::get_long)
            .unwrap_or(id)
            .to_owned()
    }

    fn origin(&self, id: &str) -> Origin {
        match self.matches.value_source(id) {
            Some(ValueSource::CommandLine) => Origin::CommandLine,
            Some(ValueSource::EnvVariable) => {
                Origin::Environment(self.arg(id).map(env_name).unwrap_or_default())
            }
            _ => match &self.file {
                Some((path, decided)) if decided.iter().any(|d| d == id) => {
                    Origin::File(path.clone())
                }
                _ => Origin::Default,
            },
        }
    }

    fn invalid(&self, id: &str, message: impl Into<String>) -> CliError {
        CliError::Invalid {
            setting: self.name(id),
            origin: self.origin(id),
            message: message.into(),
        }
    }
}

/// `arg`'s environment variable, or the empty string when it has none.
fn env_name(arg: &Arg) -> String {
    arg.get_env()
        .map(|var| var.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Reads the `--config` file at `path`, parses every key with the value parser of the
/// argument of that long name, and puts the value into `args` unless the command line or
/// the environment set that argument. Returns the ids of the settings the file decided.
fn apply_config_file(
    path: &Path,
    args: &mut RunArgs,
    command: &clap::Command,
    matches: &ArgMatches,
) -> Result<Vec<clap::Id>, CliError> {
    let text = std::fs::read_to_string(path).map_err(|source| CliError::ReadConfig {
        path: path.to_path_buf(),
        source,
    })?;
    // toml's Display quotes the offending line, which may hold the admin token: report the
    // message and the position only.
    let table: toml::Table = toml::from_str(&text).map_err(|e| {
        let at = e.span().map_or(String::new(), |span| {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!(" (line {line}, column {column})")
        });
        CliError::ParseConfig {
            path: path.to_path_buf(),
            message: format!("{}{at}", e.message()),
        }
    })?;
    let settings: Vec<&Arg> = file_settings(command).collect();
    // The settings alone, with neither environment nor defaults: what such a command
    // matches is exactly what the file said.
    let probe = clap::Command::new("shardgate --config")
        .no_binary_name(true)
        .args(run_settings(command).map(|arg| arg.clone().env(None).default_value(None)));
    let invalid = |key: &str, message: String| CliError::Invalid {
        setting: key.to_owned(),
        origin: Origin::File(path.to_path_buf()),
        message,
    };

    let mut decided = Vec::new();
    for (key, value) in &table {
        let Some(arg) = settings
            .iter()
            .find(|arg| arg.get_long() == Some(key.as_str()))
        else {
            let known: Vec<String> = settings
                .iter()
                .filter_map(|arg| arg.get_long())
                .map(|long| format!("`{long}`"))
                .collect();
            return Err(CliError::ParseConfig {
                path: path.to_path_buf(),
                message: format!("unknown key `{key}`, expected one of {}", known.join(", ")),
            });
        };
        if arg.is_hide_env_values_set() {
            warn_if_readable_by_others(path, key);
        }
        let text = file_value(arg, value, path).map_err(|message| invalid(key, message))?;
        let mut flag = OsString::from(format!("--{key}="));
        flag.push(&text);
        let from_file = probe
            .clone()
            .try_get_matches_from([flag])
            .map_err(|e| invalid(key, refusal(&e, arg, &text.to_string_lossy())))?;
        let id = arg.get_id();
        if matches!(
            matches.value_source(id.as_str()),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        args.update_from_arg_matches(&from_file)
            .map_err(CliError::Clap)?;
        decided.push(id.clone());
    }
    Ok(decided)
}

/// A TOML value as the text its flag would take: integers for settings clap parses as
/// integers, strings for everything else; a relative path is taken relative to the file.
fn file_value(arg: &Arg, value: &toml::Value, file: &Path) -> Result<OsString, String> {
    let parses_to = arg.get_value_parser().type_id();
    let integer = [
        TypeId::of::<usize>(),
        TypeId::of::<u64>(),
        TypeId::of::<u32>(),
        TypeId::of::<u16>(),
    ]
    .into_iter()
    .any(|ty| parses_to == ty);
    match value {
        toml::Value::Integer(n) if integer => Ok(n.to_string().into()),
        toml::Value::String(text) if !integer => {
            let path = Path::new(text);
            match file.parent() {
                Some(dir) if parses_to == TypeId::of::<PathBuf>() && path.is_relative() => {
                    Ok(dir.join(path).into_os_string())
                }
                _ => Ok(text.into()),
            }
        }
        other => Err(format!(
            "expected {}, found {}",
            if integer { "an integer" } else { "a string" },
            other.type_str()
        )),
    }
}

/// Why clap refused a file value, without clap's usage text and never showing a secret.
fn refusal(error: &clap::Error, arg: &Arg, text: &str) -> String {
    if arg.is_hide_env_values_set() {
        return "not a valid value (not shown: it is secret)".to_owned();
    }
    if let Some(why) = std::error::Error::source(error) {
        let why = why.to_string();
        return if why.contains(text) {
            why
        } else {
            format!("{text:?}: {why}")
        };
    }
    let possible: Vec<String> = arg
        .get_possible_values()
        .iter()
        .filter(|value| !value.is_hide_set())
        .map(|value| value.get_name().to_owned())
        .collect();
    if possible.is_empty() {
        format!("{text:?} is not a valid value")
    } else {
        format!("{text:?} is not one of {}", possible.join(", "))
    }
}

/// A secret in a world-readable file is a secret every local user has.
fn warn_if_readable_by_others(path: &Path, key: &str) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o004 != 0
    {
        // Tracing is not initialised yet (the log filter comes from this file).
        eprintln!(
            "shardgate: warning: {} holds {key} and is readable by every user; chmod 600 it",
            path.display()
        );
    }
}

/// Checks a DNS name (RFC 1035 letters-digits-hyphen labels, as a Host header carries
/// it) and returns it lower-cased.
pub fn validate_dns_name(name: &str) -> Result<String, String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > 253 {
        return Err(format!("{name:?} is longer than 253 characters"));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(format!(
                "{name:?} has an empty label (leading, trailing or double dot)"
            ));
        }
        if label.len() > 63 {
            return Err(format!("{name:?} has a label longer than 63 characters"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(format!(
                "{name:?} is not a valid DNS name: labels may contain only letters, digits and '-'"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("{name:?} has a label that starts or ends with '-'"));
        }
    }
    Ok(name.to_ascii_lowercase())
}

/// The token travels in an HTTP header: printable ASCII, no spaces. Messages never
/// include the token.
fn validate_token(token: &AdminToken) -> Result<(), String> {
    let text = token.expose_secret();
    if text.is_empty() {
        return Err(
            "must not be empty (unset it instead to run without a token on loopback)".into(),
        );
    }
    if !text.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(
            "may contain only printable ASCII without spaces (it is sent in an HTTP \
                    header); check for a trailing newline"
                .into(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    /// The real command without environment variables, so tests do not depend on the
    /// shell they run in (`std::env::set_var` is unsafe in edition 2024).
    fn hermetic_command() -> clap::Command {
        Cli::command()
            .mut_args(|arg| arg.env(None))
            .mut_subcommands(|sub| sub.mut_args(|arg| arg.env(None)))
    }

    fn run(args: &[&str]) -> Result<Config, CliError> {
        let argv = std::iter::once("shardgate").chain(args.iter().copied());
        match parse_with(hermetic_command(), argv)? {
            Invocation::Run(config) => Ok(config),
            Invocation::Doctor(_) => panic!("expected `run`, got `doctor`"),
        }
    }

    fn config_file(text: &str) -> tempfile::NamedTempFile {
        let Ok(mut file) = tempfile::NamedTempFile::new() else {
            panic!("cannot create a temp file");
        };
        if let Err(e) = file.write_all(text.as_bytes()) {
            panic!("cannot write the temp file: {e}");
        }
        file
    }

    fn ok(result: Result<Config, CliError>) -> Config {
        match result {
            Ok(config) => config,
            Err(e) => panic!("refused: {e}"),
        }
    }

    fn path_str(file: &tempfile::NamedTempFile) -> &str {
        file.path().to_str().unwrap_or_default()
    }

    #[test]
    fn no_flags_gives_the_documented_defaults() {
        let config = ok(run(&[]));
        assert_eq!(config.admin_listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.proxy_listen.to_string(), "0.0.0.0:8081");
        assert_eq!(
            config.tls_listen.addr().map(|a| a.to_string()).as_deref(),
            Some("0.0.0.0:8443")
        );
        assert_eq!(config.data_dir, PathBuf::from("./data"));
        assert_eq!(config.workers, default_workers());
        assert_eq!(config.base_domain, "localhost");
        assert!(config.admin_token.is_none());
        assert_eq!(config.io_driver, IoDriver::Auto);
        assert_eq!(config.log, "info");
        assert_eq!(config.shutdown_grace, Duration::from_secs(10));
    }

    #[test]
    fn run_subcommand_is_the_same_as_no_subcommand() {
        let config = ok(run(&["run", "--workers", "3", "--io-driver", "epoll"]));
        assert_eq!(config.workers, 3);
        assert_eq!(config.io_driver, IoDriver::Epoll);
    }

    #[test]
    fn file_overrides_defaults_and_flags_override_the_file() {
        let file = config_file(
            r#"
            admin-listen = "127.0.0.1:9000"
            proxy-listen = "127.0.0.1:9001"
            workers = 2
            base-domain = "Example.COM"
            io-driver = "epoll"
            log = "debug"
            shutdown-grace = "3s"
            data-dir = "/var/lib/shardgate"
            "#,
        );
        let from_file = ok(run(&["--config", path_str(&file)]));
        assert_eq!(from_file.admin_listen.to_string(), "127.0.0.1:9000");
        assert_eq!(from_file.proxy_listen.to_string(), "127.0.0.1:9001");
        assert_eq!(from_file.workers, 2);
        assert_eq!(from_file.base_domain, "example.com");
        assert_eq!(from_file.io_driver, IoDriver::Epoll);
        assert_eq!(from_file.log, "debug");
        assert_eq!(from_file.shutdown_grace, Duration::from_secs(3));
        assert_eq!(from_file.data_dir, PathBuf::from("/var/lib/shardgate"));

        // A flag equal to the default still counts: it was given on the command line.
        let flags = ok(run(&[
            "--config",
            path_str(&file),
            "--workers",
            "5",
            "--log",
            "info",
        ]));
        assert_eq!(flags.workers, 5);
        assert_eq!(flags.log, "info");
        assert_eq!(
            flags.admin_listen.to_string(),
            "127.0.0.1:9000",
            "untouched keys still come from the file"
        );
    }

    #[test]
    fn relative_data_dir_in_the_file_is_relative_to_the_file() {
        let Ok(dir) = tempfile::tempdir() else {
            panic!("tempdir")
        };
        let path = dir.path().join("shardgate.toml");
        if let Err(e) = std::fs::write(&path, "data-dir = \"state\"\n") {
            panic!("write: {e}");
        }
        let config = ok(run(&["--config", path.to_str().unwrap_or_default()]));
        assert_eq!(config.data_dir, dir.path().join("state"));
    }

    #[test]
    fn the_example_config_file_is_valid_and_lists_the_defaults() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../docs/shardgate.example.toml"
        );
        let config = ok(run(&["--config", path]));
        let defaults = ok(run(&[]));
        assert_eq!(config.admin_listen, defaults.admin_listen);
        assert_eq!(config.proxy_listen, defaults.proxy_listen);
        assert_eq!(config.base_domain, defaults.base_domain);
        assert_eq!(config.io_driver, defaults.io_driver);
        assert_eq!(config.log, defaults.log);
        assert_eq!(config.shutdown_grace, defaults.shutdown_grace);
        assert_eq!(config.header_timeout, defaults.header_timeout);
        assert_eq!(config.keepalive_timeout, defaults.keepalive_timeout);
        assert_eq!(config.max_connections, defaults.max_connections);
        assert_eq!(config.max_body, defaults.max_body);
        assert_eq!(config.trusted_proxies, defaults.trusted_proxies);
        assert_eq!(config.encoded_slashes, defaults.encoded_slashes);
        assert_eq!(config.access_log, defaults.access_log);
        assert_eq!(config.request_metrics, defaults.request_metrics);
        assert_eq!(config.usage, defaults.usage);
        assert_eq!(config.usage_day_retention, defaults.usage_day_retention);
    }

    #[test]
    fn unknown_file_key_is_refused_by_name() {
        let file = config_file("workerz = 4\n");
        let Err(err) = run(&["--config", path_str(&file)]) else {
            panic!("accepted an unknown key");
        };
        assert!(matches!(err, CliError::ParseConfig { .. }), "{err:?}");
        assert!(err.to_string().contains("workerz"), "{err}");
    }

    #[test]
    fn a_config_syntax_error_names_the_position_but_never_quotes_the_line() {
        // A bad escape in the token's own line: toml's own message would quote it.
        let file = config_file("log = \"info\"\nadmin-token = \"s3cret-token\\q\"\n");
        let Err(err) = run(&["--config", path_str(&file)]) else {
            panic!("accepted a malformed file");
        };
        let text = err.to_string();
        assert!(matches!(err, CliError::ParseConfig { .. }), "{err:?}");
        assert!(text.contains("line 2"), "{text}");
        assert!(!text.contains("s3cret"), "the token leaked: {text}");
    }

    #[test]
    fn missing_config_file_is_refused() {
        let Err(err) = run(&["--config", "/nonexistent/shardgate.toml"]) else {
            panic!("accepted a missing file");
        };
        assert!(
            err.to_string().contains("/nonexistent/shardgate.toml"),
            "{err}"
        );
    }

    #[test]
    fn non_loopback_admin_without_token_is_refused_with_the_fix() {
        let Err(err) = run(&["--admin-listen", "0.0.0.0:8080"]) else {
            panic!("started an unauthenticated public admin API");
        };
        let message = err.to_string();
        assert!(matches!(err, CliError::AdminTokenRequired { .. }));
        assert!(message.contains("--admin-token"), "{message}");
        assert!(message.contains("SHARDGATE_ADMIN_TOKEN"), "{message}");
        assert!(message.contains("127.0.0.1"), "{message}");

        let file = config_file("admin-listen = \"[::]:8080\"\n");
        assert!(matches!(
            run(&["--config", path_str(&file)]),
            Err(CliError::AdminTokenRequired { .. })
        ));
    }

    #[test]
    fn non_loopback_admin_with_token_starts() {
        let config = ok(run(&[
            "--admin-listen",
            "0.0.0.0:8080",
            "--admin-token",
            "s3cret-token",
        ]));
        assert_eq!(
            config.admin_token.as_ref().map(AdminToken::expose_secret),
            Some("s3cret-token")
        );

        let file = config_file("admin-token = \"from-file\"\nadmin-listen = \"0.0.0.0:1\"\n");
        let config = ok(run(&["--config", path_str(&file)]));
        assert_eq!(
            config.admin_token.as_ref().map(AdminToken::expose_secret),
            Some("from-file")
        );
        assert!(
            ok(run(&["--admin-listen", "[::1]:8080"]))
                .admin_token
                .is_none(),
            "::1 is loopback"
        );
    }

    #[test]
    fn admin_token_never_appears_in_debug_output_or_errors() {
        let config = ok(run(&["--admin-token", "hunter2-very-secret"]));
        let debug = format!("{config:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("redacted"), "{debug}");

        let Err(err) = run(&["--admin-token", "has space"]) else {
            panic!("accepted a token with a space");
        };
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains("has space"), "{shown}");
    }

    #[test]
    fn workers_out_of_range_are_refused() {
        for bad in ["0", "1025"] {
            let Err(err) = run(&["--workers", bad]) else {
                panic!("accepted --workers {bad}");
            };
            assert!(err.to_string().contains("workers"), "{err}");
            assert!(err.to_string().contains("command line"), "{err}");
        }
        assert_eq!(ok(run(&["--workers", "1024"])).workers, 1024);

        let file = config_file("workers = 0\n");
        let Err(err) = run(&["--config", path_str(&file)]) else {
            panic!("accepted workers = 0 from the file");
        };
        assert!(err.to_string().contains("config file"), "{err}");
    }

    #[test]
    fn invalid_base_domains_are_refused() {
        for bad in [
            "",
            "-bad.com",
            "bad-.com",
            "a..b",
            "under_score.com",
            "trailing.",
            "sp ace",
        ] {
            assert!(run(&["--base-domain", bad]).is_err(), "accepted {bad:?}");
        }
        for good in [
            "localhost",
            "gw.example.com",
            "xn--bcher-kva.example",
            "a1-b2.io",
        ] {
            assert_eq!(ok(run(&["--base-domain", good])).base_domain, good);
        }
    }

    #[test]
    fn invalid_log_filter_and_grace_are_refused() {
        assert!(run(&["--log", "info,[[["]).is_err());
        assert_eq!(
            ok(run(&["--log", "warn,shardgate_proxy=trace"])).log,
            "warn,shardgate_proxy=trace"
        );
        assert!(
            run(&["--shutdown-grace", "10"]).is_err(),
            "a unit is required"
        );
        assert_eq!(
            ok(run(&["--shutdown-grace", "500ms"])).shutdown_grace,
            Duration::from_millis(500)
        );
        let file = config_file("shutdown-grace = \"soon\"\n");
        assert!(run(&["--config", path_str(&file)]).is_err());
    }

    #[test]
    fn unknown_subcommand_or_flag_is_a_clap_error() {
        assert!(matches!(run(&["--nope"]), Err(CliError::Clap(_))));
        assert!(matches!(run(&["frobnicate"]), Err(CliError::Clap(_))));
    }

    #[test]
    fn help_states_every_default() {
        let help = Cli::command().render_long_help().to_string();
        for default in [
            "127.0.0.1:8080",
            "0.0.0.0:8081",
            "./data",
            "localhost",
            "auto",
            "info",
            "10s",
        ] {
            assert!(
                help.contains(default),
                "help does not mention {default}:\n{help}"
            );
        }
    }

    /// Environment beats the file, the command line beats the environment. The process
    /// environment cannot be changed safely in a multi-threaded test binary, so this test
    /// re-runs itself in a child process with the variables set.
    #[test]
    fn environment_sits_between_command_line_and_file() {
        const CHILD: &str = "SHARDGATE_CLI_TEST_CHILD";
        if std::env::var_os(CHILD).is_some() {
            let file =
                config_file("workers = 2\nlog = \"debug\"\nbase-domain = \"file.example\"\n");
            let argv = ["shardgate", "--config", path_str(&file), "--log", "trace"];
            let config = match parse_from(argv) {
                Ok(Invocation::Run(config)) => config,
                Ok(Invocation::Doctor(_)) => panic!("expected `run`, got `doctor`"),
                Err(e) => panic!("refused: {e}"),
            };
            assert_eq!(config.workers, 7, "environment beats the file");
            assert_eq!(config.log, "trace", "command line beats the environment");
            assert_eq!(
                config.base_domain, "file.example",
                "the file beats the default"
            );
            assert_eq!(
                config.admin_token.as_ref().map(AdminToken::expose_secret),
                Some("env-token")
            );
            return;
        }
        let Ok(exe) = std::env::current_exe() else {
            panic!("current_exe")
        };
        // The test's path inside the crate: `module_path!()` less the crate name.
        let module = module_path!()
            .split_once("::")
            .map_or(module_path!(), |(_, path)| path);
        let mut child = std::process::Command::new(exe);
        child.args([
            "--exact",
            &format!("{module}::environment_sits_between_command_line_and_file"),
            "--quiet",
        ]);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("SHARDGATE_") {
                child.env_remove(key);
            }
        }
        let output = child
            .env(CHILD, "1")
            .env("SHARDGATE_WORKERS", "7")
            .env("SHARDGATE_LOG", "warn")
            .env("SHARDGATE_ADMIN_TOKEN", "env-token")
            .output();
        let Ok(output) = output else {
            panic!("cannot run the child test: {output:?}");
        };
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            stdout.contains("1 passed"),
            "the child ran no test:\n{stdout}"
        );
        assert!(
            output.status.success(),
            "child test failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    #[test]
    fn file_values_are_refused_naming_the_setting_and_the_file() {
        for (text, setting) in [
            ("header-timeout = \"soon\"\n", "header-timeout"),
            ("workers = \"4\"\n", "workers"),
            ("proxy-listen = 8081\n", "proxy-listen"),
            ("io-driver = \"kqueue\"\n", "io-driver"),
            ("trusted-proxies = \"10.0.0.0/33\"\n", "trusted-proxies"),
            ("encoded-slashes = \"decode\"\n", "encoded-slashes"),
            ("max-body = -1\n", "max-body"),
        ] {
            let file = config_file(text);
            let Err(err) = run(&["--config", path_str(&file)]) else {
                panic!("accepted {text:?}");
            };
            assert!(
                matches!(&err, CliError::Invalid { setting: s, origin: Origin::File(_), .. } if s == setting),
                "{text:?}: {err:?}"
            );
            let message = err.to_string();
            assert!(message.contains("config file"), "{message}");
            assert!(message.contains(path_str(&file)), "{message}");
        }
    }

    #[test]
    fn a_file_value_is_checked_even_where_a_flag_overrides_it() {
        let file = config_file("workers = 0\nshutdown-grace = \"soon\"\n");
        let Err(err) = run(&["--config", path_str(&file), "--shutdown-grace", "1s"]) else {
            panic!("accepted a bad file value hidden behind a flag");
        };
        assert!(err.to_string().contains("shutdown-grace"), "{err}");
        let file = config_file("workers = 0\n");
        assert_eq!(
            ok(run(&["--config", path_str(&file), "--workers", "3"])).workers,
            3
        );
    }

    #[test]
    fn the_file_cannot_name_another_config_file() {
        let file = config_file("config = \"other.toml\"\n");
        let Err(err) = run(&["--config", path_str(&file)]) else {
            panic!("accepted a config key");
        };
        assert!(matches!(err, CliError::ParseConfig { .. }), "{err:?}");
        assert!(err.to_string().contains("`config`"), "{err}");
        assert!(err.to_string().contains("`admin-listen`"), "{err}");
    }

    #[test]
    fn every_setting_works_from_the_file_and_from_the_run_subcommand() {
        let file = config_file(
            r#"
            header-timeout = "2s"
            keepalive-timeout = "500ms"
            max-connections = 7
            max-body = 1024
            trusted-proxies = "10.0.0.0/8"
            encoded-slashes = "keep"
            admin-token = "t0ken"
            "#,
        );
        let config = ok(run(&["run", "--config", path_str(&file)]));
        assert_eq!(config.header_timeout, Duration::from_secs(2));
        assert_eq!(config.keepalive_timeout, Duration::from_millis(500));
        assert_eq!(config.max_connections, 7);
        assert_eq!(config.max_body, 1024);
        assert_eq!(config.trusted_proxies.to_string(), "10.0.0.0/8");
        assert_eq!(config.encoded_slashes, EncodedSlashes::Keep);
        assert_eq!(
            config.admin_token.as_ref().map(AdminToken::expose_secret),
            Some("t0ken")
        );
        let empty = config_file("trusted-proxies = \"\"\n");
        assert!(
            ok(run(&["--config", path_str(&empty)]))
                .trusted_proxies
                .is_empty()
        );
    }

    #[test]
    fn data_plane_defaults_are_the_flag_defaults() {
        let from_flags = ok(run(&[])).proxy_settings();
        let defaults = ProxySettings::new("localhost");
        assert_eq!(from_flags.header_timeout, defaults.header_timeout);
        assert_eq!(from_flags.keepalive_timeout, defaults.keepalive_timeout);
        assert_eq!(from_flags.max_connections, defaults.max_connections);
        assert_eq!(from_flags.max_body, defaults.max_body);
        assert_eq!(from_flags.trusted_proxies, defaults.trusted_proxies);
        assert_eq!(from_flags.encoded_slashes, defaults.encoded_slashes);
        assert_eq!(from_flags.base_domain, defaults.base_domain);
    }

    #[test]
    fn every_setting_has_the_environment_variable_named_after_its_flag() {
        let command = Cli::command();
        for arg in run_settings(&command) {
            let long = arg.get_long().unwrap_or_default();
            let expected = format!("SHARDGATE_{}", long.replace('-', "_").to_uppercase());
            assert_eq!(env_name(arg), expected, "--{long}");
        }
    }

    /// `shardgate doctor` takes the flags `shardgate run` will get: where both have one,
    /// it must read the same environment variable and default to the same value.
    #[test]
    fn doctor_flags_shared_with_run_have_its_environment_and_default() {
        let command = Cli::command();
        let Some(doctor) = command.find_subcommand("doctor") else {
            panic!("no doctor subcommand");
        };
        let mut shared = 0;
        for arg in doctor.get_arguments() {
            let Some(run_arg) = run_settings(&command).find(|a| a.get_id() == arg.get_id()) else {
                continue;
            };
            shared += 1;
            assert_eq!(arg.get_long(), run_arg.get_long(), "{}", arg.get_id());
            assert_eq!(arg.get_env(), run_arg.get_env(), "{}", arg.get_id());
            assert_eq!(
                arg.get_default_values(),
                run_arg.get_default_values(),
                "{}",
                arg.get_id()
            );
        }
        assert_eq!(
            shared, 5,
            "workers, data-dir, io-driver, base-domain, tls-listen"
        );
    }

    #[test]
    fn the_example_config_file_mentions_every_setting() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../docs/shardgate.example.toml"
        );
        let Ok(text) = std::fs::read_to_string(path) else {
            panic!("cannot read {path}");
        };
        let command = Cli::command();
        for arg in file_settings(&command) {
            let key = arg.get_long().unwrap_or_default();
            assert!(
                text.lines().any(|line| {
                    let line = line.trim_start_matches(['#', ' ']);
                    line.strip_prefix(key)
                        .is_some_and(|rest| rest.trim_start().starts_with('='))
                }),
                "docs/shardgate.example.toml does not mention {key}"
            );
        }
    }
}
