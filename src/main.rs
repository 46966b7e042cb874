//! The `mcp-edge` command: parse flags, load the configuration, start, wait for a signal.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use mcp_edge::config::{
    self, AdminOverrides, LogFormat, LogOverrides, Overrides, ServerOverrides, Source, UpstreamKind,
};

/// The front door for MCP servers: Streamable HTTP and WebSocket in; stdio, Streamable HTTP and
/// legacy SSE MCP servers behind.
#[derive(Parser)]
#[command(name = "mcp-edge", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the gateway. Without --config, --stdio or --upstream it reads ./gateway.toml, or, when that
    /// file does not exist, the built-in default (the shipped gateway.toml), which serves the
    /// example server at http://127.0.0.1:8080/mcp.
    Run {
        #[command(flatten)]
        source: SourceArgs,
        /// Quick mode: serve this command at /mcp, one child per session (split like a shell
        /// splits words, without running a shell). No file is read.
        #[arg(long, value_name = "COMMAND", conflicts_with_all = ["config", "upstream"])]
        stdio: Option<String>,
        /// With --stdio: serve the command from a shared pool of N long-lived children instead
        /// of one child per session (for servers that keep no per-client state).
        #[arg(long, value_name = "N", requires = "stdio")]
        pool: Option<usize>,
        /// Quick mode: serve this MCP server URL at /mcp, one upstream session per gateway
        /// session. No file is read.
        #[arg(long, value_name = "URL", conflicts_with = "config")]
        upstream: Option<String>,
        /// How the --upstream speaks: `auto` tries Streamable HTTP and falls back to legacy
        /// HTTP+SSE the way the spec's clients do.
        #[arg(long, value_enum, default_value = "auto", requires = "upstream")]
        upstream_kind: UpstreamKind,
        #[command(flatten)]
        overrides: OverrideArgs,
    },
    /// Validate a configuration and print it, normalized, with secrets masked.
    Check {
        #[command(flatten)]
        source: SourceArgs,
        #[command(flatten)]
        overrides: OverrideArgs,
    },
    /// Run the built-in example MCP server on stdio, or on Streamable HTTP at ADDR/mcp.
    ExampleServer {
        /// Serve Streamable HTTP at this address instead of stdio.
        #[arg(long, value_name = "ADDR")]
        http: Option<SocketAddr>,
    },
    /// Internal: the guard process between the gateway and one stdio child.
    #[command(name = "__guard", hide = true)]
    Guard {
        liveness_fd: i32,
        #[arg(last = true, required = true)]
        argv: Vec<std::ffi::OsString>,
    },
}

#[derive(clap::Args)]
struct SourceArgs {
    /// Configuration file (TOML).
    #[arg(long, short = 'c', value_name = "PATH")]
    config: Option<PathBuf>,
}

#[derive(clap::Args)]
struct OverrideArgs {
    /// Client listener address (overrides server.listen).
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Session id prefix (overrides instance_id).
    #[arg(long, value_name = "ID")]
    instance_id: Option<String>,
    /// Log format (overrides log.format).
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    /// Log filter such as `info` or `mcp_edge=debug` (overrides log.level).
    #[arg(long, value_name = "FILTER")]
    log_level: Option<String>,
    /// Serve /metrics, /healthz and /readyz at this address (overrides admin.listen and turns
    /// the admin listener on, also in quick mode).
    #[arg(long, value_name = "ADDR")]
    admin_listen: Option<SocketAddr>,
}

impl OverrideArgs {
    fn into_overrides(self) -> Overrides {
        Overrides {
            instance_id: self.instance_id,
            server: self.listen.map(|l| ServerOverrides { listen: Some(l) }),
            log: (self.log_format.is_some() || self.log_level.is_some())
                .then_some(LogOverrides { format: self.log_format, level: self.log_level }),
            admin: self.admin_listen.map(|a| AdminOverrides { enabled: Some(true), listen: Some(a) }),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Guard { liveness_fd, mut argv } => {
            let program = argv.remove(0);
            ExitCode::from(mcp_edge::backend::guard::run(liveness_fd, program, argv).clamp(0, 255) as u8)
        }
        Command::Check { source, overrides } => {
            let source = Source::choose(source.config, None);
            match config::load(&source, &overrides.into_overrides()) {
                Ok(c) => {
                    // A backend that cannot be set up (an unset variable, a bad certificate)
                    // fails here, naming its key, rather than at the first session.
                    let metrics = mcp_edge::metrics::Metrics::new(prometheus::Registry::new());
                    for (name, b) in &c.backends {
                        if let Err(e) = mcp_edge::backend::Backend::from_config(name, b, &metrics) {
                            eprintln!("mcp-edge: invalid configuration: {e}");
                            return ExitCode::from(2);
                        }
                    }
                    print!("{}", c.to_toml());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("mcp-edge: invalid configuration: {e}");
                    ExitCode::from(2)
                }
            }
        }
        // One thread is plenty for one client on stdio, and many of these run at once.
        Command::ExampleServer { http: None } => {
            let rt =
                tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime starts");
            rt.block_on(mcp_edge::example::serve_stdio());
            ExitCode::SUCCESS
        }
        Command::ExampleServer { http: Some(addr) } => {
            init_logs(&config::LogConfig::default());
            runtime(0)
                .block_on(mcp_edge::example::serve_http(addr, shutdown_signal()))
                .map_or_else(|e| report(e.into()), |_| ExitCode::SUCCESS)
        }
        Command::Run { source, stdio, pool, upstream, upstream_kind, overrides } => {
            let source = match Source::choose_with(source.config, stdio, upstream, upstream_kind) {
                Source::QuickStdio { command, .. } => Source::QuickStdio { command, pool },
                other => other,
            };
            let overrides = overrides.into_overrides();
            let overrides_again = overrides.clone();
            let config = match config::load(&source, &overrides) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("mcp-edge: invalid configuration: {e}");
                    return ExitCode::from(2);
                }
            };
            let logs = init_logs(&config.log);
            raise_fd_limit();
            let reload = Reload { source, overrides: overrides_again, logs };
            runtime(config.server.worker_threads)
                .block_on(run(config, reload))
                .map_or_else(report, |_| ExitCode::SUCCESS)
        }
    }
}

