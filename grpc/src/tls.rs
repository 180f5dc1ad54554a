//! TLS for both ends, on rustls with the ring provider: a server's identity
//! and, for mutual TLS, the authority its clients' certificates must chain
//! to; a client's trusted authority and, for mutual TLS, its identity.
//! Certificates and keys are read from PEM.

use std::fmt;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// Why a TLS configuration could not be made: which PEM input or setting,
/// and rustls's reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsError(String);

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsError {}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certificates(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certificates = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| TlsError(format!("{what}: not PEM certificates: {error}")))?;
    if certificates.is_empty() {
        return Err(TlsError(format!("{what}: no certificate in the PEM")));
    }
    Ok(certificates)
}

fn private_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem)
        .map_err(|error| TlsError(format!("the private key: not a PEM private key: {error}")))
}

fn roots(pem: &[u8], what: &str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for certificate in certificates(pem, what)? {
        roots
            .add(certificate)
            .map_err(|error| TlsError(format!("{what}: {error}")))?;
    }
    Ok(roots)
}

/// A server's TLS: its certificate chain and private key, and, for mutual
/// TLS, the authority every client's certificate must chain to.
///
/// ```no_run
/// # fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use workerbus_grpc::{GrpcServer, ServerTls};
///
/// let tls = ServerTls::new(&std::fs::read("server.pem")?, &std::fs::read("server.key")?)?
///     .client_ca(&std::fs::read("clients-ca.pem")?)?; // mutual TLS
/// let server = GrpcServer::new().tls(tls);
/// # drop(server); Ok(()) }
/// ```
#[derive(Clone)]
pub struct ServerTls {
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
    client_ca: Option<Arc<RootCertStore>>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("certificates", &self.chain.len())
            .field("mutual", &self.client_ca.is_some())
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// The server's certificate chain (leaf first) and private key, in PEM.
    pub fn new(chain_pem: &[u8], key_pem: &[u8]) -> Result<ServerTls, TlsError> {
        let tls = ServerTls {
            chain: certificates(chain_pem, "the server's certificate chain")?,
            key: Arc::new(private_key(key_pem)?),
            client_ca: None,
        };
        tls.config()?;
        Ok(tls)
    }

    /// Mutual TLS: a client must present a certificate that chains to one
    /// in `ca_pem`, or its connection is refused during the handshake.
    pub fn client_ca(mut self, ca_pem: &[u8]) -> Result<ServerTls, TlsError> {
        self.client_ca = Some(Arc::new(roots(ca_pem, "the clients' authority")?));
        self.config()?;
        Ok(self)
    }

    pub(crate) fn config(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|error| TlsError(format!("the server's TLS versions: {error}")))?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(roots) => {
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::clone(roots),
                    provider(),
                )
                .build()
                .map_err(|error| TlsError(format!("the clients' authority: {error}")))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|error| TlsError(format!("the server's certificate and key: {error}")))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }
}

/// A client's TLS: the authority the server's certificate must chain to,
/// and, for mutual TLS, the client's own certificate chain and key. Used
/// for `https://` endpoints.
///
/// ```no_run
/// # fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use workerbus_grpc::{ClientTls, GrpcDriver};
///
/// let tls = ClientTls::new(&std::fs::read("ca.pem")?)?
///     .identity(&std::fs::read("client.pem")?, &std::fs::read("client.key")?)?;
/// let driver = GrpcDriver::new("https://embedder.internal:50051").tls(tls);
/// # drop(driver); Ok(()) }
/// ```
#[derive(Clone)]
pub struct ClientTls {
    roots: Arc<RootCertStore>,
    identity: Option<(Vec<CertificateDer<'static>>, Arc<PrivateKeyDer<'static>>)>,
    server_name: Option<ServerName<'static>>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("authorities", &self.roots.len())
            .field("mutual", &self.identity.is_some())
            .field("server_name", &self.server_name)
            .finish()
    }
}

impl ClientTls {
    /// Trusts servers whose certificate chains to one in `ca_pem`.
    pub fn new(ca_pem: &[u8]) -> Result<ClientTls, TlsError> {
        Ok(ClientTls {
            roots: Arc::new(roots(ca_pem, "the servers' authority")?),
            identity: None,
            server_name: None,
        })
    }

    /// Mutual TLS: presents this certificate chain (leaf first) and key.
    pub fn identity(mut self, chain_pem: &[u8], key_pem: &[u8]) -> Result<ClientTls, TlsError> {
        let chain = certificates(chain_pem, "the client's certificate chain")?;
        let key = Arc::new(private_key(key_pem)?);
        self.identity = Some((chain, key));
        self.config()?;
        Ok(self)
    }

    /// The name the server's certificate must carry, if not the endpoint's
    /// host (e.g. connecting by IP address to a certificate for a name).
    pub fn server_name(mut self, name: &str) -> Result<ClientTls, TlsError> {
        let name = ServerName::try_from(name.to_owned())
            .map_err(|error| TlsError(format!("the server name {name:?}: {error}")))?;
        self.server_name = Some(name);
        Ok(self)
    }

    /// The name to verify for a server at `host`.
    pub(crate) fn name_for(&self, host: &str) -> Result<ServerName<'static>, TlsError> {
        if let Some(name) = &self.server_name {
            return Ok(name.clone());
        }
        ServerName::try_from(host.to_owned())
            .map_err(|error| TlsError(format!("the host {host:?} as a server name: {error}")))
    }

    pub(crate) fn config(&self) -> Result<Arc<ClientConfig>, TlsError> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|error| TlsError(format!("the client's TLS versions: {error}")))?
            .with_root_certificates(Arc::clone(&self.roots));
        let mut config = match &self.identity {
            None => builder.with_no_client_auth(),
            Some((chain, key)) => builder
                .with_client_auth_cert(chain.clone(), key.clone_key())
                .map_err(|error| TlsError(format!("the client's certificate and key: {error}")))?,
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }
}
