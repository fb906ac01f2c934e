//! TLS server configuration: rustls with ALPN h2 and http/1.1, TLS 1.2 and
//! 1.3 only, the server's cipher-suite order, resumption by session cache and
//! tickets, and a certificate resolver whose key can be replaced in place, so
//! a renewed certificate needs no new listener and open connections are
//! untouched. Also the one place a certificate chain and key are read from
//! PEM ([`load_pem_pair`]): at config load, by the certificate watcher and by
//! the demo.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Sessions remembered for resumption (~ a few hundred bytes each).
const SESSION_CACHE: usize = 16 * 1024;

/// A certificate and key that failed to load into rustls.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(String);

/// A certificate chain and its private key, parsed from PEM.
pub struct PemPair {
    /// The chain, leaf first, as in the file.
    pub certs: Vec<CertificateDer<'static>>,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PrivateKeyDer<'static>,
}

/// Which file a [`PemError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PemFile {
    /// The certificate chain.
    Cert,
    /// The private key.
    Key,
    /// Trust roots for verifying a backend (`ca_file`).
    Ca,
}

impl PemFile {
    fn noun(self) -> &'static str {
        match self {
            PemFile::Cert => "certificate file",
            PemFile::Key => "key file",
            PemFile::Ca => "CA file",
        }
    }
}

/// Why a certificate chain or key did not load from PEM. Display is one line
/// naming the file; [`PemError::file`] says which of the pair it is.
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    /// The file could not be read.
    #[error("cannot read {} {}: {source}", file.noun(), path.display())]
    Read {
        /// Which file of the pair.
        file: PemFile,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The certificate file is not valid PEM.
    #[error("cannot parse certificate file {}: {source}", path.display())]
    Cert {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: pem::Error,
    },
    /// The certificate file is PEM but holds no certificate.
    #[error("certificate file {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)", path.display())]
    NoCert {
        /// The file.
        path: PathBuf,
    },
    /// A certificate in a CA file cannot serve as a trust root.
    #[error("CA file {} holds a certificate that cannot be a trust root: {why}", path.display())]
    BadRoot {
        /// The file.
        path: PathBuf,
        /// Why, as rustls says it.
        why: String,
    },
    /// The key file holds no private key, or not a readable one.
    #[error("cannot parse key file {}: {}", path.display(), key_why(source))]
    Key {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: pem::Error,
    },
}

impl PemError {
    /// The file of the pair this error is about.
    pub fn file(&self) -> PemFile {
        match self {
            PemError::Read { file, .. } => *file,
            PemError::Cert { .. } | PemError::NoCert { .. } => PemFile::Cert,
            PemError::BadRoot { .. } => PemFile::Ca,
            PemError::Key { .. } => PemFile::Key,
        }
    }
}

/// pki-types says only "no items found" when a key file has no key.
fn key_why(e: &pem::Error) -> String {
    match e {
        pem::Error::NoItemsFound => "no PEM private key (PKCS#8, RSA or EC) found".to_string(),
        e => e.to_string(),
    }
}

/// Reads and parses a PEM certificate chain and private key: the certificate
/// first, then the key, so a problem with both reports the certificate's.
///
/// # Errors
/// A file cannot be read, is not PEM, the chain is empty, or the key file
/// holds no private key.
pub fn load_pem_pair(cert_path: &Path, key_path: &Path) -> Result<PemPair, PemError> {
    let read = |file, path: &Path| {
        std::fs::read(path).map_err(|source| PemError::Read {
            file,
            path: path.to_path_buf(),
            source,
        })
    };
    let certs = parse_certs(&read(PemFile::Cert, cert_path)?, cert_path)?;
    let key = parse_key(&read(PemFile::Key, key_path)?, key_path)?;
    Ok(PemPair { certs, key })
}

