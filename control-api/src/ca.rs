//! The EdgeMesh certificate authority: an ECDSA P-256 key that signs device and server certificates.
//! It is created on first start and persisted (key file mode 0600), or loaded from configured paths.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, bail, ensure};
use edgemesh_core::cert::{CertInfo, Fingerprint, TrustDomain, first_pem_der, spiffe_id};
use edgemesh_core::files::write_atomic;
use edgemesh_core::id::DeviceId;
use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};

/// How far back a new certificate's validity starts, so a device whose clock is slightly behind still
/// accepts it.
const BACKDATE: Duration = Duration::minutes(5);

pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    fingerprint: String,
}

/// A certificate just signed, with the facts recorded about it.
pub struct Issued {
    pub pem: String,
    pub info: CertInfo,
}

impl CertificateAuthority {
    /// Loads the CA from `cert_path` and `key_path`, or creates both if neither exists.
    pub fn load_or_create(cert_path: &Path, key_path: &Path) -> anyhow::Result<Self> {
        match (cert_path.exists(), key_path.exists()) {
            (true, true) => Self::load(cert_path, key_path),
            (false, false) => {
                let ca = Self::create()?;
                ca.persist(cert_path, key_path)?;
                tracing::info!(fingerprint = %ca.fingerprint, path = %cert_path.display(), "created a new CA");
                Ok(ca)
            }
            (true, false) => bail!(
                "CA certificate {} exists but its key {} does not",
                cert_path.display(),
                key_path.display()
            ),
            (false, true) => bail!(
                "CA key {} exists but its certificate {} does not",
                key_path.display(),
                cert_path.display()
            ),
        }
    }

    fn create() -> anyhow::Result<Self> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "EdgeMesh CA");
        params
            .distinguished_name
            .push(DnType::OrganizationName, "EdgeMesh");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + Duration::days(3650);
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key)?;
        let cert_pem = cert.pem();
        Ok(Self {
            fingerprint: Fingerprint::of(cert.der()).to_string(),
            issuer: Issuer::new(params, key),
            cert_pem,
        })
    }

    fn load(cert_path: &Path, key_path: &Path) -> anyhow::Result<Self> {
        let mode = std::fs::metadata(key_path)?.permissions().mode();
        ensure!(
            mode & 0o077 == 0,
            "CA key {} is readable by others (mode {:o}); chmod 600 it",
            key_path.display(),
            mode & 0o777
        );
        let cert_pem = std::fs::read_to_string(cert_path)
            .with_context(|| format!("failed to read {}", cert_path.display()))?;
        let key_pem = std::fs::read_to_string(key_path)
            .with_context(|| format!("failed to read {}", key_path.display()))?;
        let key = KeyPair::from_pem(&key_pem).context("CA key is not a usable PEM private key")?;
        let der = first_pem_der(&cert_pem).context("CA certificate is not PEM")?;
        let (_, parsed) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| anyhow::anyhow!("CA certificate does not parse: {e}"))?;
        ensure!(
            parsed.public_key().subject_public_key.data.as_ref() == key.der_bytes(),
            "CA key does not belong to the CA certificate"
        );
        ensure!(
            parsed.is_ca(),
            "CA certificate is not a CA (basicConstraints)"
        );
        let issuer =
            Issuer::from_ca_cert_pem(&cert_pem, key).context("CA certificate is not usable")?;
        Ok(Self {
            fingerprint: Fingerprint::of(&der).to_string(),
            issuer,
            cert_pem,
        })
    }

    fn persist(&self, cert_path: &Path, key_path: &Path) -> anyhow::Result<()> {
        write_atomic(
            key_path,
            self.issuer.key().serialize_pem().as_bytes(),
            0o600,
        )?;
        write_atomic(cert_path, self.cert_pem.as_bytes(), 0o644)
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Lowercase hex SHA-256 of the CA certificate's DER: the pin devices check at enrollment.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Signs a device certificate. Everything in it is decided here; nothing is copied from the CSR
    /// but its public key.
    pub fn issue_device(
        &self,
        device: &DeviceId,
        trust_domain: &TrustDomain,
        public_key: &impl PublicKeyData,
        validity: Duration,
    ) -> anyhow::Result<Issued> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, device.as_str());
        params.subject_alt_names = vec![SanType::URI(
            spiffe_id(trust_domain, device)
                .try_into()
                .context("SPIFFE ID is not an IA5 string")?,
        )];
        // An X.509-SVID leaf (SPIFFE X509-SVID §4): basic constraints present with cA false, key usage
        // (critical) digitalSignature and neither keyCertSign nor cRLSign, exactly one URI SAN.
        params.is_ca = IsCa::ExplicitNoCa;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        self.sign(params, public_key, validity)
    }

    /// Signs a TLS server certificate for `names` (DNS names or IP addresses) with a fresh key and
    /// answers (certificate PEM, key PEM).
    pub fn issue_server(
        &self,
        names: &[String],
        validity: Duration,
    ) -> anyhow::Result<(String, String)> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(names.to_vec())?;
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().map_or("edgemesh", String::as_str),
        );
        params.is_ca = IsCa::ExplicitNoCa;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let issued = self.sign(params, &key, validity)?;
        Ok((issued.pem, key.serialize_pem()))
    }

    fn sign(
        &self,
        mut params: CertificateParams,
        public_key: &impl PublicKeyData,
        validity: Duration,
    ) -> anyhow::Result<Issued> {
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + validity;
        // rcgen would derive the serial from the public key, repeating it when a key is re-signed.
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(public_key, &self.issuer)?;
        let info = CertInfo::from_der(cert.der()).context("issued certificate does not parse")?;
        Ok(Issued {
            pem: cert.pem(),
            info,
        })
    }
}

/// 128 random bits, positive and with a non-zero leading byte so its DER encoding is exactly 16 bytes.
fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_are_sixteen_positive_bytes() {
        for _ in 0..200 {
            let serial = random_serial();
            let bytes = serial.as_ref();
            assert_eq!(bytes.len(), 16);
            assert!(bytes[0] & 0x80 == 0 && bytes[0] != 0, "{bytes:?}");
        }
    }

    #[test]
    fn a_persisted_ca_loads_with_the_same_fingerprint_and_refuses_an_open_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = (dir.path().join("ca.pem"), dir.path().join("ca-key.pem"));
        let created = CertificateAuthority::load_or_create(&cert, &key).expect("create");
        let mode = std::fs::metadata(&key).expect("key").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "key file mode");
        let loaded = CertificateAuthority::load_or_create(&cert, &key).expect("load");
        assert_eq!(created.fingerprint(), loaded.fingerprint());

        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = CertificateAuthority::load_or_create(&cert, &key)
            .err()
            .expect("refused");
        assert!(err.to_string().contains("readable by others"), "{err}");

        std::fs::remove_file(&key).expect("rm");
        assert!(
            CertificateAuthority::load_or_create(&cert, &key).is_err(),
            "cert without key"
        );
    }
}
