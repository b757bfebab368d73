//! Pseudonymous user ids: a keyed hash (HMAC-SHA256) so records never hold the raw id (Art. 11).

use std::fmt;

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

/// Prefix of every pseudonymous id.
pub const PREFIX: &str = "u-";
/// Hex digits kept from the HMAC: 128 bits, enough to never collide among users.
pub const HEX_LEN: usize = 32;

/// Turns raw user ids (a header value, an API key) into stable pseudonymous ids.
///
/// `id(raw)` = `"u-"` + the first 32 hex digits of HMAC-SHA256(secret, raw). The same secret gives
/// the same id across restarts and replicas; without the secret an id cannot be linked back to the
/// raw value. `Debug` never shows the secret.
#[derive(Clone)]
pub struct Pseudonymizer {
    mac: Hmac<Sha256>,
}

impl Pseudonymizer {
    /// A pseudonymizer keyed with `secret` (any length; 32 random bytes or more is right).
    pub fn new(secret: &[u8]) -> Self {
        // HMAC takes keys of any length (long keys are hashed), so this cannot fail.
        let mac = Hmac::<Sha256>::new_from_slice(secret).expect("hmac accepts keys of any length");
        Self { mac }
    }

    /// A pseudonymizer with a fresh random 32-byte key: ids are stable only within this process.
    pub fn random() -> Self {
        let mut key = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut key);
        Self::new(&key)
    }

    /// The pseudonymous id of `raw`: `u-` and 32 lowercase hex digits. Never contains `raw`.
    pub fn id(&self, raw: &str) -> String {
        let mut mac = self.mac.clone();
        mac.update(raw.as_bytes());
        let digest = mac.finalize().into_bytes();
        let mut out = String::with_capacity(PREFIX.len() + HEX_LEN);
        out.push_str(PREFIX);
        push_hex(&mut out, &digest[..HEX_LEN / 2]);
        out
    }
}

impl fmt::Debug for Pseudonymizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pseudonymizer(<secret>)")
    }
}

/// Whether `s` has the shape of a pseudonymous id (`u-` and 32 lowercase hex digits).
pub fn is_pseudonym(s: &str) -> bool {
    s.strip_prefix(PREFIX).is_some_and(|hex| {
        hex.len() == HEX_LEN && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// Appends the lowercase hex form of `bytes` to `out`.
pub(crate) fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_for_one_secret() {
        let p = Pseudonymizer::new(b"0123456789abcdef0123456789abcdef");
        let a = p.id("alice@example.com");
        assert_eq!(a, p.id("alice@example.com"));
        assert_eq!(a, p.clone().id("alice@example.com"));
        assert_eq!(
            a,
            Pseudonymizer::new(b"0123456789abcdef0123456789abcdef").id("alice@example.com")
        );
        assert!(is_pseudonym(&a), "{a}");
        assert_eq!(a.len(), 2 + HEX_LEN);
        assert_ne!(a, p.id("bob@example.com"));
    }

    #[test]
    fn ids_depend_on_the_secret() {
        let a = Pseudonymizer::new(b"secret-one-secret-one").id("alice");
        let b = Pseudonymizer::new(b"secret-two-secret-two").id("alice");
        assert_ne!(a, b);
        assert_ne!(
            Pseudonymizer::random().id("alice"),
            Pseudonymizer::random().id("alice")
        );
    }

    #[test]
    fn known_vector_matches_hmac_sha256() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let p = Pseudonymizer::new(b"Jefe");
        assert_eq!(
            p.id("what do ya want for nothing?"),
            "u-5bdcc146bf60754e6a042426089575c7"
        );
    }

    #[test]
    fn ids_never_contain_the_raw_id() {
        let p = Pseudonymizer::new(b"k");
        for raw in [
            "a",
            "1",
            "u-",
            "abc",
            "deadbeef",
            "0",
            "alice",
            "13800138000",
            "用户",
        ] {
            let id = p.id(raw);
            assert!(
                !id[PREFIX.len()..].contains(raw) || raw.len() < 3,
                "{raw} in {id}"
            );
            assert!(is_pseudonym(&id));
        }
        let long = "x".repeat(1000);
        assert!(!p.id(&long).contains(&long));
    }

    #[test]
    fn debug_hides_the_secret() {
        let p = Pseudonymizer::new(b"super-secret-value");
        assert!(!format!("{p:?}").contains("super-secret"));
    }

    #[test]
    fn pseudonym_shape_is_checked() {
        assert!(is_pseudonym("u-0123456789abcdef0123456789abcdef"));
        assert!(!is_pseudonym("u-0123456789ABCDEF0123456789abcdef"));
        assert!(!is_pseudonym("u-0123"));
        assert!(!is_pseudonym("alice"));
        assert!(!is_pseudonym(""));
    }
}
