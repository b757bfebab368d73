//! Ed25519 signing of `AIGC` records: keys, the signature in `ReservedCode1`/`ReservedCode2`, `keygen`.
//!
//! The signed message is `ID ‖ SHA-256(content)`: the UTF-8 bytes of the ID (`ProduceID`, or
//! `PropagateID` for a propagator signature) followed by the 32 digest bytes. The digest is fixed
//! length and last, so the concatenation is unambiguous. The signature is written as base64url without
//! padding (86 characters, inside the Appendix E character set).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
use rand::rngs::OsRng;

use super::aigc::Aigc;

/// File name of the private key written by [`keygen`].
pub const PRIVATE_KEY_FILE: &str = "shenhe-signing-key.pem";
/// File name of the public key written by [`keygen`].
pub const PUBLIC_KEY_FILE: &str = "shenhe-signing-key.pub.pem";
/// Largest key file read, in bytes; a PEM Ed25519 key is ~120 bytes.
const MAX_KEY_FILE_BYTES: u64 = 16 * 1024;

/// Why a key could not be loaded or written.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "signing key file {path} could not be read: {source} (create one with `shenhe keygen`)"
    )]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("key file {0} is larger than 16 KiB")]
    TooLarge(PathBuf),
    #[error("environment variable {0} is not set (put the PEM or base64 pkcs#8 key made by `shenhe keygen` in it)")]
    EnvMissing(String),
    #[error("{0} is not an ed25519 pkcs#8 private key")]
    BadPrivateKey(String),
    #[error("{0} is not an ed25519 spki public key")]
    BadPublicKey(String),
    #[error("could not write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("could not encode key: {0}")]
    Encode(String),
}

/// Why a signature did not verify.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("signature field is empty")]
    Missing,
    #[error("signature is not 64 bytes of base64url")]
    Malformed,
    #[error("signature does not match the content and id")]
    Mismatch,
}

/// Which reserved field carries shenhe's signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SignatureSlot {
    /// `ReservedCode1` over `ProduceID`: shenhe's operator is the producer.
    Producer,
    /// `ReservedCode2` over `PropagateID`: shenhe propagated a file labeled upstream.
    Propagator,
}

/// An Ed25519 private key used to sign `AIGC` records.
pub struct Signer {
    key: SigningKey,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the private key.
        f.debug_struct("Signer")
            .field(
                "public_key",
                &URL_SAFE_NO_PAD.encode(self.key.verifying_key().as_bytes()),
            )
            .finish()
    }
}

impl Signer {
    /// A fresh random key (tests, benches and [`keygen`]).
    pub fn generate() -> Signer {
        Signer {
            key: SigningKey::generate(&mut OsRng),
        }
    }

    /// Load a PKCS#8 PEM private key file.
    pub fn from_pem_file(path: &Path) -> Result<Signer, KeyError> {
        let text = read_small(path)?;
        Signer::from_pkcs8_pem(&text)
            .map_err(|_| KeyError::BadPrivateKey(path.display().to_string()))
    }

    /// Load the key from an environment variable holding PKCS#8 PEM or base64 PKCS#8 DER.
    pub fn from_env(var: &str) -> Result<Signer, KeyError> {
        let value = std::env::var(var)
            .ok()
            .filter(|v| !v.trim().is_empty())
            .ok_or_else(|| KeyError::EnvMissing(var.to_owned()))?;
        Signer::from_text(&value)
            .map_err(|_| KeyError::BadPrivateKey(format!("environment variable {var}")))
    }

    /// Parse PEM, or base64 (standard or url-safe) PKCS#8 DER.
    pub fn from_text(text: &str) -> Result<Signer, KeyError> {
        let t = text.trim();
        if t.starts_with("-----BEGIN") {
            return Signer::from_pkcs8_pem(t);
        }
        let compact: String = t.chars().filter(|c| !c.is_whitespace()).collect();
        let der = STANDARD
            .decode(compact.as_bytes())
            .or_else(|_| URL_SAFE_NO_PAD.decode(compact.trim_end_matches('=').as_bytes()))
            .map_err(|_| KeyError::BadPrivateKey("key text".to_owned()))?;
        SigningKey::from_pkcs8_der(&der)
            .map(|key| Signer { key })
            .map_err(|_| KeyError::BadPrivateKey("key text".to_owned()))
    }

