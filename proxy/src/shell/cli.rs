//! The command line: `shardgate [run] [flags]` and `shardgate doctor [flags]` (see
//! [`crate::shell::doctor`]), and how flags, environment variables and the `--config` TOML file
//! combine into one validated [`Config`].
//!
//! Precedence, per setting: command line > environment (`SHARDGATE_*`) > TOML file >
//! built-in default. Clap knows the first two and the default; [`ArgMatches::value_source`]
//! tells us whether a value is only clap's default, which is exactly when the TOML file
//! gets a say. Every refusal names the setting and where its value came from.

use std::ffi::OsString;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use serde::Deserialize;
use shardgate_core::duration::Span;
use shardgate_core::net::CidrSet;
use shardgate_core::path::EncodedSlashes;

use crate::settings::ProxySettings;
pub use crate::worker::IoDriver;

/// Most workers one process runs; beyond this, run several processes.
pub const MAX_WORKERS: usize = 1024;

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

/// Flags of `shardgate run`, as clap parsed them (before the TOML file is merged in).
#[derive(Debug, Args)]
pub struct RunArgs {
    /// TOML file with any of the settings below (keys named like the flags, e.g.
    /// `admin-listen = "127.0.0.1:8080"`). Flags and environment variables override it;
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

    /// Directory of the durable store (journal + checkpoint). Put it on a local disk:
    /// every admin write is fsynced here before it is acknowledged. Relative paths in the
    /// TOML file are relative to the file's directory.
    #[arg(
        long,
        env = "SHARDGATE_DATA_DIR",
        value_name = "DIR",
        default_value = "./data"
    )]
    pub data_dir: PathBuf,

    /// Number of worker threads, each pinned to a core with its own event loop. More
    /// workers than cores only adds context switches; fewer leaves cores for other
    /// processes. Default: the CPUs available to this process. Range 1..=1024.
    #[arg(long, env = "SHARDGATE_WORKERS", value_name = "N", default_value_t = default_workers())]
    pub workers: usize,

    /// Domain under which gateways get their subdomains: a request for
    /// `<subdomain>.<base-domain>` goes to that gateway. `localhost` (the default) works
    /// on any machine without DNS; production uses a domain with a wildcard record.
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

    /// Event-loop driver. `auto` (default) uses io_uring when the kernel offers it and
    /// falls back to epoll; `uring` refuses to start without io_uring (so a fallback
    /// cannot go unnoticed); `epoll` works on every Linux kernel, at more syscalls per
    /// request.
    #[arg(long, env = "SHARDGATE_IO_DRIVER", value_enum, value_name = "DRIVER", default_value_t = IoDriver::Auto)]
    pub io_driver: IoDriver,

    /// Log filter for stderr: error, warn, info (default), debug, trace, or a
    /// tracing env-filter directive such as `info,shardgate_proxy=debug`. debug and trace
    /// log per connection and cost throughput.
    #[arg(
        long,
        env = "SHARDGATE_LOG",
        value_name = "FILTER",
        default_value = "info"
    )]
    pub log: String,

    /// On SIGTERM/SIGINT, how long in-flight connections may take to finish after the
    /// listeners close; the rest are then cut. Longer is kinder to slow clients, shorter
    /// makes restarts faster. Format: integer + unit (ms, s, m, h). Default 10s.
    #[arg(long, env = "SHARDGATE_SHUTDOWN_GRACE", value_name = "DURATION", default_value = "10s", value_parser = Span::parse)]
    pub shutdown_grace: Span,

    /// A client must send a whole request head within this once it starts one; slower
    /// clients get 408 and are closed. This is the slowloris bound: a connection that
    /// trickles bytes is cut after it whatever its rate. Default 10s.
    #[arg(long, env = "SHARDGATE_HEADER_TIMEOUT", value_name = "DURATION", default_value = "10s", value_parser = Span::parse)]
    pub header_timeout: Span,

    /// How long an idle keep-alive client connection is kept open. Idle connections hold
    /// no buffer, so long values cost little memory but do hold file descriptors.
    /// Default 60s.
    #[arg(long, env = "SHARDGATE_KEEPALIVE_TIMEOUT", value_name = "DURATION", default_value = "60s", value_parser = Span::parse)]
    pub keepalive_timeout: Span,

    /// Client connections per worker beyond which new connections get 503 and are closed,
    /// so an overload degrades cleanly instead of exhausting descriptors. Default 16384.
    #[arg(
        long,
        env = "SHARDGATE_MAX_CONNECTIONS",
        value_name = "N",
        default_value_t = 16_384
    )]
    pub max_connections: usize,

    /// Largest request body in bytes (413 beyond it). 0 (the default) means unlimited:
    /// bodies stream through without being buffered.
    #[arg(
        long,
        env = "SHARDGATE_MAX_BODY",
        value_name = "BYTES",
        default_value_t = 0
    )]
    pub max_body: u64,

    /// Comma-separated CIDRs of proxies in front of shardgate (load balancers) whose
    /// X-Forwarded-For is believed: for requests from them the client is the rightmost
    /// address not in this list. Default none: the socket peer is the client, and a
    /// client-sent X-Forwarded-For is only appended to, never believed.
    #[arg(
        long,
        env = "SHARDGATE_TRUSTED_PROXIES",
        value_name = "CIDRS",
        default_value = ""
    )]
    pub trusted_proxies: CidrSet,

    /// What to do with an encoded slash or backslash (`%2F`, `%5C`) or a raw `\` in a
    /// request path. `reject` (the default) answers 400: an upstream that decodes them sees
    /// other path segments than the router did, so a key-protected rule could be walked
    /// around. `keep` forwards them encoded, for upstreams that need `%2F` in a segment and
    /// do not decode it before their own routing. See docs/SECURITY.md.
    #[arg(
        long,
        env = "SHARDGATE_ENCODED_SLASHES",
        value_name = "POLICY",
        default_value = "reject",
        value_parser = parse_encoded_slashes
    )]
    pub encoded_slashes: EncodedSlashes,
}

