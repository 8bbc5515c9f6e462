//! A certificate signing request parsed at the edge: PEM, DER, a valid self-signature and a key type
//! EdgeMesh accepts (ECDSA P-256/P-384, RSA ≥ 2048 bits, Ed25519). Only its public key is used.

use rcgen::{
    PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_ED25519, PKCS_RSA_SHA256, PublicKeyData,
    SignatureAlgorithm,
};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    OID_SIG_ED25519,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;

const MIN_RSA_BITS: usize = 2048;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CsrError {
    #[error("csr_pem is not a PEM certificate request")]
    NotPem,
    #[error("the certificate request does not parse")]
    Malformed,
    #[error("the certificate request's signature does not verify")]
    BadSignature,
    #[error(
        "unsupported key: {0} (accepted: ECDSA P-256 or P-384, RSA of at least 2048 bits, Ed25519)"
    )]
    UnsupportedKey(String),
}

/// The verified public key of a certificate request.
#[derive(Debug)]
pub struct Csr {
    algorithm: &'static SignatureAlgorithm,
    key: Vec<u8>,
}

impl Csr {
    /// The requested public key (the subjectPublicKey bits).
    pub fn public_key_raw(&self) -> &[u8] {
        &self.key
    }

    pub fn from_pem(pem: &str) -> Result<Self, CsrError> {
        let (_, pem) =
            x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|_| CsrError::NotPem)?;
        if !matches!(
            pem.label.as_str(),
            "CERTIFICATE REQUEST" | "NEW CERTIFICATE REQUEST"
        ) {
            return Err(CsrError::NotPem);
        }
        let (rest, csr) =
            X509CertificationRequest::from_der(&pem.contents).map_err(|_| CsrError::Malformed)?;
        if !rest.is_empty() {
            return Err(CsrError::Malformed);
        }
        let spki = &csr.certification_request_info.subject_pki;
        let algorithm = key_algorithm(spki)?;
        // Proof of possession: the request is signed by the key it asks a certificate for.
        csr.verify_signature().map_err(|_| CsrError::BadSignature)?;
        Ok(Self {
            algorithm,
            key: spki.subject_public_key.data.to_vec(),
        })
    }
}

fn key_algorithm(
    spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>,
) -> Result<&'static SignatureAlgorithm, CsrError> {
    let oid = &spki.algorithm.algorithm;
    if *oid == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .ok_or_else(|| CsrError::UnsupportedKey("EC key without a named curve".into()))?;
        return if curve == OID_EC_P256 {
            Ok(&PKCS_ECDSA_P256_SHA256)
        } else if curve == OID_NIST_EC_P384 {
            Ok(&PKCS_ECDSA_P384_SHA384)
        } else {
            Err(CsrError::UnsupportedKey(format!("EC curve {curve}")))
        };
    }
    if *oid == OID_PKCS1_RSAENCRYPTION {
        return match spki.parsed() {
            Ok(PublicKey::RSA(rsa)) if rsa.key_size() >= MIN_RSA_BITS => Ok(&PKCS_RSA_SHA256),
            Ok(PublicKey::RSA(rsa)) => Err(CsrError::UnsupportedKey(format!(
                "RSA key of {} bits",
                rsa.key_size()
            ))),
            _ => Err(CsrError::Malformed),
        };
    }
    if *oid == OID_SIG_ED25519 {
        return Ok(&PKCS_ED25519);
    }
    Err(CsrError::UnsupportedKey(format!("key algorithm {oid}")))
}

impl PublicKeyData for Csr {
    fn der_bytes(&self) -> &[u8] {
        &self.key
    }

    // Chosen from the key itself, not the CSR's signature algorithm, so the certificate's
    // SubjectPublicKeyInfo names the key's real curve.
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.algorithm
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, KeyPair};

    use super::*;

    fn csr_for(alg: &'static SignatureAlgorithm) -> String {
        let key = KeyPair::generate_for(alg).expect("key");
        CertificateParams::new(Vec::<String>::new())
            .expect("params")
            .serialize_request(&key)
            .expect("csr")
            .pem()
            .expect("pem")
    }

    fn fixture(name: &str) -> String {
        let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path).expect(&path)
    }

    #[test]
    fn accepts_the_supported_key_types() {
        let cases = [
            (
                csr_for(&PKCS_ECDSA_P256_SHA256),
                &PKCS_ECDSA_P256_SHA256,
                "P-256",
            ),
            (
                csr_for(&PKCS_ECDSA_P384_SHA384),
                &PKCS_ECDSA_P384_SHA384,
                "P-384",
            ),
            (csr_for(&PKCS_ED25519), &PKCS_ED25519, "Ed25519"),
            (
                fixture("rsa2048.csr"),
                &PKCS_RSA_SHA256,
                "RSA 2048 (openssl)",
            ),
        ];
        for (pem, alg, why) in cases {
            let csr = Csr::from_pem(&pem).unwrap_or_else(|e| panic!("{why}: {e}"));
            assert_eq!(csr.algorithm(), alg, "{why}");
        }
    }

    #[test]
    fn refuses_what_it_must() {
        let good = csr_for(&PKCS_ECDSA_P256_SHA256);
        let der = x509_parser::pem::parse_x509_pem(good.as_bytes())
            .expect("pem")
            .1
            .contents;
        // Flip the last byte of the signature.
        let mut tampered = der.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 0x01;
        let to_pem = |der: &[u8]| {
            use base64::Engine;
            let b64 = base64::engine::general_purpose::STANDARD.encode(der);
            format!(
                "-----BEGIN CERTIFICATE REQUEST-----\n{b64}\n-----END CERTIFICATE REQUEST-----\n"
            )
        };
        type Expected = fn(&CsrError) -> bool;
        let cases: Vec<(String, Expected, &str)> = vec![
            ("hello".into(), |e| *e == CsrError::NotPem, "not PEM"),
            (
                good.replace("CERTIFICATE REQUEST", "CERTIFICATE"),
                |e| *e == CsrError::NotPem,
                "wrong PEM label",
            ),
            (
                to_pem(&der[..der.len() / 2]),
                |e| *e == CsrError::Malformed,
                "truncated DER",
            ),
            (
                to_pem(&tampered),
                |e| *e == CsrError::BadSignature,
                "tampered signature",
            ),
            (
                fixture("rsa1024.csr"),
                |e| matches!(e, CsrError::UnsupportedKey(_)),
                "RSA 1024",
            ),
            (
                fixture("p521.csr"),
                |e| matches!(e, CsrError::UnsupportedKey(_)),
                "P-521",
            ),
            (
                fixture("secp256k1.csr"),
                |e| matches!(e, CsrError::UnsupportedKey(_)),
                "secp256k1",
            ),
        ];
        for (pem, expected, why) in cases {
            let err = Csr::from_pem(&pem)
                .err()
                .unwrap_or_else(|| panic!("{why}: accepted"));
            assert!(expected(&err), "{why}: got {err:?}");
        }
    }
}
