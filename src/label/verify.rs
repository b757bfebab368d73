//! `shenhe verify`: find the `AIGC` label in an image or a saved JSON response and check its signature.

use std::fmt;

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::aigc::{hex, Aigc};
use super::image::{aigc_payloads, canonical_bytes, detect_format, LabelError, MAX_IMAGE_BYTES};
use super::sign::{verify, SignatureSlot};
use super::text::chat_delivered_text;

/// Whether the file carries one well-formed label (STANDARDS R4.6: present / absent / malformed /
/// duplicated).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LabelStatus {
    Present,
    Absent,
    Malformed,
    Duplicated,
}

/// Outcome of the signature check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum SignatureStatus {
    /// shenhe's signature matches the content.
    Valid { slot: SignatureSlot },
    /// The signature is missing, malformed or does not match (forged or altered content).
    Invalid { reason: String },
    /// No public key was given.
    NotChecked,
    /// A bare `AIGC` record: there is no content to hash.
    NotApplicable,
}

/// What `shenhe verify` prints (Display) or emits as JSON (Serialize).
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// `png`, `jpeg`, `webp`, `chat_completion`, `aigc_json` or `unknown`.
    pub kind: &'static str,
    pub status: LabelStatus,
    pub aigc: Option<Aigc>,
    pub signature: SignatureStatus,
    /// Lowercase hex SHA-256 of the signed content (canonical image bytes or delivered text).
    pub content_sha256: Option<String>,
    pub warnings: Vec<String>,
    pub error: Option<String>,
}

impl VerifyReport {
    /// True when exactly one well-formed label is present and, if a key was given, its signature
    /// verifies. Without a key a forged label cannot be told from a real one: pass the key.
    pub fn ok(&self) -> bool {
        self.status == LabelStatus::Present
            && !matches!(self.signature, SignatureStatus::Invalid { .. })
    }

    fn failed(kind: &'static str, status: LabelStatus, error: String) -> VerifyReport {
        VerifyReport {
            kind,
            status,
            aigc: None,
            signature: SignatureStatus::NotApplicable,
            content_sha256: None,
            warnings: Vec::new(),
            error: Some(error),
        }
    }

    fn present(
        kind: &'static str,
        aigc: Aigc,
        digest: Option<[u8; 32]>,
        key: Option<&VerifyingKey>,
    ) -> VerifyReport {
        let signature = match (digest, key) {
            (None, _) => SignatureStatus::NotApplicable,
            (Some(_), None) => SignatureStatus::NotChecked,
            (Some(d), Some(k)) => match verify(k, &aigc, &d) {
                Ok(slot) => SignatureStatus::Valid { slot },
                Err(e) => SignatureStatus::Invalid {
                    reason: e.to_string(),
                },
            },
        };
        let warnings = aigc
            .charset_violations()
            .into_iter()
            .map(|f| format!("{f} leaves the appendix e character set"))
            .collect();
        VerifyReport {
            kind,
            status: LabelStatus::Present,
            aigc: Some(aigc),
            signature,
            content_sha256: digest.map(|d| hex(&d)),
            warnings,
            error: None,
        }
    }
}

/// Inspect `bytes`: a PNG, JPEG or WebP image, an OpenAI-style chat completion JSON with a top-level
/// `aigc` object (delivered text = `choices[*].message.content` concatenated), or a bare `AIGC`
/// record (`{"Label":…}` or `{"AIGC":{…}}`). With `public_key`, the signature is checked.
pub fn verify_bytes(bytes: &[u8], public_key: Option<&VerifyingKey>) -> VerifyReport {
    if bytes.len() > MAX_IMAGE_BYTES {
        return VerifyReport::failed(
            "unknown",
            LabelStatus::Absent,
            format!("input is larger than {MAX_IMAGE_BYTES} bytes"),
        );
    }
    if let Some(format) = detect_format(bytes) {
        return verify_image(bytes, format.name(), public_key);
    }
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
        return verify_json(bytes, public_key);
    }
    VerifyReport::failed(
        "unknown",
        LabelStatus::Absent,
        "not a png, jpeg, webp or json file".to_owned(),
    )
}

