//! The `AIGC` implicit-label record of GB 45438-2025 Appendix E: seven string fields in a fixed order.
//!
//! Serialized as compact JSON with the fields in Appendix E order, e.g.
//! `{"Label":"1","ContentProducer":"…","ProduceID":"…","ReservedCode1":"…","ContentPropagator":"…","PropagateID":"…","ReservedCode2":"…"}`.
//! This unwrapped object is what goes into the XMP property `TC260:AIGC`, the response header and the
//! `aigc` field of JSON responses. [`Aigc::from_json`] also accepts the wrapped form `{"AIGC":{…}}`
//! that Appendix E shows.

use rand::RngCore;
use serde::{Deserialize, Serialize};

/// `Label` value for content that *is* AI-generated ("1"); "2" is possibly, "3" is suspected.
pub const LABEL_AI_GENERATED: &str = "1";

/// Prefix of the content IDs made by [`new_produce_id`]; it tells a reader the ID came from shenhe.
pub const PRODUCE_ID_PREFIX: &str = "shenhe-";

/// Largest accepted JSON text for one record, in bytes. Real records are a few hundred bytes; the cap
/// bounds the work spent on a hostile upstream block.
const MAX_AIGC_JSON_BYTES: usize = 64 * 1024;

/// The seven fields of GB 45438 Appendix E, in the normative order. Every value is a string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Aigc {
    /// `"1"` is AI-generated, `"2"` possibly, `"3"` suspected.
    #[serde(rename = "Label")]
    pub label: String,
    /// Code of the generation service provider (the operator's configured `producer`).
    #[serde(rename = "ContentProducer")]
    pub content_producer: String,
    /// The producer's unique ID for this content; also the audit join key.
    #[serde(rename = "ProduceID")]
    pub produce_id: String,
    /// Reserved for the producer: shenhe writes its Ed25519 signature here (see `sign.rs`).
    #[serde(rename = "ReservedCode1")]
    pub reserved_code1: String,
    /// Code of the propagating platform; equals `ContentProducer` on first write.
    #[serde(rename = "ContentPropagator")]
    pub content_propagator: String,
    /// The propagator's ID for the content; equals `ProduceID` on first write.
    #[serde(rename = "PropagateID")]
    pub propagate_id: String,
    /// Reserved for the propagator: shenhe's signature when it propagates an upstream-labeled file.
    #[serde(rename = "ReservedCode2")]
    pub reserved_code2: String,
}

/// Why an `AIGC` record could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AigcError {
    #[error("aigc record is larger than {MAX_AIGC_JSON_BYTES} bytes")]
    TooLarge,
    #[error("aigc record is not valid: {0}")]
    Invalid(String),
    #[error("aigc field {field} has value {value:?}, expected \"1\", \"2\" or \"3\"")]
    BadLabel { field: &'static str, value: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wrapped {
    #[serde(rename = "AIGC")]
    aigc: Aigc,
}

impl Aigc {
    /// A first-write record: `Label` "1", propagator fields equal to the producer fields (Appendix E
    /// note 1), `ReservedCode1` set to `signature`, `ReservedCode2` empty.
    pub fn first_write(producer: &str, produce_id: &str, signature: String) -> Self {
        Aigc {
            label: LABEL_AI_GENERATED.to_owned(),
            content_producer: producer.to_owned(),
            produce_id: produce_id.to_owned(),
            reserved_code1: signature,
            content_propagator: producer.to_owned(),
            propagate_id: produce_id.to_owned(),
            reserved_code2: String::new(),
        }
    }

    /// Compact JSON with the fields in Appendix E order.
    pub fn to_json(&self) -> String {
        // Serializing a struct of strings into a String cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parse one record. Rejects missing, extra and duplicated fields, non-string values and a
    /// `Label` other than "1", "2" or "3". Accepts the bare object and the `{"AIGC":{…}}` wrapper.
    pub fn from_json(text: &str) -> Result<Aigc, AigcError> {
        if text.len() > MAX_AIGC_JSON_BYTES {
            return Err(AigcError::TooLarge);
        }
        let aigc = match serde_json::from_str::<Aigc>(text) {
            Ok(a) => a,
            Err(bare) => match serde_json::from_str::<Wrapped>(text) {
                Ok(w) => w.aigc,
                Err(_) => return Err(AigcError::Invalid(bare.to_string())),
            },
        };
        if !matches!(aigc.label.as_str(), "1" | "2" | "3") {
            return Err(AigcError::BadLabel {
                field: "Label",
                value: aigc.label,
            });
        }
        Ok(aigc)
    }

    /// Fields whose values leave the Appendix E character set (see [`is_appendix_e_charset`]).
    /// Upstream records with such values are still read; `shenhe verify` reports them as warnings.
    pub fn charset_violations(&self) -> Vec<&'static str> {
        [
            ("Label", &self.label),
            ("ContentProducer", &self.content_producer),
            ("ProduceID", &self.produce_id),
            ("ReservedCode1", &self.reserved_code1),
            ("ContentPropagator", &self.content_propagator),
            ("PropagateID", &self.propagate_id),
            ("ReservedCode2", &self.reserved_code2),
        ]
        .into_iter()
        .filter(|(_, v)| !is_appendix_e_charset(v))
        .map(|(name, _)| name)
        .collect()
    }
}