/// [`load_pem_pair`] on PEM text already in memory; the paths only name it
/// in errors.
///
/// # Errors
/// As [`load_pem_pair`], except reading.
pub fn parse_pem_pair(
    cert_pem: &[u8],
    cert_path: &Path,
    key_pem: &[u8],
    key_path: &Path,
) -> Result<PemPair, PemError> {
    let certs = parse_certs(cert_pem, cert_path)?;
    let key = parse_key(key_pem, key_path)?;
    Ok(PemPair { certs, key })
}

/// Reads the trust roots in a PEM file (`[[backend]] ca_file`): one or more
/// certificates, each usable as a root.
///
/// # Errors
/// The file cannot be read, is not PEM, holds no certificate, or holds one
/// rustls cannot use as a trust root.
pub fn load_ca(path: &Path) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let pem = std::fs::read(path).map_err(|source| PemError::Read {
        file: PemFile::Ca,
        path: path.to_path_buf(),
        source,
    })?;
    let certs = parse_certs(&pem, path)?;
    let mut roots = rustls::RootCertStore::empty();
    for c in &certs {
        roots.add(c.clone()).map_err(|e| PemError::BadRoot {
            path: path.to_path_buf(),
            why: e.to_string(),
        })?;
    }
    Ok(certs)
}

fn parse_certs(pem: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| PemError::Cert {
            path: path.to_path_buf(),
            source,
        })?;
    if certs.is_empty() {
        return Err(PemError::NoCert {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

fn parse_key(pem: &[u8], path: &Path) -> Result<PrivateKeyDer<'static>, PemError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|source| PemError::Key {
        path: path.to_path_buf(),
        source,
    })
}

/// aws-lc-rs (rustls's default provider; its x25519 took half of ring's time
/// in a handshake-bound profile) with its own suites, AES-128-GCM
/// first in each protocol version (the order of Mozilla's "intermediate"
/// profile, and Go's). Both AES-GCM sizes are strong; the difference is the
/// hash: a TLS 1.3 handshake runs a few dozen HMACs in its key schedule, and
/// SHA-256 runs on the CPU's SHA extensions where SHA-384 has none (its
/// compression was 10% of that profile). AES-128 is also the cheaper bulk
/// cipher. Key exchange keeps X25519, P-256 and P-384; the post-quantum
/// hybrid aws-lc-rs would add costs more per handshake and is left to a
/// deliberate decision.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::aws_lc_rs::{cipher_suite::*, kx_group};
    let mut p = rustls::crypto::aws_lc_rs::default_provider();
    p.cipher_suites = vec![
        TLS13_AES_128_GCM_SHA256,
        TLS13_AES_256_GCM_SHA384,
        TLS13_CHACHA20_POLY1305_SHA256,
        TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ];
    p.kx_groups = vec![kx_group::X25519, kx_group::SECP256R1, kx_group::SECP384R1];
    Arc::new(p)
}

