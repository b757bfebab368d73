//! [`Labeler`]: what the dialects need to label a text response (explicit text, signed `AIGC`, header).
//!
//! The explicit label is separated from the completion by one newline (`"\n"`): at the start it is
//! `label + "\n" + text`, at the end `text + "\n" + label`. Streaming dialects send the same strings
//! as their own first or last delta (`label + "\n"` / `"\n" + label`) so that the concatenated stream
//! equals [`apply_explicit`] of the whole text. The implicit record signs the SHA-256 of the exact text
//! delivered, explicit label included. Whether a user may receive text without the explicit label
//! (Measures Art. 9) is the caller's decision; the implicit label is written either way.

use std::path::Path;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::aigc::Aigc;
use super::config::{Position, ValidExplicit, ValidImages, ValidLabels};
use super::sign::{KeyError, Signer};

/// Top-level field of a JSON chat completion that carries the `AIGC` record (seven fields, Appendix E
/// order). `shenhe verify` reads it from saved responses.
pub const CHAT_AIGC_FIELD: &str = "aigc";

#[derive(Debug)]
struct Implicit {
    signer: Arc<Signer>,
    producer: String,
    header: String,
    public_key_path: Option<String>,
}

/// Built once per config load from [`ValidLabels`] and the signing key; shared behind `Arc`.
#[derive(Debug)]
pub struct Labeler {
    explicit: Option<ValidExplicit>,
    implicit: Option<Implicit>,
    images: ValidImages,
}

impl Labeler {
    /// Load the signing key named by the config (the file if set, else the environment variable) and
    /// build the labeler. A missing or unreadable key is an error that names `shenhe keygen`.
    pub fn from_config(valid: &ValidLabels) -> Result<Labeler, KeyError> {
        let signer = match &valid.implicit {
            None => None,
            Some(i) => Some(Arc::new(match &i.signing_key_file {
                Some(path) => Signer::from_pem_file(Path::new(path))?,
                None => Signer::from_env(&i.signing_key_env)?,
            })),
        };
        Ok(Labeler::with_signer(valid, signer))
    }

    /// Build with a key already loaded. With `signer: None` implicit labels are off whatever the config
    /// says.
    pub fn with_signer(valid: &ValidLabels, signer: Option<Arc<Signer>>) -> Labeler {
        let implicit = match (&valid.implicit, signer) {
            (Some(i), Some(signer)) => Some(Implicit {
                signer,
                producer: i.producer.clone(),
                header: i.header.clone(),
                public_key_path: i.public_key_path.clone(),
            }),
            _ => None,
        };
        let mut images = valid.images.clone();
        images.xmp &= implicit.is_some();
        Labeler {
            explicit: valid.explicit.clone(),
            implicit,
            images,
        }
    }

    /// The explicit label text, `None` when explicit labels are disabled.
    pub fn explicit_text(&self) -> Option<&str> {
        self.explicit.as_ref().map(|e| e.text.as_str())
    }

    /// Where the explicit label goes (meaningful only when [`Self::explicit_text`] is `Some`).
    pub fn position(&self) -> Position {
        self.explicit
            .as_ref()
            .map_or(Position::default(), |e| e.position)
    }

    /// The text with the explicit label applied (unchanged when explicit labels are disabled).
    pub fn label_text(&self, text: &str) -> String {
        match &self.explicit {
            Some(e) => apply_explicit(text, &e.text, e.position),
            None => text.to_owned(),
        }
    }

    /// The signed `AIGC` record for `delivered_text` (the exact text the client receives, explicit label
    /// included). `None` when implicit labels are disabled.
    pub fn implicit_for_text(&self, produce_id: &str, delivered_text: &str) -> Option<Aigc> {
        let i = self.implicit.as_ref()?;
        let digest: [u8; 32] = Sha256::digest(delivered_text.as_bytes()).into();
        let sig = i.signer.sign(produce_id, &digest);
        super::record("text", "implicit", "ok");
        Some(Aigc::first_write(&i.producer, produce_id, sig))
    }

    /// Response header name for the `AIGC` JSON (e.g. `x-aigc-label`), `None` when implicit is off.
    pub fn header_name(&self) -> Option<&str> {
        self.implicit.as_ref().map(|i| i.header.as_str())
    }

    /// Header value: the compact JSON. shenhe's own records are ASCII, so this is a valid header value.
    pub fn header_value(aigc: &Aigc) -> String {
        aigc.to_json()
    }

    /// The configured `ContentProducer` code, `None` when implicit is off.
    pub fn producer(&self) -> Option<&str> {
        self.implicit.as_ref().map(|i| i.producer.as_str())
    }

    /// The signing key, `None` when implicit is off.
    pub fn signer(&self) -> Option<&Signer> {
        self.implicit.as_ref().map(|i| i.signer.as_ref())
    }

    /// Public key PEM to serve, and the path to serve it on, when both are configured.
    pub fn public_key_route(&self) -> Option<(&str, String)> {
        let i = self.implicit.as_ref()?;
        let path = i.public_key_path.as_deref()?;
        Some((path, i.signer.public_key_pem()))
    }

    /// Image settings (XMP already off when implicit is off).
    pub fn images(&self) -> &ValidImages {
        &self.images
    }
}

/// Apply the explicit `label` to a non-streamed `text`, separated by one newline. An empty text gets
/// the label alone (once, even for `both`). Counts `shenhe_labels_applied_total{text,explicit,ok}`.
pub fn apply_explicit(text: &str, label: &str, position: Position) -> String {
    if text.is_empty() {
        super::record("text", "explicit", "ok");
        return label.to_owned();
    }
    let (head, tail) = explicit_affixes(label, position);
    let mut out = String::with_capacity(head.len() + text.len() + tail.len());
    out.push_str(&head);
    out.push_str(text);
    out.push_str(&tail);
    out
}