fn parse_encoded_slashes(text: &str) -> Result<EncodedSlashes, String> {
    text.parse()
}

/// The CPUs this process may run on (affinity mask and cgroup quota), capped to the
/// supported maximum; 1 when unknown.
pub fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(MAX_WORKERS)
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
    /// The `--config` file is not valid TOML or has unknown keys / wrong types.
    ParseConfig { path: PathBuf, message: String },
    /// A setting has a value shardgate refuses.
    Invalid {
        setting: &'static str,
        origin: Origin,
        message: String,
    },
    /// The admin API would be reachable from other hosts without authentication.
    AdminTokenRequired {
        admin_listen: SocketAddr,
        origin: Origin,
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
            } => write!(
                f,
                "refusing to serve the admin API on non-loopback address {admin_listen} ({origin}) \
                 without an admin token: anyone who can reach it could reconfigure the gateway. \
                 Pass --admin-token or set SHARDGATE_ADMIN_TOKEN (or admin-token in the config \
                 file), or bind --admin-listen to 127.0.0.1"
            ),
        }
    }
}

impl std::error::Error for CliError {}

/// Where a setting's value came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    CommandLine,
    Environment(&'static str),
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

/// The `--config` file: the same settings as the flags, under the flags' names.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileConfig {
    admin_listen: Option<SocketAddr>,
    proxy_listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    workers: Option<usize>,
    base_domain: Option<String>,
    admin_token: Option<String>,
    io_driver: Option<IoDriver>,
    log: Option<String>,
    shutdown_grace: Option<String>,
    header_timeout: Option<String>,
    keepalive_timeout: Option<String>,
    max_connections: Option<usize>,
    max_body: Option<u64>,
    trusted_proxies: Option<String>,
    encoded_slashes: Option<String>,
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
    let matches = command.try_get_matches_from(args).map_err(CliError::Clap)?;
    let cli = Cli::from_arg_matches(&matches).map_err(CliError::Clap)?;
    match cli.command {
        Some(Command::Run(args)) => {
            let sub = matches.subcommand_matches("run").unwrap_or(&matches);
            resolve(args, sub).map(Invocation::Run)
        }
        Some(Command::Doctor(args)) => Ok(Invocation::Doctor(args)),
        None => resolve(cli.run, &matches).map(Invocation::Run),
    }
}

