//! HTTPS for the admin API (`[admin.tls]`): the rustls server config from the PEM files, a
//! listener that completes TLS handshakes beside its accept loop, and the client side that
//! `sluice plugin load` uses to reach an HTTPS admin API.
//!
//! Uses the `ring` provider explicitly, as the proxy's TLS does, so no process-wide default has
//! to be installed. Errors are `io::Error`s whose message names the file and what is wrong.
//! This module only moves bytes; what a request may do is [`crate::guard`]'s business.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use sluice_config::AdminTls;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// How long a client has to complete its TLS handshake: a peer that connects and stalls must
/// not hold a handshake slot for longer.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes in progress at once; more connections wait in the kernel's accept queue, so
/// stalled peers cannot make the listener spawn without bound.
const MAX_HANDSHAKES: usize = 64;

/// Completed handshakes waiting for the HTTP server to take them.
const READY_QUEUE: usize = 16;

/// The admin API speaks HTTP/1.1 (WebSocket upgrades included).
const ALPN: &[u8] = b"http/1.1";

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

fn read_certs(path: &Path) -> io::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| invalid(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(invalid(format!(
            "{}: no CERTIFICATE block found",
            path.display()
        )));
    }
    Ok(certs)
}

/// The acceptor for `[admin.tls]`: its certificate chain and key, ALPN `http/1.1`.
pub(crate) fn acceptor(tls: &AdminTls) -> io::Result<TlsAcceptor> {
    let certs = read_certs(&tls.cert_file)?;
    let key = PrivateKeyDer::from_pem_file(&tls.key_file).map_err(|e| {
        invalid(format!(
            "{}: no usable PRIVATE KEY block: {e}",
            tls.key_file.display()
        ))
    })?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
        .map_err(|e| invalid(format!("admin.tls: TLS configuration rejected: {e}")))?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A client config that trusts the CAs in the PEM file `ca`, or the Mozilla roots without one.
pub fn client_config(ca: Option<&Path>) -> io::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            for cert in read_certs(path)? {
                roots
                    .add(cert)
                    .map_err(|e| invalid(format!("{}: {e}", path.display())))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(format!("TLS configuration rejected: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// Opens TLS over `tcp` to an HTTPS admin API, verifying that its certificate names `host` (a
/// DNS name or an IP address, without port or brackets) and chains to `ca` (or the Mozilla
/// roots).
pub async fn connect(
    tcp: TcpStream,
    host: &str,
    ca: Option<&Path>,
) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let name = ServerName::try_from(host.to_owned())
        .map_err(|_| invalid(format!("{host:?} is not a valid TLS server name")))?;
    let connector = TlsConnector::from(Arc::new(client_config(ca)?));
    connector
        .connect(name, tcp)
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("TLS handshake failed: {e}")))
}

/// A listener whose connections are TLS streams with the handshake done. Handshakes run in
/// tasks of their own (at most [`MAX_HANDSHAKES`], each for at most [`HANDSHAKE_TIMEOUT`]), so a
/// slow or hostile peer does not hold up the others.
pub(crate) struct TlsListener {
    local: SocketAddr,
    ready: mpsc::Receiver<(tokio_rustls::server::TlsStream<TcpStream>, SocketAddr)>,
    accepting: JoinHandle<()>,
}

impl TlsListener {
    /// Starts accepting on `listener`, bound at `local`.
    pub(crate) fn new(listener: TcpListener, acceptor: TlsAcceptor, local: SocketAddr) -> Self {
        let (sender, ready) = mpsc::channel(READY_QUEUE);
        Self {
            local,
            ready,
            accepting: tokio::spawn(accept(listener, acceptor, sender)),
        }
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(connection) => connection,
            // The accept loop ends only when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}

async fn accept(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    ready: mpsc::Sender<(tokio_rustls::server::TlsStream<TcpStream>, SocketAddr)>,
) {
    let slots = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: wait instead of spinning.
                tracing::warn!(%error, "admin listener cannot accept");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let (acceptor, ready) = (acceptor.clone(), ready.clone());
        tokio::spawn(async move {
            let _slot = slot;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    let _ = ready.send((stream, peer)).await;
                }
                Ok(Err(error)) => tracing::debug!(%peer, %error, "admin TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "admin TLS handshake timed out"),
            }
        });
    }
}