/// Turns a PEM-parsed chain and key into a rustls `CertifiedKey`, checking
/// that the key belongs to the certificate.
///
/// # Errors
/// The key type is unsupported or does not match the certificate.
pub fn certified_key(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<CertifiedKey, TlsError> {
    CertifiedKey::from_der(certs, key, &provider())
        .map_err(|e| TlsError(format!("certificate and key do not load: {e}")))
}

/// Serves whatever certificate is current; `reload` swaps it.
#[derive(Debug)]
pub struct CertResolver {
    current: ArcSwap<CertifiedKey>,
}

impl CertResolver {
    /// A resolver serving `key`.
    pub fn new(key: CertifiedKey) -> CertResolver {
        CertResolver {
            current: ArcSwap::from_pointee(key),
        }
    }

    /// Replaces the certificate for handshakes from now on.
    pub fn replace(&self, key: CertifiedKey) {
        self.current.store(Arc::new(key));
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// The rustls server config for all TLS listeners.
///
/// # Errors
/// The crypto provider refuses the protocol versions (a build problem).
/// `resumption`: keep a session cache and issue tickets (see
/// [`SESSION_CACHE`]); `false` makes every handshake a full one.
pub fn server_config(
    resolver: Arc<CertResolver>,
    resumption: bool,
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    // `http/1.0` too: a client that offers only it (`curl --http1.0`) would
    // otherwise fail its handshake, as rustls refuses a client whose ALPN
    // names nothing it serves; nginx lists it, HAProxy goes on without ALPN.
    // Ours first, so a client offering `h2` and `http/1.1` still gets `h2`.
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), b"http/1.0".to_vec()];
    // Pick the suite by our order (see `provider`: AES-128-GCM, AES-256-GCM, then
    // ChaCha20-Poly1305), not the client's. Every suite offered is AEAD
    // with forward secrecy, so this only decides which strong one; but a server order keeps a
    // client that lists a weaker-but-offered choice first from steering the pick, and testssl.sh
    // rates "no server cipher order" HIGH (docs/testssl.txt).
    cfg.ignore_client_order = true;
    if resumption {
        cfg.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE);
        cfg.ticketer =
            rustls::crypto::aws_lc_rs::Ticketer::new().map_err(|e| TlsError(e.to_string()))?;
        // rustls sends two TLS 1.3 tickets per full handshake by default; a
        // client resumes with one, and each costs an encryption and a write.
        cfg.send_tls13_tickets = 1;
    } else {
        // No cache, and rustls's default ticketer issues none.
        cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        cfg.send_tls13_tickets = 0;
    }
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev_pair() -> PemPair {
        parse_pem_pair(
            include_bytes!("../certs/localhost.crt"),
            Path::new("localhost.crt"),
            include_bytes!("../certs/localhost.key"),
            Path::new("localhost.key"),
        )
        .unwrap()
    }

    #[test]
    fn a_pem_error_names_the_file_of_the_pair_it_is_about() {
        let (crt, key) = (
            include_bytes!("../certs/localhost.crt").as_slice(),
            include_bytes!("../certs/localhost.key").as_slice(),
        );
        let (c, k) = (Path::new("a.crt"), Path::new("a.key"));
        let e = parse_pem_pair(key, c, key, k).err().unwrap();
        assert_eq!(e.file(), PemFile::Cert);
        assert_eq!(
            e.to_string(),
            "certificate file a.crt holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
        );
        let e = parse_pem_pair(crt, c, crt, k).err().unwrap();
        assert_eq!(e.file(), PemFile::Key);
        assert_eq!(
            e.to_string(),
            "cannot parse key file a.key: no PEM private key (PKCS#8, RSA or EC) found"
        );
        let e = load_pem_pair(Path::new("/nonexistent/a.crt"), k)
            .err()
            .unwrap();
        assert_eq!(e.file(), PemFile::Cert);
        assert!(e
            .to_string()
            .starts_with("cannot read certificate file /nonexistent/a.crt: "));
    }

    #[test]
    fn server_picks_the_suite_and_offers_h2_then_http11() {
        let PemPair { certs, key } = dev_pair();
        let resolver = Arc::new(CertResolver::new(certified_key(certs, key).unwrap()));
        let cfg = server_config(resolver, true).unwrap();
        assert!(
            cfg.ignore_client_order,
            "testssl.sh rates client order HIGH"
        );
        assert_eq!(
            cfg.alpn_protocols,
            [b"h2".to_vec(), b"http/1.1".to_vec(), b"http/1.0".to_vec()]
        );
    }

    #[test]
    fn suites_are_rings_own_reordered_with_aes128_first() {
        let ours: Vec<_> = provider().cipher_suites.iter().map(|s| s.suite()).collect();
        let mut theirs: Vec<_> = rustls::crypto::aws_lc_rs::default_provider()
            .cipher_suites
            .iter()
            .map(|s| s.suite())
            .collect();
        let mut sorted = ours.clone();
        sorted.sort_by_key(|s| format!("{s:?}"));
        theirs.sort_by_key(|s| format!("{s:?}"));
        assert_eq!(sorted, theirs, "the same suites, none added or dropped");
        assert_eq!(ours[0], rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    }
}