/// True when every byte is in the Appendix E set: GB 18030 code points 0x21, 0x23–0x5B and 0x5D–0x7E,
/// i.e. printable ASCII without space, `"` and `\`. (Appendix E also allows an escaped `\"`; shenhe
/// never writes one and treats it as outside the set, the safe choice.) The empty string passes.
pub fn is_appendix_e_charset(s: &str) -> bool {
    s.bytes()
        .all(|b| b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b))
}

/// A new unguessable content ID: [`PRODUCE_ID_PREFIX`] then 128 bits from a cryptographically
/// secure generator seeded from the OS (the thread's own, so that a busy proxy makes no system
/// call per ID) as 32 lowercase hex digits (39 characters, inside the Appendix E character set).
pub fn new_produce_id() -> String {
    let mut raw = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut raw);
    let mut id = String::with_capacity(PRODUCE_ID_PREFIX.len() + 32);
    id.push_str(PRODUCE_ID_PREFIX);
    for b in raw {
        id.push(char::from(HEX[usize::from(b >> 4)]));
        id.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    id
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Lowercase hex of a byte string (used for digests in reports).
pub(crate) fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Aigc {
        Aigc::first_write("shenhe-test", "shenhe-0123", "sig".into())
    }

    #[test]
    fn json_has_appendix_e_field_order() {
        let j = sample().to_json();
        assert_eq!(
            j,
            r#"{"Label":"1","ContentProducer":"shenhe-test","ProduceID":"shenhe-0123","ReservedCode1":"sig","ContentPropagator":"shenhe-test","PropagateID":"shenhe-0123","ReservedCode2":""}"#
        );
        let names = [
            "Label",
            "ContentProducer",
            "ProduceID",
            "ReservedCode1",
            "ContentPropagator",
            "PropagateID",
            "ReservedCode2",
        ];
        let pos: Vec<usize> = names
            .iter()
            .map(|n| j.find(&format!("\"{n}\"")).expect("field present"))
            .collect();
        assert!(pos.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn round_trip_and_wrapper() {
        let a = sample();
        assert_eq!(Aigc::from_json(&a.to_json()), Ok(a.clone()));
        let wrapped = format!("{{\"AIGC\":{}}}", a.to_json());
        assert_eq!(Aigc::from_json(&wrapped), Ok(a));
    }

    #[test]
    fn parse_rejects_missing_extra_duplicate_and_non_string() {
        let full = sample().to_json();
        let missing = full.replace(",\"ReservedCode2\":\"\"", "");
        assert!(Aigc::from_json(&missing).is_err(), "missing field");
        let extra = full.replace("}", ",\"Extra\":\"x\"}");
        assert!(Aigc::from_json(&extra).is_err(), "extra field");
        let dup = full.replace("{\"Label\":\"1\",", "{\"Label\":\"1\",\"Label\":\"1\",");
        let err = Aigc::from_json(&dup).expect_err("duplicate field");
        assert!(err.to_string().contains("duplicate"), "{err}");
        let num = full.replace("\"Label\":\"1\"", "\"Label\":1");
        assert!(Aigc::from_json(&num).is_err(), "number label");
        let bad = full.replace("\"Label\":\"1\"", "\"Label\":\"7\"");
        assert!(matches!(
            Aigc::from_json(&bad),
            Err(AigcError::BadLabel { .. })
        ));
        assert!(Aigc::from_json("not json").is_err());
        assert!(Aigc::from_json(&"x".repeat(MAX_AIGC_JSON_BYTES + 1)).is_err());
    }

    #[test]
    fn produce_ids_are_unique_and_in_charset() {
        let a = new_produce_id();
        let b = new_produce_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), PRODUCE_ID_PREFIX.len() + 32);
        assert!(a.starts_with(PRODUCE_ID_PREFIX));
        assert!(is_appendix_e_charset(&a));
    }

    #[test]
    fn charset_rule() {
        assert!(is_appendix_e_charset("91110108MA01KP2T5U-001_x!"));
        assert!(!is_appendix_e_charset("has space"));
        assert!(!is_appendix_e_charset("quote\""));
        assert!(!is_appendix_e_charset("back\\slash"));
        assert!(!is_appendix_e_charset("人工智能"));
        let mut a = sample();
        a.content_producer = "某公司".into();
        assert_eq!(a.charset_violations(), vec!["ContentProducer"]);
    }
}