/// Every connection and every stdio child costs descriptors: use all the system allows.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
            tracing::debug!(from = soft, to = hard, "Raised the open-file limit.");
        }
    }
}

fn report(e: anyhow::Error) -> ExitCode {
    eprintln!("mcp-edge: {e:#}");
    ExitCode::FAILURE
}

/// A runtime with `workers` worker threads; 0: one per CPU the process may use.
fn runtime(workers: usize) -> tokio::runtime::Runtime {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if workers > 0 {
        builder.worker_threads(workers);
    }
    builder.enable_all().build().expect("a tokio runtime starts")
}

/// What SIGHUP needs: where the configuration came from, the flags that override it, and the
/// log filter to change.
struct Reload {
    source: Source,
    overrides: Overrides,
    logs: LogHandle,
}

async fn run(config: config::Config, reload: Reload) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot locate the mcp-edge executable")?;
    let listen = config.server.listen;
    let level = config.log.level.clone();
    let gateway = match mcp_edge::Gateway::bind(config, exe).await {
        Ok(g) => g,
        // A backend that cannot be set up (see `check`).
        Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => anyhow::bail!("invalid configuration: {e}"),
        Err(e) => return Err(e).with_context(|| format!("cannot listen on {listen}")),
    };
    tokio::spawn(reload_on_sighup(gateway.reloader(), reload, level));
    gateway.run(shutdown_signal()).await;
    Ok(())
}

/// On every SIGHUP, reads the configuration file again and applies it: routes, backends,
/// limits and the log level for new work. An invalid file changes nothing.
async fn reload_on_sighup(gateway: mcp_edge::Reloader, reload: Reload, mut level: String) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else { return };
    while hup.recv().await.is_some() {
        let Source::File(path) = &reload.source else {
            tracing::info!(
                "Received SIGHUP; there is no configuration file to reload (quick mode or the built-in default)."
            );
            continue;
        };
        tracing::info!(file = %path.display(), "Received SIGHUP; reloading the configuration.");
        let config = match config::load(&reload.source, &reload.overrides) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("The configuration was not reloaded, the old one stays: {e}");
                continue;
            }
        };
        let new_level = config.log.level.clone();
        match gateway.reload(config) {
            Ok(restart) => {
                if !restart.is_empty() {
                    tracing::warn!(keys = ?restart, "These changed keys need a restart; they keep their old values.");
                }
                if new_level != level && std::env::var_os("RUST_LOG").is_none() {
                    match reload.logs.modify(|f| *f = tracing_subscriber::EnvFilter::new(&new_level)) {
                        Ok(()) => level = new_level,
                        Err(e) => tracing::warn!("The log level could not change: {e}"),
                    }
                }
                tracing::info!(
                    "The configuration was reloaded; new sessions use it, live sessions keep their backend."
                );
            }
            Err(e) => tracing::error!("The configuration was not reloaded, the old one stays: {e}"),
        }
    }
}

/// Resolves on the first SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler installs");
    // Cancel-safe: signal streams keep pending signals.
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!(signal = name, "Received a shutdown signal.");
}

type LogHandle = tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>;

/// Logs to stderr; the returned handle changes the filter (SIGHUP with a new `log.level`).
fn init_logs(log: &config::LogConfig) -> LogHandle {
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::{fmt, reload, EnvFilter};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&log.level));
    let (filter, handle) = reload::Layer::new(filter);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let layer = fmt::layer().with_ansi(ansi).with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(filter);
    match log.format {
        LogFormat::Json => registry.with(layer.json().flatten_event(true)).init(),
        LogFormat::Text => registry.with(layer).init(),
    }
    handle
}