fn verify_image(bytes: &[u8], kind: &'static str, key: Option<&VerifyingKey>) -> VerifyReport {
    let payloads = match aigc_payloads(bytes) {
        Ok(p) => p,
        Err(e) => return VerifyReport::failed(kind, LabelStatus::Malformed, e.to_string()),
    };
    let one = match payloads.as_slice() {
        [] => return VerifyReport::failed(kind, LabelStatus::Absent, "no aigc block".to_owned()),
        [one] => one,
        more => {
            let e = LabelError::Duplicated(more.len());
            return VerifyReport::failed(kind, LabelStatus::Duplicated, e.to_string());
        }
    };
    let aigc = match Aigc::from_json(one) {
        Ok(a) => a,
        Err(e) => return VerifyReport::failed(kind, LabelStatus::Malformed, e.to_string()),
    };
    let digest = match canonical_bytes(bytes) {
        Ok(c) => Sha256::digest(&c).into(),
        Err(e) => return VerifyReport::failed(kind, LabelStatus::Malformed, e.to_string()),
    };
    VerifyReport::present(kind, aigc, Some(digest), key)
}

/// Only the `aigc` field, parsed strictly (duplicate `aigc` keys and bad records are errors).
#[derive(Deserialize)]
struct ChatAigc {
    #[serde(default)]
    aigc: Option<Aigc>,
}

fn verify_json(bytes: &[u8], key: Option<&VerifyingKey>) -> VerifyReport {
    let value: serde_json::Value = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(e) => {
            return VerifyReport::failed(
                "unknown",
                LabelStatus::Malformed,
                format!("invalid json: {e}"),
            )
        }
    };
    let Some(obj) = value.as_object() else {
        return VerifyReport::failed(
            "unknown",
            LabelStatus::Absent,
            "json is not an object".to_owned(),
        );
    };
    if obj.contains_key("Label") || obj.contains_key("AIGC") {
        let kind = "aigc_json";
        let text = String::from_utf8_lossy(bytes);
        return match Aigc::from_json(&text) {
            Ok(a) => VerifyReport::present(kind, a, None, key),
            Err(e) => VerifyReport::failed(kind, status_of(&e.to_string()), e.to_string()),
        };
    }
    let kind = "chat_completion";
    let aigc = match serde_json::from_slice::<ChatAigc>(bytes) {
        Ok(ChatAigc { aigc: Some(a) }) => a,
        Ok(ChatAigc { aigc: None }) => {
            return VerifyReport::failed(kind, LabelStatus::Absent, "no aigc field".to_owned())
        }
        Err(e) => return VerifyReport::failed(kind, status_of(&e.to_string()), e.to_string()),
    };
    if let Err(e) = Aigc::from_json(&aigc.to_json()) {
        return VerifyReport::failed(kind, LabelStatus::Malformed, e.to_string());
    }
    let digest = Sha256::digest(chat_delivered_text(&value).as_bytes()).into();
    VerifyReport::present(kind, aigc, Some(digest), key)
}

