//! rustls set-up shared by every binary. EdgeMesh uses the `ring` provider everywhere (no OpenSSL, no
//! aws-lc C build, so the agent cross-compiles to a Raspberry Pi with only a C cross-compiler for ring).

use std::sync::Arc;

use anyhow::{Context, bail};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// Installs the process-wide crypto provider; call once at start-up (repeated calls are harmless).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub fn certs_from_pem(pem: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("failed to read PEM certificates")?;
    if certs.is_empty() {
        bail!("no certificate in PEM text");
    }
    Ok(certs)
}

pub fn key_from_pem(pem: &str) -> anyhow::Result<PrivateKeyDer<'static>> {
    match PrivateKeyDer::from_pem_slice(pem.as_bytes()) {
        Ok(key) => Ok(key),
        Err(rustls::pki_types::pem::Error::NoItemsFound) => bail!("no private key in PEM text"),
        Err(e) => Err(anyhow::Error::new(e).context("failed to read PEM private key")),
    }
}

pub fn root_store(ca_pem: &str) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in certs_from_pem(ca_pem)? {
        roots
            .add(cert)
            .context("CA certificate is not a usable trust anchor")?;
    }
    Ok(roots)
}

/// A client configuration trusting only `ca_pem`, presenting `identity` (certificate and key PEM) if given.
pub fn client_config(ca_pem: &str, identity: Option<(&str, &str)>) -> anyhow::Result<ClientConfig> {
    install_crypto_provider();
    let builder = ClientConfig::builder().with_root_certificates(root_store(ca_pem)?);
    Ok(match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(certs_from_pem(cert)?, key_from_pem(key)?)
            .context("client certificate and key do not match")?,
        None => builder.with_no_client_auth(),
    })
}

/// A client configuration that accepts any server certificate. Only for fetching a CA certificate whose
/// fingerprint is then checked against a pin obtained out of band; nothing else may be sent over it.
pub fn unverified_client_config() -> ClientConfig {
    install_crypto_provider();
    ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert(
            rustls::crypto::ring::default_provider(),
        )))
        .with_no_client_auth()
}

#[derive(Debug)]
struct AcceptAnyServerCert(rustls::crypto::CryptoProvider);

impl ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
