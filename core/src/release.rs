//! Agent releases: the manifest an operator signs offline with an ed25519 key, the public keys agents
//! pin, and the checks an agent makes before it runs a binary it was offered.
//!
//! The signature covers the manifest's exact bytes (prefixed with a domain tag), and the manifest names
//! the binary's SHA-256 and size: the control API stores and serves both verbatim and holds no key, so a
//! compromised control API can withhold a release but not forge one.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

/// What a signature covers before the manifest's bytes: a signature made for anything else (another
/// format, another product using the same key) is not a release signature.
const SIGNED_PREFIX: &[u8] = b"edgemesh-agent-release-manifest-v1\n";
/// The same for an audit checkpoint (`control-api`'s sequencer signs them with a key of its own, in
/// the same format): a checkpoint signature is never a release signature, nor the other way round.
pub const AUDIT_CHECKPOINT_PREFIX: &[u8] = b"edgemesh-audit-checkpoint-v1\n";
const PUBLIC_KEY_COMMENT: &str = "untrusted comment: edgemesh release public key";
const SECRET_KEY_COMMENT: &str = "untrusted comment: edgemesh release signing key (keep offline)";

/// What the operator signs: one agent build for one target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Semantic version of the build (`1.4.0`).
    pub version: String,
    /// The target triple it runs on (`aarch64-unknown-linux-gnu`).
    pub target: String,
    /// SHA-256 of the binary, lowercase hex.
    pub sha256: String,
    /// The binary's size in bytes.
    pub size: u64,
    /// The lowest running version that may update to this one.
    pub min_version: String,
    /// After this the manifest is refused: an old signed release cannot be replayed forever.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

impl Manifest {
    /// The manifest's text as it is signed and served (pretty JSON, one trailing newline).
    pub fn to_text(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).unwrap_or_default();
        text.push('\n');
        text
    }

    /// Parses and checks a manifest's own consistency (versions, digest).
    pub fn parse(text: &str) -> Result<Self, Refusal> {
        let manifest: Self = serde_json::from_str(text)
            .map_err(|e| Refusal::new(Refusal::INVALID_MANIFEST, format!("{e}")))?;
        for (field, value) in [
            ("version", &manifest.version),
            ("min_version", &manifest.min_version),
        ] {
            parse_version(value)
                .map_err(|e| Refusal::new(Refusal::INVALID_MANIFEST, format!("{field}: {e}")))?;
        }
        if manifest.sha256.len() != 64
            || !manifest
                .sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(Refusal::new(
                Refusal::INVALID_MANIFEST,
                "sha256 must be 64 lowercase hex digits",
            ));
        }
        if manifest.target.is_empty()
            || manifest.target.len() > 64
            || !manifest
                .target
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        {
            return Err(Refusal::new(
                Refusal::INVALID_MANIFEST,
                "target must be a target triple",
            ));
        }
        Ok(manifest)
    }
}

/// A manifest and its signature, as the control API stores and serves them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SignedManifest {
    /// The manifest's text, byte for byte as signed.
    pub manifest: String,
    /// The signature file's text ([`Signature::to_text`]).
    pub signature: String,
}

/// A release signature: which key made it, and the ed25519 signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    pub key_id: KeyId,
    pub bytes: Vec<u8>,
}

impl Signature {
    pub fn to_text(&self) -> String {
        format!(
            "untrusted comment: edgemesh release signature by key {}\n{} {}\n",
            self.key_id,
            self.key_id,
            BASE64.encode(&self.bytes)
        )
    }

    pub fn parse(text: &str) -> Result<Self, Refusal> {
        let line = payload_lines(text).next().ok_or_else(|| {
            Refusal::new(Refusal::UNSIGNED, "the signature file holds no signature")
        })?;
        let bad = || Refusal::new(Refusal::BAD_SIGNATURE, "the signature does not parse");
        let (key_id, signature) = line.split_once(' ').ok_or_else(bad)?;
        let bytes = BASE64.decode(signature.trim()).map_err(|_| bad())?;
        if bytes.len() != 64 {
            return Err(bad());
        }
        Ok(Self {
            key_id: KeyId::parse(key_id).ok_or_else(bad)?,
            bytes,
        })
    }
}