fn status_of(err: &str) -> LabelStatus {
    if err.contains("duplicate field") {
        LabelStatus::Duplicated
    } else {
        LabelStatus::Malformed
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "file:              {}", self.kind)?;
        let status = match self.status {
            LabelStatus::Present => "present",
            LabelStatus::Absent => "absent",
            LabelStatus::Malformed => "malformed",
            LabelStatus::Duplicated => "duplicated",
        };
        writeln!(f, "implicit label:    {status}")?;
        if let Some(a) = &self.aigc {
            for (k, v) in [
                ("Label", &a.label),
                ("ContentProducer", &a.content_producer),
                ("ProduceID", &a.produce_id),
                ("ReservedCode1", &a.reserved_code1),
                ("ContentPropagator", &a.content_propagator),
                ("PropagateID", &a.propagate_id),
                ("ReservedCode2", &a.reserved_code2),
            ] {
                writeln!(f, "  {k:<17}{v}")?;
            }
        }
        if let Some(d) = &self.content_sha256 {
            writeln!(f, "content sha-256:   {d}")?;
        }
        let sig = match &self.signature {
            SignatureStatus::Valid {
                slot: SignatureSlot::Producer,
            } => "valid (ReservedCode1 over ProduceID)".to_owned(),
            SignatureStatus::Valid {
                slot: SignatureSlot::Propagator,
            } => "valid (ReservedCode2 over PropagateID)".to_owned(),
            SignatureStatus::Invalid { reason } => format!("INVALID: {reason}"),
            SignatureStatus::NotChecked => "not checked (no public key given)".to_owned(),
            SignatureStatus::NotApplicable => "not applicable".to_owned(),
        };
        writeln!(f, "signature:         {sig}")?;
        for w in &self.warnings {
            writeln!(f, "warning:           {w}")?;
        }
        if let Some(e) = &self.error {
            writeln!(f, "error:             {e}")?;
        }
        write!(
            f,
            "result:            {}",
            if self.ok() { "ok" } else { "FAIL" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::label::image::label_image;
    use crate::label::image::tests::{make_png, tiny_jpeg};
    use crate::label::text::tests::test_labeler;
    use crate::label::Signer;

    #[test]
    fn labeled_image_verifies_and_forgery_fails() {
        let (l, s) = test_labeler();
        let pk = s.verifying_key();
        for src in [make_png(8, 8), tiny_jpeg()] {
            let out = label_image(&src, &l, "shenhe-v").expect("labeled");
            let r = verify_bytes(&out, Some(&pk));
            assert!(r.ok(), "{r}");
            assert_eq!(
                r.signature,
                SignatureStatus::Valid {
                    slot: SignatureSlot::Producer
                }
            );
            assert!(r.to_string().contains("result:            ok"));
            // Same label, other pixels: transplanting a label onto another image is a forgery.
            let mut forged = out.clone();
            let last = forged.len() - 3;
            forged[last] ^= 0x01;
            let r = verify_bytes(&forged, Some(&pk));
            assert!(!r.ok(), "{r}");
            assert!(matches!(r.signature, SignatureStatus::Invalid { .. }));
            // Signed by someone else.
            let other = Signer::generate().verifying_key();
            assert!(!verify_bytes(&out, Some(&other)).ok());
            // Without a key: present, not checked.
            let r = verify_bytes(&out, None);
            assert!(r.ok());
            assert_eq!(r.signature, SignatureStatus::NotChecked);
            // Unlabeled.
            let r = verify_bytes(&src, Some(&pk));
            assert_eq!(r.status, LabelStatus::Absent);
            assert!(!r.ok());
        }
    }

    #[test]
    fn chat_completion_json_verifies() {
        let (l, s) = test_labeler();
        let delivered = l.label_text("你好，世界");
        let aigc = l.implicit_for_text("shenhe-c", &delivered).expect("on");
        let body = serde_json::json!({
            "id": "chatcmpl-1", "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": delivered}, "finish_reason": "stop"}],
            "aigc": aigc,
        });
        let bytes = serde_json::to_vec_pretty(&body).expect("json");
        let r = verify_bytes(&bytes, Some(&s.verifying_key()));
        assert!(r.ok(), "{r}");
        assert_eq!(r.kind, "chat_completion");
        let json = serde_json::to_value(&r).expect("serialize");
        assert_eq!(json["status"], "present");
        assert_eq!(json["signature"]["state"], "valid");
        // Edited text.
        let tampered = String::from_utf8(bytes.clone())
            .expect("utf8")
            .replace("世界", "世間");
        assert!(!verify_bytes(tampered.as_bytes(), Some(&s.verifying_key())).ok());
        // Duplicated aigc key.
        let text = String::from_utf8(bytes).expect("utf8");
        let dup = text.replacen(
            "\"aigc\":",
            &format!("\"aigc\": {},\n  \"aigc\":", aigc.to_json()),
            1,
        );
        let r = verify_bytes(dup.as_bytes(), Some(&s.verifying_key()));
        assert_eq!(r.status, LabelStatus::Duplicated, "{r}");
        // No aigc field.
        let r = verify_bytes(br#"{"choices":[]}"#, None);
        assert_eq!(r.status, LabelStatus::Absent);
    }

    #[test]
    fn bare_records_and_junk() {
        let a = Aigc::first_write("P", "I", String::new());
        let r = verify_bytes(a.to_json().as_bytes(), None);
        assert!(r.ok());
        assert_eq!(r.kind, "aigc_json");
        assert_eq!(r.signature, SignatureStatus::NotApplicable);
        let bad = a.to_json().replace("\"Label\":\"1\"", "\"Label\":1");
        assert_eq!(
            verify_bytes(bad.as_bytes(), None).status,
            LabelStatus::Malformed
        );
        assert!(!verify_bytes(b"hello", None).ok());
        assert!(!verify_bytes(b"{not json", None).ok());
        assert!(!verify_bytes(&make_png(2, 2)[..20], None).ok());
    }
}