/// Merges the TOML file under the flags and validates the result.
fn resolve(args: RunArgs, matches: &ArgMatches) -> Result<Config, CliError> {
    let (file, file_path) = match &args.config {
        Some(path) => (read_config_file(path)?, Some(path.clone())),
        None => (FileConfig::default(), None),
    };
    let layer = Layers {
        matches,
        file_path: file_path.as_deref(),
    };

    let (admin_listen, admin_listen_origin) = layer.pick(
        "admin_listen",
        "SHARDGATE_ADMIN_LISTEN",
        args.admin_listen,
        file.admin_listen,
    );
    let (proxy_listen, _) = layer.pick(
        "proxy_listen",
        "SHARDGATE_PROXY_LISTEN",
        args.proxy_listen,
        file.proxy_listen,
    );
    let file_data_dir =
        file.data_dir
            .map(|dir| match file_path.as_deref().and_then(Path::parent) {
                Some(base) if dir.is_relative() => base.join(dir),
                _ => dir,
            });
    let (data_dir, data_dir_origin) = layer.pick(
        "data_dir",
        "SHARDGATE_DATA_DIR",
        args.data_dir,
        file_data_dir,
    );
    let (workers, workers_origin) =
        layer.pick("workers", "SHARDGATE_WORKERS", args.workers, file.workers);
    let (base_domain, base_domain_origin) = layer.pick(
        "base_domain",
        "SHARDGATE_BASE_DOMAIN",
        args.base_domain,
        file.base_domain,
    );
    let (admin_token, token_origin) = layer.pick(
        "admin_token",
        "SHARDGATE_ADMIN_TOKEN",
        args.admin_token,
        file.admin_token.map(|t| Some(AdminToken(t))),
    );
    let (io_driver, _) = layer.pick(
        "io_driver",
        "SHARDGATE_IO_DRIVER",
        args.io_driver,
        file.io_driver,
    );
    let (log, log_origin) = layer.pick("log", "SHARDGATE_LOG", args.log, file.log);
    let file_grace = match file.shutdown_grace {
        Some(text) => Some(Span::parse(&text).map_err(|e| CliError::Invalid {
            setting: "shutdown-grace",
            origin: layer.file_origin(),
            message: e.to_string(),
        })?),
        None => None,
    };
    let (shutdown_grace, _) = layer.pick(
        "shutdown_grace",
        "SHARDGATE_SHUTDOWN_GRACE",
        args.shutdown_grace,
        file_grace,
    );
    let file_span = |setting: &'static str, text: Option<String>| match text {
        Some(text) => Span::parse(&text).map(Some).map_err(|e| CliError::Invalid {
            setting,
            origin: layer.file_origin(),
            message: e.to_string(),
        }),
        None => Ok(None),
    };
    let (header_timeout, _) = layer.pick(
        "header_timeout",
        "SHARDGATE_HEADER_TIMEOUT",
        args.header_timeout,
        file_span("header-timeout", file.header_timeout)?,
    );
    let (keepalive_timeout, _) = layer.pick(
        "keepalive_timeout",
        "SHARDGATE_KEEPALIVE_TIMEOUT",
        args.keepalive_timeout,
        file_span("keepalive-timeout", file.keepalive_timeout)?,
    );
    let (max_connections, max_connections_origin) = layer.pick(
        "max_connections",
        "SHARDGATE_MAX_CONNECTIONS",
        args.max_connections,
        file.max_connections,
    );
    let (max_body, _) = layer.pick(
        "max_body",
        "SHARDGATE_MAX_BODY",
        args.max_body,
        file.max_body,
    );
    let file_trusted = match file.trusted_proxies {
        Some(text) => Some(text.parse::<CidrSet>().map_err(|e| CliError::Invalid {
            setting: "trusted-proxies",
            origin: layer.file_origin(),
            message: e.to_string(),
        })?),
        None => None,
    };
    let (trusted_proxies, _) = layer.pick(
        "trusted_proxies",
        "SHARDGATE_TRUSTED_PROXIES",
        args.trusted_proxies,
        file_trusted,
    );
    let file_slashes = match file.encoded_slashes {
        Some(text) => {
            Some(
                text.parse::<EncodedSlashes>()
                    .map_err(|message| CliError::Invalid {
                        setting: "encoded-slashes",
                        origin: layer.file_origin(),
                        message,
                    })?,
            )
        }
        None => None,
    };
    let (encoded_slashes, _) = layer.pick(
        "encoded_slashes",
        "SHARDGATE_ENCODED_SLASHES",
        args.encoded_slashes,
        file_slashes,
    );
    if max_connections == 0 {
        return Err(CliError::Invalid {
            setting: "max-connections",
            origin: max_connections_origin,
            message: "must be at least 1".into(),
        });
    }

    if data_dir.as_os_str().is_empty() {
        return Err(CliError::Invalid {
            setting: "data-dir",
            origin: data_dir_origin,
            message: "must not be empty".into(),
        });
    }
    if !(1..=MAX_WORKERS).contains(&workers) {
        return Err(CliError::Invalid {
            setting: "workers",
            origin: workers_origin,
            message: format!("{workers} is out of range: must be between 1 and {MAX_WORKERS}"),
        });
    }
    let base_domain = validate_dns_name(&base_domain).map_err(|message| CliError::Invalid {
        setting: "base-domain",
        origin: base_domain_origin,
        message,
    })?;
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&log) {
        return Err(CliError::Invalid {
            setting: "log",
            origin: log_origin,
            message: format!(
                "{log:?} is not a level (error, warn, info, debug, trace) nor an env-filter directive: {e}"
            ),
        });
    }
    if let Some(token) = &admin_token {
        validate_token(token).map_err(|message| CliError::Invalid {
            setting: "admin-token",
            origin: token_origin.clone(),
            message,
        })?;
    }
    if admin_token.is_none() && !admin_listen.ip().is_loopback() {
        return Err(CliError::AdminTokenRequired {
            admin_listen,
            origin: admin_listen_origin,
        });
    }

    Ok(Config {
        admin_listen,
        proxy_listen,
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
    })
}