    fn from_pkcs8_pem(pem: &str) -> Result<Signer, KeyError> {
        SigningKey::from_pkcs8_pem(pem)
            .map(|key| Signer { key })
            .map_err(|_| KeyError::BadPrivateKey("pem text".to_owned()))
    }

    /// base64url (no padding) Ed25519 signature over `id ‖ content_sha256`.
    pub fn sign(&self, id: &str, content_sha256: &[u8; 32]) -> String {
        use ed25519_dalek::Signer as _;
        let sig = self.key.sign(&message(id, content_sha256));
        URL_SAFE_NO_PAD.encode(sig.to_bytes())
    }

    /// The public half.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// The public key as SPKI PEM, as served on `public_key_path` and written by [`keygen`].
    pub fn public_key_pem(&self) -> String {
        self.key
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap_or_default()
    }
}

fn message(id: &str, content_sha256: &[u8; 32]) -> Vec<u8> {
    let mut m = Vec::with_capacity(id.len() + 32);
    m.extend_from_slice(id.as_bytes());
    m.extend_from_slice(content_sha256);
    m
}

/// Check one base64url signature over `id ‖ content_sha256`.
pub fn verify_signature(
    public_key: &VerifyingKey,
    id: &str,
    signature: &str,
    content_sha256: &[u8; 32],
) -> Result<(), VerifyError> {
    if signature.is_empty() {
        return Err(VerifyError::Missing);
    }
    let raw = URL_SAFE_NO_PAD
        .decode(signature.as_bytes())
        .map_err(|_| VerifyError::Malformed)?;
    let bytes: [u8; 64] = raw.try_into().map_err(|_| VerifyError::Malformed)?;
    let sig = Signature::from_bytes(&bytes);
    public_key
        .verify_strict(&message(id, content_sha256), &sig)
        .map_err(|_| VerifyError::Mismatch)
}

/// Verify shenhe's signature in `aigc` for content with digest `content_sha256`.
///
/// Checks `ReservedCode1` over `ProduceID` (producer signature). If that does not verify and
/// `ReservedCode2` is set, checks `ReservedCode2` over `PropagateID` (propagator signature). Returns
/// the slot that verified; on failure, the producer slot's error.
pub fn verify(
    public_key: &VerifyingKey,
    aigc: &Aigc,
    content_sha256: &[u8; 32],
) -> Result<SignatureSlot, VerifyError> {
    let first = verify_signature(
        public_key,
        &aigc.produce_id,
        &aigc.reserved_code1,
        content_sha256,
    );
    if first.is_ok() {
        return Ok(SignatureSlot::Producer);
    }
    if !aigc.reserved_code2.is_empty()
        && verify_signature(
            public_key,
            &aigc.propagate_id,
            &aigc.reserved_code2,
            content_sha256,
        )
        .is_ok()
    {
        return Ok(SignatureSlot::Propagator);
    }
    first.map(|()| SignatureSlot::Producer)
}

/// Parse an SPKI PEM public key.
pub fn public_key_from_pem(pem: &str) -> Result<VerifyingKey, KeyError> {
    VerifyingKey::from_public_key_pem(pem.trim())
        .map_err(|_| KeyError::BadPublicKey("pem text".to_owned()))
}

/// Read an SPKI PEM public key file. A PKCS#8 private key file is also accepted (its public half).
pub fn load_public_key_file(path: &Path) -> Result<VerifyingKey, KeyError> {
    let text = read_small(path)?;
    public_key_from_pem(&text)
        .or_else(|_| Signer::from_text(&text).map(|s| s.verifying_key()))
        .map_err(|_| KeyError::BadPublicKey(path.display().to_string()))
}

fn read_small(path: &Path) -> Result<String, KeyError> {
    let read_err = |source| KeyError::Read {
        path: path.to_owned(),
        source,
    };
    let meta = fs::metadata(path).map_err(read_err)?;
    if meta.len() > MAX_KEY_FILE_BYTES {
        return Err(KeyError::TooLarge(path.to_owned()));
    }
    fs::read_to_string(path).map_err(read_err)
}

