//! rustls configuration for both sides: verifying upstreams and serving monitors.
//!
//! Uses the `ring` provider explicitly so that no process-wide default has to be installed.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A TLS file or setting that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A PEM file holds nothing usable.
    #[error("{path}: {problem}")]
    Pem {
        /// The file.
        path: String,
        /// What is missing or wrong.
        problem: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration rejected: {0}")]
    Rustls(#[from] rustls::Error),
    /// The name to verify is not a valid DNS name or IP address.
    #[error("{0:?} is not a valid TLS server name")]
    ServerName(String),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let display = path.display().to_string();
    let pem = std::fs::read(path).map_err(|source| TlsError::Read {
        path: display.clone(),
        source,
    })?;
    let certs = rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: display.clone(),
            problem: format!("malformed PEM: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: display,
            problem: "no CERTIFICATE block found".into(),
        });
    }
    Ok(certs)
}

/// Client config for upstreams: the CA bundle if given, else the Mozilla roots; ALPN `h2`.
pub(crate) fn client_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            for cert in read_certs(path)? {
                roots.add(cert)?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Server config for the monitor-facing listener; ALPN `h2`. With `client_ca`, every monitor
/// must present a certificate that chains to it (mutual TLS).
pub(crate) fn server_config(
    cert_file: &Path,
    key_file: &Path,
    client_ca: Option<&Path>,
) -> Result<rustls::ServerConfig, TlsError> {
    let certs = read_certs(cert_file)?;
    let display = key_file.display().to_string();
    let pem = std::fs::read(key_file).map_err(|source| TlsError::Read {
        path: display.clone(),
        source,
    })?;
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut &pem[..])
        .map_err(|e| TlsError::Pem {
            path: display.clone(),
            problem: format!("malformed PEM: {e}"),
        })?
        .ok_or_else(|| TlsError::Pem {
            path: display,
            problem: "no PRIVATE KEY block found".into(),
        })?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in read_certs(ca)? {
                roots.add(cert)?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            )
            .build()
            .map_err(|e| TlsError::Pem {
                path: ca.display().to_string(),
                problem: format!("unusable as a client CA: {e}"),
            })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// The monitor a verified client certificate names: its first DNS subject alternative name,
/// else its subject's common name. `None` when it names none (or cannot be read), which the
/// caller refuses.
pub(crate) fn monitor_of_certificate(der: &[u8]) -> Option<String> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let from_san = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .and_then(|san| {
            san.value.general_names.iter().find_map(|name| match name {
                GeneralName::DNSName(dns) => Some((*dns).to_owned()),
                _ => None,
            })
        });
    from_san.or_else(|| {
        cert.subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned)
    })
}
