//! Layering: built-in defaults ⊕ file ⊕ `MCP_EDGE_*` environment ⊕ command-line flags.

use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::Serialize;

use super::{Config, Invalid, DEFAULT_TOML};

/// Where the base configuration comes from.
#[derive(Clone, Debug)]
pub enum Source {
    /// A file given with `--config`, or `./gateway.toml` when it exists.
    File(PathBuf),
    /// The shipped default (the embedded `gateway.toml`).
    BuiltIn,
    /// TOML text given directly, no file read (the same keys as a file).
    Text(String),
    /// Quick mode: one stdio command served at `/mcp` (from a pool of this many children when
    /// given), no file read.
    QuickStdio { command: String, pool: Option<usize> },
    /// Quick mode: one HTTP upstream served at `/mcp`, no file read.
    QuickUpstream { url: String, kind: UpstreamKind },
}

/// How a quick-mode upstream speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum UpstreamKind {
    /// Streamable HTTP, falling back to legacy HTTP+SSE when the upstream refuses it.
    Auto,
    /// Streamable HTTP only.
    Http,
    /// Legacy HTTP+SSE (2024-11-05): the URL is the SSE endpoint.
    Sse,
}

/// Command-line flags; each set flag overrides every other layer.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerOverrides>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<LogOverrides>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin: Option<AdminOverrides>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct AdminOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<std::net::SocketAddr>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ServerOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<std::net::SocketAddr>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct LogOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<super::LogFormat>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
}

/// A configuration that could not be loaded, naming where the problem is.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{origin}: {source}")]
    Extract { origin: String, source: Box<figment::Error> },
    #[error("{origin}: {source}")]
    Invalid { origin: String, source: Invalid },
    #[error("quick mode: `--stdio {command}`: {reason}")]
    Quick { command: String, reason: String },
}

fn origin(source: &Source) -> String {
    match source {
        Source::File(p) => p.display().to_string(),
        Source::BuiltIn => "built-in gateway.toml".into(),
        Source::Text(_) => "TOML text".into(),
        Source::QuickStdio { .. } | Source::QuickUpstream { .. } => "quick mode".into(),
    }
}

/// Loads, layers and validates.
pub fn load(source: &Source, overrides: &Overrides) -> Result<Config, LoadError> {
    let base = match source {
        Source::File(path) => Figment::from(Toml::file_exact(path)),
        Source::BuiltIn => Figment::from(Toml::string(DEFAULT_TOML)),
        Source::Text(text) => Figment::from(Toml::string(text)),
        Source::QuickStdio { command, pool } => Figment::from(Serialized::defaults(quick(command, *pool)?)),
        Source::QuickUpstream { url, kind } => Figment::from(Serialized::defaults(quick_upstream(url, *kind))),
    };
    let figment = base.merge(Env::prefixed("MCP_EDGE_").split("__")).merge(Serialized::defaults(overrides));
    let config: Config =
        figment.extract().map_err(|e| LoadError::Extract { origin: origin(source), source: Box::new(e) })?;
    config.validate().map_err(|source_err| LoadError::Invalid { origin: origin(source), source: source_err })?;
    Ok(config)
}

/// The default path checked when neither `--config` nor quick-mode flags are given.
pub fn default_source() -> Source {
    let local = Path::new("gateway.toml");
    if local.is_file() {
        Source::File(local.to_path_buf())
    } else {
        Source::BuiltIn
    }
}

fn quick(command: &str, pool: Option<usize>) -> Result<toml::Value, LoadError> {
    let words =
        shell_words::split(command).map_err(|e| LoadError::Quick { command: command.into(), reason: e.to_string() })?;
    let Some((program, args)) = words.split_first() else {
        return Err(LoadError::Quick { command: command.into(), reason: "empty command".into() });
    };
    let mut backend = toml::map::Map::new();
    backend.insert("kind".into(), "stdio".into());
    backend.insert("command".into(), program.clone().into());
    backend.insert("args".into(), toml::Value::Array(args.iter().cloned().map(Into::into).collect()));
    if let Some(size) = pool {
        let mut p = toml::map::Map::new();
        p.insert("size".into(), (size as i64).into());
        backend.insert("pool".into(), p.into());
    }
    Ok(one_route("stdio", backend))
}

fn quick_upstream(url: &str, kind: UpstreamKind) -> toml::Value {
    let mut backend = toml::map::Map::new();
    backend.insert("kind".into(), if kind == UpstreamKind::Sse { "sse" } else { "http" }.into());
    backend.insert("url".into(), url.into());
    if kind == UpstreamKind::Auto {
        backend.insert("sse_fallback".into(), true.into());
    }
    one_route("upstream", backend)
}

/// A configuration of one route, `/mcp`, served by one backend.
fn one_route(name: &str, backend: toml::map::Map<String, toml::Value>) -> toml::Value {
    let mut route = toml::map::Map::new();
    route.insert("path".into(), "/mcp".into());
    route.insert("backend".into(), name.into());
    let mut backends = toml::map::Map::new();
    backends.insert(name.into(), backend.into());
    let mut root = toml::map::Map::new();
    root.insert("routes".into(), toml::Value::Array(vec![route.into()]));
    root.insert("backends".into(), backends.into());
    // Quick mode opens the admin listener only when asked (`--admin-listen`).
    let mut admin = toml::map::Map::new();
    admin.insert("enabled".into(), false.into());
    root.insert("admin".into(), admin.into());
    root.into()
}

impl Source {
    /// Resolves what the CLI was given: `--config`, quick mode, `./gateway.toml`, or built-in.
    pub fn choose(config: Option<PathBuf>, stdio: Option<String>) -> Source {
        Source::choose_with(config, stdio, None, UpstreamKind::Auto)
    }

    /// As [`Source::choose`], with quick mode's `--upstream` too.
    pub fn choose_with(
        config: Option<PathBuf>,
        stdio: Option<String>,
        upstream: Option<String>,
        kind: UpstreamKind,
    ) -> Source {
        match (config, stdio, upstream) {
            (Some(path), _, _) => Source::File(path),
            (None, Some(command), _) => Source::QuickStdio { command, pool: None },
            (None, None, Some(url)) => Source::QuickUpstream { url, kind },
            (None, None, None) => default_source(),
        }
    }
}
