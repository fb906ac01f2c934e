//! TLS server configuration: rustls with ALPN h2 and http/1.1, TLS 1.2 and
//! 1.3 only, the server's cipher-suite order, resumption by session cache and
//! tickets, and a certificate resolver whose key can be replaced in place, so
//! a renewed certificate needs no new listener and open connections are
//! untouched.

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Sessions remembered for resumption (~ a few hundred bytes each).
const SESSION_CACHE: usize = 16 * 1024;

/// A certificate and key that failed to load into rustls.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(String);

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
fn provider() -> Arc<CryptoProvider> {
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
pub fn server_config(resolver: Arc<CertResolver>) -> Result<Arc<ServerConfig>, TlsError> {
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // Pick the suite by our order (see `provider`: AES-128-GCM, AES-256-GCM, then
    // ChaCha20-Poly1305), not the client's. Every suite offered is AEAD
    // with forward secrecy, so this only decides which strong one; but a server order keeps a
    // client that lists a weaker-but-offered choice first from steering the pick, and testssl.sh
    // rates "no server cipher order" HIGH (docs/testssl.txt).
    cfg.ignore_client_order = true;
    cfg.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE);
    cfg.ticketer =
        rustls::crypto::aws_lc_rs::Ticketer::new().map_err(|e| TlsError(e.to_string()))?;
    // rustls sends two TLS 1.3 tickets per full handshake by default; a
    // client resumes with one, and each costs an encryption and a write.
    cfg.send_tls13_tickets = 1;
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::pem::PemObject;

    #[test]
    fn server_picks_the_suite_and_offers_h2_then_http11() {
        let certs = CertificateDer::pem_slice_iter(include_bytes!("../certs/localhost.crt"))
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(include_bytes!("../certs/localhost.key")).unwrap();
        let resolver = Arc::new(CertResolver::new(certified_key(certs, key).unwrap()));
        let cfg = server_config(resolver).unwrap();
        assert!(
            cfg.ignore_client_order,
            "testssl.sh rates client order HIGH"
        );
        assert_eq!(cfg.alpn_protocols, [b"h2".to_vec(), b"http/1.1".to_vec()]);
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