/// The first 8 bytes of a public key's SHA-256, in hex: which pinned key a signature claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId([u8; 8]);

impl KeyId {
    fn of(public_key: &[u8]) -> Self {
        let digest = Sha256::digest(public_key);
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest[..8]);
        Self(id)
    }

    fn parse(text: &str) -> Option<Self> {
        let bytes = hex::decode(text).ok()?;
        Some(Self(bytes.try_into().ok()?))
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// A public key an agent trusts releases from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    pub id: KeyId,
    bytes: [u8; 32],
}

impl PublicKey {
    /// Parses a public key file: a comment line and the key in base64.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let line = payload_lines(text)
            .next()
            .ok_or_else(|| anyhow::anyhow!("no public key in it"))?;
        let bytes: [u8; 32] = BASE64
            .decode(line)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| anyhow::anyhow!("not an ed25519 public key (32 bytes in base64)"))?;
        Ok(Self {
            id: KeyId::of(&bytes),
            bytes,
        })
    }

    /// Whether `signature` is this key's over `prefix` and then `text`.
    pub fn verifies(&self, prefix: &[u8], text: &str, signature: &Signature) -> bool {
        let mut message = prefix.to_vec();
        message.extend_from_slice(text.as_bytes());
        UnparsedPublicKey::new(&ED25519, self.bytes)
            .verify(&message, &signature.bytes)
            .is_ok()
    }

    pub fn to_text(&self) -> String {
        format!(
            "{PUBLIC_KEY_COMMENT} {}\n{}\n",
            self.id,
            BASE64.encode(self.bytes)
        )
    }
}

/// The operator's signing key. It lives in a file on the operator's machine, never on a server.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    pkcs8: Vec<u8>,
}

impl SigningKey {
    pub fn generate() -> anyhow::Result<Self> {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| anyhow::anyhow!("failed to generate an ed25519 key"))?;
        Self::from_pkcs8(pkcs8.as_ref())
    }

    fn from_pkcs8(pkcs8: &[u8]) -> anyhow::Result<Self> {
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8)
            .map_err(|e| anyhow::anyhow!("not an ed25519 signing key ({e})"))?;
        Ok(Self {
            pair,
            pkcs8: pkcs8.to_vec(),
        })
    }

    /// Parses a signing key file: a comment line and the PKCS#8 document in base64.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let line = payload_lines(text)
            .next()
            .ok_or_else(|| anyhow::anyhow!("no signing key in it"))?;
        let pkcs8 = BASE64
            .decode(line)
            .map_err(|_| anyhow::anyhow!("not a signing key (base64 PKCS#8)"))?;
        Self::from_pkcs8(&pkcs8)
    }

    pub fn to_text(&self) -> String {
        self.to_text_with_comment(SECRET_KEY_COMMENT)
    }

    /// The key file with another first line (`untrusted comment: …`, ignored when parsed).
    pub fn to_text_with_comment(&self, comment: &str) -> String {
        format!("{comment}\n{}\n", BASE64.encode(&self.pkcs8))
    }

    pub fn public_key(&self) -> PublicKey {
        let bytes: [u8; 32] = self
            .pair
            .public_key()
            .as_ref()
            .try_into()
            .unwrap_or([0; 32]);
        PublicKey {
            id: KeyId::of(&bytes),
            bytes,
        }
    }

    pub fn sign(&self, manifest_text: &str) -> Signature {
        self.sign_with_prefix(SIGNED_PREFIX, manifest_text)
    }

    /// A signature over `prefix` and then `text` (the prefix says what is signed).
    pub fn sign_with_prefix(&self, prefix: &[u8], text: &str) -> Signature {
        let mut message = prefix.to_vec();
        message.extend_from_slice(text.as_bytes());
        Signature {
            key_id: self.public_key().id,
            bytes: self.pair.sign(&message).as_ref().to_vec(),
        }
    }
}