/// The three sources under clap's parse: command line / environment (clap), file, default.
struct Layers<'a> {
    matches: &'a ArgMatches,
    file_path: Option<&'a Path>,
}

impl Layers<'_> {
    /// The value for arg `id`: clap's unless clap only has its default and the file sets it.
    fn pick<T>(
        &self,
        id: &str,
        env: &'static str,
        clap_value: T,
        file_value: Option<T>,
    ) -> (T, Origin) {
        match self.matches.value_source(id) {
            Some(ValueSource::CommandLine) => (clap_value, Origin::CommandLine),
            Some(ValueSource::EnvVariable) => (clap_value, Origin::Environment(env)),
            // Only clap's default, or no value at all: the file wins if it has one.
            _ => match file_value {
                Some(value) => (value, self.file_origin()),
                None => (clap_value, Origin::Default),
            },
        }
    }

    fn file_origin(&self) -> Origin {
        match self.file_path {
            Some(path) => Origin::File(path.to_path_buf()),
            None => Origin::Default,
        }
    }
}

fn read_config_file(path: &Path) -> Result<FileConfig, CliError> {
    let text = std::fs::read_to_string(path).map_err(|source| CliError::ReadConfig {
        path: path.to_path_buf(),
        source,
    })?;
    let config: FileConfig = toml::from_str(&text).map_err(|e| CliError::ParseConfig {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    if config.admin_token.is_some() {
        warn_if_readable_by_others(path);
    }
    Ok(config)
}

/// A token in a world-readable file is a token every local user has.
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o004 != 0
    {
        // Tracing is not initialised yet (the log filter comes from this file).
        eprintln!(
            "shardgate: warning: {} holds the admin token and is readable by every user; chmod 600 it",
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
        let mut child = std::process::Command::new(exe);
        child.args([
            "--exact",
            "cli::tests::environment_sits_between_command_line_and_file",
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
}
