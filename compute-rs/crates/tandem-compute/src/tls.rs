//! TLS on the gRPC port (rustls with the ring provider), optionally mTLS,
//! with certificate rotation: the server accepts TLS itself (tokio-rustls)
//! and hands tonic finished TLS streams, so every new connection is
//! accepted with the [`ServerConfig`] as last loaded ([`crate::reload`]);
//! connections already open keep the certificate they were made with.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::RootCertStore;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::TcpIncoming;

use crate::metrics::Metrics;
use crate::reload::{self, Reloading, Source};

/// How long a client may take over its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// TLS handshakes under way at once; past it the server stops accepting
/// connections until one ends.
pub const MAX_HANDSHAKES: usize = 256;

/// The PEM files of TLS on the gRPC port (`--tls-cert`, `--tls-key`,
/// `--tls-client-ca`), each re-read when it changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The server's certificate chain, leaf first (PEM `CERTIFICATE` blocks).
    pub cert: PathBuf,
    /// Its private key (PEM PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// mTLS: clients must present a certificate that chains to one of these
    /// CA certificates (PEM); `None` = no client certificates asked for.
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    fn sources(&self) -> Vec<Source> {
        let mut s = vec![
            Source { flag: "--tls-cert", path: self.cert.clone() },
            Source { flag: "--tls-key", path: self.key.clone() },
        ];
        if let Some(ca) = &self.client_ca {
            s.push(Source { flag: "--tls-client-ca", path: ca.clone() });
        }
        s
    }

    /// Reads and checks the files once (as [`crate::serve`] does before it
    /// serves): the SHA-256 fingerprint (hex) of the leaf certificate, or an
    /// error naming the flag and the file.
    pub fn check(&self) -> Result<String, String> {
        let sources = self.sources();
        let contents = sources.iter().map(reload::read).collect::<Result<Vec<_>, _>>()?;
        let loaded = load(&sources, &contents)?;
        Ok(loaded.fingerprint)
    }
}

/// One loaded configuration.
#[derive(Debug)]
pub(crate) struct Loaded {
    pub config: Arc<ServerConfig>,
    pub fingerprint: String,
}

/// Builds the rustls config from the files' contents (cert, key, then the
/// client CA if any, as [`TlsFiles::sources`] orders them).
fn load(sources: &[Source], contents: &[Vec<u8>]) -> Result<Loaded, String> {
    let name = |i: usize| sources.get(i).map(|s| format!("{} {}", s.flag, s.path.display())).unwrap_or_default();
    let (cert_pem, key_pem) = match contents {
        [c, k, ..] => (c, k),
        _ => return Err("TLS needs a certificate and a key".to_owned()),
    };
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", name(0)))?;
    let Some(leaf) = certs.first() else {
        return Err(format!("{}: no PEM CERTIFICATE block", name(0)));
    };
    let fingerprint = hex(&Sha256::digest(leaf));
    // Never echo key material: the error names the file and the kind of fault.
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => format!("{}: no PEM PRIVATE KEY block", name(1)),
        e => format!("{}: not a PEM private key ({e})", name(1)),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let builder = match contents.get(2) {
        None => builder.with_no_client_auth(),
        Some(ca_pem) => {
            let mut roots = RootCertStore::empty();
            for ca in CertificateDer::pem_slice_iter(ca_pem) {
                let ca = ca.map_err(|e| format!("{}: {e}", name(2)))?;
                roots.add(ca).map_err(|e| format!("{}: {e}", name(2)))?;
            }
            if roots.is_empty() {
                return Err(format!("{}: no PEM CERTIFICATE block", name(2)));
            }
            // Clients without a certificate, or with one from another CA, fail
            // the handshake.
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("{}: {e}", name(2)))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => {
            format!("{} does not match the certificate of {}", name(1), name(0))
        }
        e => format!("{} / {}: {e}", name(0), name(1)),
    })?;
    // gRPC is HTTP/2 only; clients that offer ALPN (grpc-go requires it) get h2.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Loaded { config: Arc::new(config), fingerprint })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Loads `files` (an error if they are unusable) and watches them.
pub(crate) fn watch(files: &TlsFiles, metrics: Metrics) -> Result<Reloading<Loaded>, String> {
    let sources = files.sources();
    let s = sources.clone();
    let loaded = reload::watch("tls", sources, metrics, move |contents| {
        let loaded = load(&s, contents)?;
        tracing::info!(cert_sha256 = %loaded.fingerprint, "TLS certificate loaded");
        Ok(loaded)
    })?;
    Ok(loaded)
}

/// The TLS connections of `tcp`: each accepted TCP connection's handshake
/// runs on its own task (a slow client holds up no one) with the config as
/// last loaded, bounded by [`HANDSHAKE_TIMEOUT`] and [`MAX_HANDSHAKES`]. A
/// failed handshake (a plaintext client, no or a wrong client certificate)
/// is logged with the peer and counted; it never reaches tonic. Accepting
/// stops (and the listener closes) once tonic drops the stream.
pub(crate) fn incoming(
    tcp: TcpIncoming,
    tls: Reloading<Loaded>,
    metrics: Metrics,
) -> ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        let mut tcp = std::pin::pin!(tcp);
        let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
        loop {
            let permit = tokio::select! {
                p = handshakes.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
                () = tx.closed() => return,
            };
            let stream = tokio::select! {
                s = tcp.next() => match s {
                    Some(Ok(s)) => s,
                    Some(Err(e)) => {
                        // E.g. out of file descriptors: do not spin.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                    None => return,
                },
                () = tx.closed() => return,
            };
            let acceptor = TlsAcceptor::from(tls.current().config.clone());
            let (tx, metrics) = (tx.clone(), metrics.clone());
            tokio::spawn(async move {
                let _permit = permit;
                let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(s)) => {
                        let _ = tx.send(Ok(s)).await;
                    }
                    Ok(Err(e)) => {
                        metrics.tls_handshake_failures.inc();
                        tracing::info!(peer, error = %e, "TLS handshake failed");
                    }
                    Err(_) => {
                        metrics.tls_handshake_failures.inc();
                        tracing::info!(
                            peer,
                            timeout = %crate::duration::format(HANDSHAKE_TIMEOUT),
                            "TLS handshake timed out"
                        );
                    }
                }
            });
        }
    });
    ReceiverStream::new(rx)
}