/// Why a release is not taken: a stable code and a sentence, logged and reported to the control API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {detail}")]
pub struct Refusal {
    pub code: &'static str,
    pub detail: String,
}

impl Refusal {
    pub const UNSIGNED: &str = "unsigned";
    pub const UNKNOWN_KEY: &str = "unknown_key";
    pub const BAD_SIGNATURE: &str = "bad_signature";
    pub const INVALID_MANIFEST: &str = "invalid_manifest";
    pub const EXPIRED: &str = "expired";
    pub const WRONG_TARGET: &str = "wrong_target";
    pub const NOT_OFFERED: &str = "not_offered";
    pub const DOWNGRADE: &str = "downgrade";
    pub const TOO_OLD: &str = "too_old";
    pub const PINNED_BAD: &str = "pinned_bad";
    pub const SIZE_MISMATCH: &str = "size_mismatch";
    pub const HASH_MISMATCH: &str = "hash_mismatch";

    pub fn new(code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            code,
            detail: detail.into(),
        }
    }
}

/// What an agent knows when it judges a release.
pub struct Judge<'a> {
    pub pinned: &'a [PublicKey],
    /// The target triple this agent was built for.
    pub target: &'a str,
    /// The version running now.
    pub running: &'a str,
    /// The highest version this device has ever run (kept on disk): nothing at or below it is taken.
    pub highest_run: &'a str,
    pub now: OffsetDateTime,
}

impl Judge<'_> {
    /// Checks the signature first (nothing of an unsigned manifest is believed), then what it says.
    /// `offered` is the version the control API offered.
    pub fn manifest(&self, signed: &SignedManifest, offered: &str) -> Result<Manifest, Refusal> {
        if signed.signature.trim().is_empty() {
            return Err(Refusal::new(
                Refusal::UNSIGNED,
                "the release has no signature",
            ));
        }
        let signature = Signature::parse(&signed.signature)?;
        let key = self
            .pinned
            .iter()
            .find(|k| k.id == signature.key_id)
            .ok_or_else(|| {
                Refusal::new(
                    Refusal::UNKNOWN_KEY,
                    format!(
                        "signed by key {}, which this agent does not pin",
                        signature.key_id
                    ),
                )
            })?;
        key.verifies(SIGNED_PREFIX, &signed.manifest, &signature)
            .then_some(())
            .ok_or_else(|| {
                Refusal::new(
                    Refusal::BAD_SIGNATURE,
                    format!("the signature by key {} does not verify", key.id),
                )
            })?;
        let manifest = Manifest::parse(&signed.manifest)?;
        if manifest.expires_at <= self.now {
            return Err(Refusal::new(
                Refusal::EXPIRED,
                format!(
                    "the manifest of {} expired at {}",
                    manifest.version, manifest.expires_at
                ),
            ));
        }
        if manifest.target != self.target {
            return Err(Refusal::new(
                Refusal::WRONG_TARGET,
                format!(
                    "built for {}, this agent runs on {}",
                    manifest.target, self.target
                ),
            ));
        }
        if manifest.version != offered {
            return Err(Refusal::new(
                Refusal::NOT_OFFERED,
                format!(
                    "the manifest is of {}, {offered} was offered",
                    manifest.version
                ),
            ));
        }
        let version = parse_version(&manifest.version)
            .map_err(|e| Refusal::new(Refusal::INVALID_MANIFEST, e))?;
        let floor = parse_version(self.highest_run)
            .unwrap_or_else(|_| semver::Version::new(0, 0, 0))
            .max(parse_version(self.running).unwrap_or_else(|_| semver::Version::new(0, 0, 0)));
        if version <= floor {
            return Err(Refusal::new(
                Refusal::DOWNGRADE,
                format!("{version} is not above {floor}, the highest version this device has run"),
            ));
        }
        let min = parse_version(&manifest.min_version)
            .map_err(|e| Refusal::new(Refusal::INVALID_MANIFEST, e))?;
        if parse_version(self.running).is_ok_and(|running| running < min) {
            return Err(Refusal::new(
                Refusal::TOO_OLD,
                format!(
                    "{} may be updated from {min} or later; this is {}",
                    version, self.running
                ),
            ));
        }
        Ok(manifest)
    }
}

