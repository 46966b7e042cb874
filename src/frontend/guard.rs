//! Origin and Host checks (DNS-rebinding protection), applied to every request on a route.

use http::HeaderMap;

use crate::config::ServerConfig;
use crate::error::GatewayError;

/// Decides which Origin and Host header values a listener accepts.
#[derive(Debug, Clone)]
pub struct OriginGuard {
    /// The listener is on a loopback address: foreign Host values are refused.
    loopback_bind: bool,
    allowed_hosts: Vec<String>,
    allowed_origins: Vec<String>,
    any_origin: bool,
}

fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Splits `host[:port]` (with `[v6]` literals) and returns the host part.
fn host_part(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match authority.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) && !h.contains(':') => h,
        _ => authority,
    }
}

impl OriginGuard {
    pub fn new(server: &ServerConfig) -> Self {
        OriginGuard {
            loopback_bind: server.listen.ip().is_loopback(),
            allowed_hosts: server.allowed_hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
            allowed_origins: server
                .allowed_origins
                .iter()
                .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
                .collect(),
            any_origin: server.allowed_origins.iter().any(|o| o == "*"),
        }
    }

    pub fn check(&self, headers: &HeaderMap, uri_host: Option<&str>) -> Result<(), GatewayError> {
        if self.loopback_bind {
            let host = headers.get(http::header::HOST).and_then(|h| h.to_str().ok()).or(uri_host);
            if let Some(host) = host {
                let part = host_part(host);
                let ok = is_loopback_host(part)
                    || self.allowed_hosts.iter().any(|a| a.eq_ignore_ascii_case(host) || a.eq_ignore_ascii_case(part));
                if !ok {
                    return Err(GatewayError::HostForbidden(host.into()));
                }
            }
        }
        if let Some(origin) = headers.get(http::header::ORIGIN) {
            let origin = origin.to_str().unwrap_or("").trim_end_matches('/').to_ascii_lowercase();
            let authority = origin.split_once("://").map(|(_, a)| a).unwrap_or("");
            let ok = self.any_origin
                || self.allowed_origins.contains(&origin)
                || (!authority.is_empty() && is_loopback_host(host_part(authority)));
            if !ok {
                return Err(GatewayError::OriginForbidden(origin));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn loopback_bind_refuses_foreign_hosts_and_origins() {
        let g = OriginGuard::new(&ServerConfig::default());
        assert!(g.check(&headers(&[("host", "localhost:8080")]), None).is_ok());
        assert!(g.check(&headers(&[("host", "127.0.0.1:1")]), None).is_ok());
        assert!(g.check(&headers(&[("host", "[::1]:8080")]), None).is_ok());
        assert!(g.check(&headers(&[("host", "evil.example.com")]), None).is_err());
        assert!(g.check(&headers(&[("host", "localhost"), ("origin", "http://localhost:3000")]), None).is_ok());
        assert!(g.check(&headers(&[("host", "localhost"), ("origin", "https://evil.example")]), None).is_err());
        assert!(g.check(&headers(&[("host", "localhost"), ("origin", "null")]), None).is_err());
    }

    #[test]
    fn configured_values_are_allowed() {
        let mut c = ServerConfig {
            allowed_hosts: vec!["mcp.internal".into()],
            allowed_origins: vec!["https://app.example.com".into()],
            ..ServerConfig::default()
        };
        let g = OriginGuard::new(&c);
        assert!(g.check(&headers(&[("host", "mcp.internal:8080")]), None).is_ok());
        assert!(g.check(&headers(&[("host", "MCP.Internal")]), None).is_ok(), "host names ignore case");
        assert!(g.check(&headers(&[("host", "[::1]:8080")]), None).is_ok());
        assert!(g.check(&headers(&[("host", "mcp.internal.evil:8080")]), None).is_err());
        assert!(g.check(&headers(&[("host", "localhost"), ("origin", "https://app.example.com")]), None).is_ok());
        c.listen = "0.0.0.0:8080".parse().unwrap();
        assert!(OriginGuard::new(&c).check(&headers(&[("host", "anything.example")]), None).is_ok());
    }
}