/// Make a new key pair in `dir`: [`PRIVATE_KEY_FILE`] (PKCS#8 PEM, mode 0600) and [`PUBLIC_KEY_FILE`]
/// (SPKI PEM). Refuses to overwrite an existing private key. Returns `(private_path, public_path)`.
pub fn keygen(dir: &Path) -> Result<(PathBuf, PathBuf), KeyError> {
    let signer = Signer::generate();
    let private_path = dir.join(PRIVATE_KEY_FILE);
    let public_path = dir.join(PUBLIC_KEY_FILE);
    let pem = signer
        .key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| KeyError::Encode(e.to_string()))?;
    let write_err = |path: &Path| {
        let path = path.to_owned();
        move |source| KeyError::Write { path, source }
    };
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&private_path).map_err(write_err(&private_path))?;
    f.write_all(pem.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(write_err(&private_path))?;
    fs::write(&public_path, signer.public_key_pem()).map_err(write_err(&public_path))?;
    Ok((private_path, public_path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    fn digest(b: &[u8]) -> [u8; 32] {
        Sha256::digest(b).into()
    }

    #[test]
    fn sign_verify_round_trip_and_tamper() {
        let s = Signer::generate();
        let pk = s.verifying_key();
        let d = digest(b"hello");
        let sig = s.sign("shenhe-abc", &d);
        assert_eq!(sig.len(), 86);
        assert!(super::super::aigc::is_appendix_e_charset(&sig));
        let mut a = Aigc::first_write("p", "shenhe-abc", sig.clone());
        assert_eq!(verify(&pk, &a, &d), Ok(SignatureSlot::Producer));
        // One changed content byte.
        assert_eq!(
            verify(&pk, &a, &digest(b"hellp")),
            Err(VerifyError::Mismatch)
        );
        // One changed id byte.
        a.produce_id = "shenhe-abd".into();
        assert_eq!(verify(&pk, &a, &d), Err(VerifyError::Mismatch));
        a.produce_id = "shenhe-abc".into();
        // One changed signature character.
        let mut bad: Vec<char> = sig.chars().collect();
        bad[10] = if bad[10] == 'A' { 'B' } else { 'A' };
        a.reserved_code1 = bad.into_iter().collect();
        assert!(verify(&pk, &a, &d).is_err());
        a.reserved_code1 = "short".into();
        assert_eq!(verify(&pk, &a, &d), Err(VerifyError::Malformed));
        a.reserved_code1.clear();
        assert_eq!(verify(&pk, &a, &d), Err(VerifyError::Missing));
        // Another key.
        a.reserved_code1 = sig;
        assert!(verify(&Signer::generate().verifying_key(), &a, &d).is_err());
    }

    #[test]
    fn propagator_slot_verifies() {
        let s = Signer::generate();
        let d = digest(b"img");
        let mut a = Aigc::first_write("upstream", "up-1", "theirs".into());
        a.content_propagator = "me".into();
        a.propagate_id = "shenhe-2".into();
        a.reserved_code2 = s.sign("shenhe-2", &d);
        assert_eq!(
            verify(&s.verifying_key(), &a, &d),
            Ok(SignatureSlot::Propagator)
        );
    }

    #[test]
    fn keygen_writes_loadable_keys_with_private_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (private, public) = keygen(dir.path()).expect("keygen");
        let s = Signer::from_pem_file(&private).expect("load private");
        let pk = load_public_key_file(&public).expect("load public");
        assert_eq!(pk, s.verifying_key());
        assert_eq!(public_key_from_pem(&s.public_key_pem()).expect("pem"), pk);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&private).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(keygen(dir.path()).is_err(), "never overwrites a key");
    }

    #[test]
    fn key_from_text_pem_and_base64_der() {
        let s = Signer::generate();
        let pem = s.key.to_pkcs8_pem(LineEnding::LF).expect("pem");
        let from_pem = Signer::from_text(&pem).expect("pem text");
        assert_eq!(from_pem.verifying_key(), s.verifying_key());
        let der = s.key.to_pkcs8_der().expect("der");
        let b64 = STANDARD.encode(der.as_bytes());
        let from_b64 = Signer::from_text(&b64).expect("b64");
        assert_eq!(from_b64.verifying_key(), s.verifying_key());
        assert!(Signer::from_text("garbage").is_err());
        let err = Signer::from_env("SHENHE_TEST_SURELY_UNSET_VAR").expect_err("unset");
        assert!(err.to_string().contains("shenhe keygen"));
        let err = Signer::from_pem_file(Path::new("/nonexistent/k.pem")).expect_err("missing");
        assert!(err.to_string().contains("shenhe keygen"));
        assert!(!format!("{s:?}").contains("PRIVATE"));
    }
}