/// What [`apply_explicit`] puts before and after a non-empty text (one may be empty), for
/// callers that splice the label around a text they do not copy. Counts the label as applied.
pub fn explicit_affixes(label: &str, position: Position) -> (String, String) {
    super::record("text", "explicit", "ok");
    let head = match position {
        Position::Start | Position::Both => format!("{label}\n"),
        Position::End => String::new(),
    };
    let tail = match position {
        Position::End | Position::Both => format!("\n{label}"),
        Position::Start => String::new(),
    };
    (head, tail)
}

/// The delivered text of an OpenAI-style chat completion: `choices[*].message.content` concatenated in
/// array order (string content, or the `text` of `type: "text"` parts). This is what the dialect signs
/// and what `shenhe verify` re-hashes.
pub fn chat_delivered_text(body: &serde_json::Value) -> String {
    let mut out = String::new();
    let Some(choices) = body.get("choices").and_then(|c| c.as_array()) else {
        return out;
    };
    for choice in choices {
        match crate::dialect::json::at(choice, &["message", "content"]) {
            Some(serde_json::Value::String(s)) => out.push_str(s),
            Some(serde_json::Value::Array(parts)) => {
                for p in parts {
                    if p.get("type").and_then(|t| t.as_str()) == Some("text") {
                        if let Some(t) = p.get("text").and_then(|t| t.as_str()) {
                            out.push_str(t);
                        }
                    }
                }
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::label::config::LabelsConfig;
    use crate::label::sign::verify;

    /// A labeler with explicit and implicit labels on and a fresh key.
    pub(crate) fn test_labeler() -> (Labeler, Arc<Signer>) {
        let mut c = LabelsConfig::default();
        c.implicit.producer = "SHENHE-TEST-001".into();
        c.implicit.signing_key_file = Some("/unused".into());
        c.implicit.public_key_path = Some("/.well-known/aigc-public-key".into());
        let v = c.validate().expect("valid");
        let s = Arc::new(Signer::generate());
        (Labeler::with_signer(&v, Some(s.clone())), s)
    }

    #[test]
    fn apply_explicit_positions() {
        assert_eq!(apply_explicit("hi", "L", Position::Start), "L\nhi");
        assert_eq!(apply_explicit("hi", "L", Position::End), "hi\nL");
        assert_eq!(apply_explicit("hi", "L", Position::Both), "L\nhi\nL");
        assert_eq!(apply_explicit("", "L", Position::Both), "L");
    }

    #[test]
    fn implicit_signs_delivered_text() {
        let (l, s) = test_labeler();
        assert_eq!(l.explicit_text(), Some(crate::label::DEFAULT_TEXT_ZH));
        let delivered = l.label_text("你好");
        assert!(delivered.ends_with("\n【本内容由人工智能生成】"));
        let id = crate::label::new_produce_id();
        let before = crate::metrics::metrics()
            .labels_applied
            .with_label_values(&["text", "implicit", "ok"])
            .get();
        let a = l.implicit_for_text(&id, &delivered).expect("implicit on");
        let after = crate::metrics::metrics()
            .labels_applied
            .with_label_values(&["text", "implicit", "ok"])
            .get();
        assert!(after > before, "metric counted");
        assert_eq!(a.produce_id, id);
        assert_eq!(a.propagate_id, id);
        assert_eq!(a.content_producer, "SHENHE-TEST-001");
        let d: [u8; 32] = Sha256::digest(delivered.as_bytes()).into();
        assert!(verify(&s.verifying_key(), &a, &d).is_ok());
        let d2: [u8; 32] = Sha256::digest("你好".as_bytes()).into();
        assert!(
            verify(&s.verifying_key(), &a, &d2).is_err(),
            "label is part of the signed text"
        );
        assert_eq!(l.header_name(), Some("x-aigc-label"));
        assert!(Labeler::header_value(&a).is_ascii());
        let (path, pem) = l.public_key_route().expect("route");
        assert_eq!(path, "/.well-known/aigc-public-key");
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----"));
    }

    #[test]
    fn disabled_parts_give_none() {
        let mut c = LabelsConfig::default();
        c.explicit.enabled = false;
        c.implicit.enabled = false;
        let v = c.validate().expect("valid");
        let l = Labeler::from_config(&v).expect("no key needed");
        assert_eq!(l.explicit_text(), None);
        assert_eq!(l.label_text("x"), "x");
        assert!(l.implicit_for_text("id", "x").is_none());
        assert!(!l.images().xmp);
    }

    #[test]
    fn from_config_missing_key_file_is_clear() {
        let mut c = LabelsConfig::default();
        c.implicit.producer = "P".into();
        c.implicit.signing_key_file = Some("/nonexistent/shenhe.pem".into());
        let err = Labeler::from_config(&c.validate().expect("valid")).expect_err("no file");
        assert!(err.to_string().contains("shenhe keygen"), "{err}");
    }

    #[test]
    fn chat_text_concatenates_choices() {
        let body = serde_json::json!({"choices":[
            {"index":0,"message":{"role":"assistant","content":"a"}},
            {"index":1,"message":{"role":"assistant","content":[{"type":"text","text":"b"},{"type":"image_url"}]}},
            {"index":2,"message":{"role":"assistant","content":null}}
        ]});
        assert_eq!(chat_delivered_text(&body), "ab");
    }
}
