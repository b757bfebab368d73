//! Strict JSON reading for moderated bodies: one reading of the bytes, shared with the upstream.
//!
//! Duplicate object keys are refused: parsers disagree on which copy wins, so a prompt could be
//! judged in one copy and generated from the other. A UTF-8 byte-order mark is refused for the
//! same reason (some servers skip it, some fail).

use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use crate::dialect::error::{ApiError, ErrorKind};

/// Parse a request body as JSON, refusing duplicate keys, trailing data and non-UTF-8 input.
pub fn parse_strict(bytes: &[u8]) -> Result<Value, ApiError> {
    if bytes.starts_with(&[0xEF, 0xBB, 0xBF]) {
        return Err(ApiError::new(
            ErrorKind::BadJson,
            "the request body starts with a byte-order mark; send plain UTF-8 JSON",
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let v = StrictValue
        .deserialize(&mut de)
        .and_then(|v| de.end().map(|_| v))
        .map_err(|e| {
            ApiError::new(
                ErrorKind::BadJson,
                format!("the request body is not valid JSON: {e}"),
            )
        })?;
    Ok(v)
}

/// Deserializes a `serde_json::Value` while refusing duplicate object keys.
struct StrictValue;

impl<'de> DeserializeSeed<'de> for StrictValue {
    type Value = Value;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(StrictValue)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = serde_json::Map::new();
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(de::Error::custom(format!("duplicate key `{key}`")));
            }
            let v = map.next_value_seed(StrictValue)?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_keys_are_refused_at_any_depth() {
        assert!(parse_strict(br#"{"a":1,"a":2}"#).is_err());
        let e = parse_strict(br#"{"messages":[{"content":"x","content":"y"}]}"#).unwrap_err();
        assert!(
            e.message.contains("duplicate key `content`"),
            "{}",
            e.message
        );
        assert!(parse_strict(br#"{"a":{"b":1},"c":{"b":2}}"#).is_ok());
    }

    #[test]
    fn trailing_data_bom_and_bad_utf8_are_refused() {
        assert!(parse_strict(br#"{"a":1} {"a":2}"#).is_err());
        assert!(parse_strict(b"\xEF\xBB\xBF{}").is_err());
        assert!(parse_strict(b"{\"a\":\"\xff\"}").is_err());
        assert_eq!(parse_strict(br#" {"a":"\u00e9"} "#).unwrap()["a"], "é");
    }
}