impl Manifest {
    /// Checks a downloaded binary against the manifest: size first, then the digest.
    pub fn check_binary(&self, binary: &[u8]) -> Result<(), Refusal> {
        if binary.len() as u64 != self.size {
            return Err(Refusal::new(
                Refusal::SIZE_MISMATCH,
                format!(
                    "the binary has {} bytes, the manifest says {}",
                    binary.len(),
                    self.size
                ),
            ));
        }
        let digest = hex::encode(Sha256::digest(binary));
        if digest != self.sha256 {
            return Err(Refusal::new(
                Refusal::HASH_MISMATCH,
                format!(
                    "the binary's SHA-256 is {digest}, the manifest says {}",
                    self.sha256
                ),
            ));
        }
        Ok(())
    }
}

/// A semantic version (`MAJOR.MINOR.PATCH`, with an optional pre-release).
pub fn parse_version(text: &str) -> Result<semver::Version, String> {
    semver::Version::parse(text).map_err(|e| format!("{text:?} is not a version ({e})"))
}

/// Whether `a` is a higher version than `b` (a version that does not parse is lower than any that does).
pub fn is_newer(a: &str, b: &str) -> bool {
    match (parse_version(a), parse_version(b)) {
        (Ok(a), Ok(b)) => a > b,
        (Ok(_), Err(_)) => true,
        _ => false,
    }
}

/// Where a device falls in a rollout: 0 to 9999, from its id alone, the same on every replica and for
/// every release (so the first percent is the same devices each time, the canaries).
pub fn rollout_bucket(device_id: &str) -> u32 {
    let digest = Sha256::digest(device_id.as_bytes());
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]) % 10_000
}

/// Whether a device is in the first `percent` of a rollout.
pub fn in_rollout(device_id: &str, percent: u8) -> bool {
    rollout_bucket(device_id) < u32::from(percent.min(100)) * 100
}

