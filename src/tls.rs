//! TLS termination for a listener: rustls with the `ring` provider, TLS 1.2 and 1.3 only,
//! ALPN `h2` and `http/1.1`. The certificate chain and key are PEM files (parsed with
//! `rustls-pki-types`) read at start and again on SIGHUP; a reload swaps them for new
//! handshakes while connections already open keep theirs.

use std::sync::{Arc, RwLock};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::TlsServerConfig;

/// The certificate a listener presents, swappable at run time.
#[derive(Debug)]
pub struct Certificates {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

/// Reads a PEM certificate chain and its private key, and checks that they belong together.
fn load(config: &TlsServerConfig) -> Result<Arc<CertifiedKey>, String> {
    let cert_file = config.cert_file.display();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&config.cert_file)
        .map_err(|e| format!("cannot read {cert_file}: {e}"))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{cert_file} is not a PEM certificate chain: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{cert_file} holds no certificate"));
    }
    let key = PrivateKeyDer::from_pem_file(&config.key_file)
        .map_err(|e| format!("{} is not a PEM private key: {e}", config.key_file.display()))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| format!("{}: unsupported private key: {e}", config.key_file.display()))?;
    let certified = CertifiedKey::new(certs, signer);
    certified.keys_match().map_err(|e| format!("{cert_file} and {}: {e}", config.key_file.display()))?;
    Ok(Arc::new(certified))
}

impl Certificates {
    /// Loads the files and builds the acceptor that presents them.
    pub fn acceptor(config: &TlsServerConfig) -> Result<(TlsAcceptor, Arc<Certificates>), String> {
        let certs = Arc::new(Certificates { current: RwLock::new(load(config)?) });
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut server = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_cert_resolver(certs.clone());
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok((TlsAcceptor::from(Arc::new(server)), certs))
    }

    /// Reads the files again; new handshakes present them. On failure the old certificate
    /// stays.
    pub fn reload(&self, config: &TlsServerConfig) -> Result<(), String> {
        let fresh = load(config)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(())
    }
}