fn payload_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("untrusted comment:") && !l.starts_with('#'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn manifest(version: &str) -> Manifest {
        Manifest {
            version: version.into(),
            target: "x86_64-unknown-linux-gnu".into(),
            sha256: hex::encode(Sha256::digest(b"binary")),
            size: 6,
            min_version: "0.1.0".into(),
            expires_at: datetime!(2027-01-01 00:00 UTC),
        }
    }

    fn signed(key: &SigningKey, manifest: &Manifest) -> SignedManifest {
        let text = manifest.to_text();
        SignedManifest {
            signature: key.sign(&text).to_text(),
            manifest: text,
        }
    }

    fn judge<'a>(pinned: &'a [PublicKey]) -> Judge<'a> {
        Judge {
            pinned,
            target: "x86_64-unknown-linux-gnu",
            running: "0.1.0",
            highest_run: "0.1.0",
            now: datetime!(2026-12-01 00:00 UTC),
        }
    }

    #[test]
    fn keys_and_signatures_survive_their_files() {
        let key = SigningKey::generate().expect("key");
        let again = SigningKey::parse(&key.to_text()).expect("parse");
        assert_eq!(again.public_key(), key.public_key());
        let public = PublicKey::parse(&key.public_key().to_text()).expect("public");
        assert_eq!(public, key.public_key());
        let signature = key.sign("text");
        assert_eq!(
            Signature::parse(&signature.to_text()).expect("sig"),
            signature
        );
    }

    #[test]
    fn a_release_signed_by_a_pinned_key_is_taken() {
        let key = SigningKey::generate().expect("key");
        let pinned = [key.public_key()];
        let m = manifest("0.2.0");
        assert_eq!(
            judge(&pinned).manifest(&signed(&key, &m), "0.2.0"),
            Ok(m.clone())
        );
        assert_eq!(m.check_binary(b"binary"), Ok(()));
    }

    #[test]
    fn each_bad_release_is_refused_with_its_reason() {
        let key = SigningKey::generate().expect("key");
        let other = SigningKey::generate().expect("other");
        let pinned = [key.public_key()];
        let code = |s: &SignedManifest, offered: &str| {
            judge(&pinned).manifest(s, offered).map_err(|r| r.code)
        };

        let good = signed(&key, &manifest("0.2.0"));
        let unsigned = SignedManifest {
            signature: String::new(),
            ..good.clone()
        };
        assert_eq!(code(&unsigned, "0.2.0"), Err(Refusal::UNSIGNED));
        assert_eq!(
            code(&signed(&other, &manifest("0.2.0")), "0.2.0"),
            Err(Refusal::UNKNOWN_KEY)
        );
        // Signed by the pinned key, then edited: one more byte, or another signature's bytes.
        let edited = SignedManifest {
            manifest: good.manifest.replace("0.2.0", "0.3.0"),
            ..good.clone()
        };
        assert_eq!(code(&edited, "0.3.0"), Err(Refusal::BAD_SIGNATURE));
        let forged = Signature {
            key_id: key.public_key().id,
            bytes: other.sign(&good.manifest).bytes,
        };
        let forged = SignedManifest {
            signature: forged.to_text(),
            ..good.clone()
        };
        assert_eq!(code(&forged, "0.2.0"), Err(Refusal::BAD_SIGNATURE));

        assert_eq!(
            code(&signed(&key, &manifest("0.1.0")), "0.1.0"),
            Err(Refusal::DOWNGRADE)
        );
        assert_eq!(
            code(&signed(&key, &manifest("0.0.9")), "0.0.9"),
            Err(Refusal::DOWNGRADE)
        );
        let expired = Manifest {
            expires_at: datetime!(2026-11-30 00:00 UTC),
            ..manifest("0.2.0")
        };
        assert_eq!(
            code(&signed(&key, &expired), "0.2.0"),
            Err(Refusal::EXPIRED)
        );
        let arm = Manifest {
            target: "aarch64-unknown-linux-gnu".into(),
            ..manifest("0.2.0")
        };
        assert_eq!(
            code(&signed(&key, &arm), "0.2.0"),
            Err(Refusal::WRONG_TARGET)
        );
        let later = Manifest {
            min_version: "0.1.5".into(),
            ..manifest("0.2.0")
        };
        assert_eq!(code(&signed(&key, &later), "0.2.0"), Err(Refusal::TOO_OLD));
        assert_eq!(code(&good, "0.2.1"), Err(Refusal::NOT_OFFERED));

        let m = manifest("0.2.0");
        assert_eq!(
            m.check_binary(b"binar").map_err(|r| r.code),
            Err(Refusal::SIZE_MISMATCH)
        );
        assert_eq!(
            m.check_binary(b"BINARY").map_err(|r| r.code),
            Err(Refusal::HASH_MISMATCH)
        );
    }

    #[test]
    fn a_device_higher_than_it_runs_refuses_what_lies_between() {
        let key = SigningKey::generate().expect("key");
        let pinned = [key.public_key()];
        let judge = Judge {
            highest_run: "0.3.0",
            ..judge(&pinned)
        };
        let refused = judge.manifest(&signed(&key, &manifest("0.2.0")), "0.2.0");
        assert_eq!(refused.map_err(|r| r.code), Err(Refusal::DOWNGRADE));
    }

    #[test]
    fn rollout_buckets_are_stable_and_spread() {
        assert_eq!(rollout_bucket("pi-1"), rollout_bucket("pi-1"));
        let inside = (0..10_000)
            .filter(|i| in_rollout(&format!("device-{i}"), 10))
            .count();
        assert!(
            (800..1200).contains(&inside),
            "{inside} of 10000 in a 10% rollout"
        );
        assert!((0..100).all(|i| !in_rollout(&format!("d{i}"), 0)));
        assert!((0..100).all(|i| in_rollout(&format!("d{i}"), 100)));
        assert!(
            is_newer("0.2.0", "0.1.9") && !is_newer("0.1.0", "0.1.0") && is_newer("1.0.0", "junk")
        );
    }
}
