//! Strict JSON reading for moderated bodies, and rewriting that keeps the bytes nobody changed.
//!
//! Duplicate object keys are refused, in requests and in answers: parsers disagree on which copy
//! wins, so a text could be judged in one copy and read by the other side in the other. A UTF-8
//! byte-order mark is refused for the same reason (some servers skip it, some fail).
//!
//! A moderated body that shenhe changes (a redacted prompt, a labeled or refused answer) is not
//! serialized anew from the parsed value: [`rewrite`] reads the original once more, in step with
//! the changed value, and copies every number, string, boolean and null the change left alone
//! byte for byte (number spellings such as `1.50` or big integers, `\u` escapes), keeps the
//! original key order, and of a string that grew or was changed in the middle copies the
//! unchanged head and tail around the new part. Only spacing between tokens is not kept. Clients
//! see the model server's own spelling wherever shenhe had nothing to say, and a 1 KiB answer
//! with a label costs a skim of the original plus the label's bytes, not a serialization of the
//! whole document.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::map::Entry;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::dialect::error::{ApiError, ErrorKind};

/// The member at `keys` below `v` (objects only): `Value::pointer` without its allocation of
/// every path segment (measured: about 4k instructions of a moderated 1 KB request).
pub fn at<'a>(v: &'a Value, keys: &[&str]) -> Option<&'a Value> {
    keys.iter().try_fold(v, |v, k| v.get(k))
}

/// [`at`] for changing the member.
pub fn at_mut<'a>(v: &'a mut Value, keys: &[&str]) -> Option<&'a mut Value> {
    keys.iter().try_fold(v, |v, k| v.get_mut(k))
}

/// `deserialize_with` for an optional string field of a borrowed read: the string borrowed
/// from the input when it has no escapes. (serde's own impl for `Option<Cow<str>>` copies
/// every string; its `borrow` attribute reaches only a bare `Cow<str>`.) A value that is
/// neither a string nor `null` is an error, as with `Option<Cow<str>>`.
pub fn borrowed_text<'de, D: de::Deserializer<'de>>(
    d: D,
) -> Result<Option<Cow<'de, str>>, D::Error> {
    struct Text;
    impl<'de> Visitor<'de> for Text {
        type Value = Option<Cow<'de, str>>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a string or null")
        }
        fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
            Ok(Some(Cow::Borrowed(v)))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(Cow::Owned(v.to_owned())))
        }
        fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
            Ok(Some(Cow::Owned(v)))
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }
    d.deserialize_any(Text)
}

/// Parse a request body as JSON, refusing duplicate keys, trailing data and non-UTF-8 input.
pub fn parse_strict(bytes: &[u8]) -> Result<Value, ApiError> {
    read_strict(bytes).map_err(|e| {
        ApiError::new(
            ErrorKind::BadJson,
            format!("the request body is not valid JSON: {e}"),
        )
    })
}

/// Parse a whole upstream answer as strictly as a request: an answer with duplicate keys is not
/// delivered (fail closed), since the copy shenhe judged might not be the one the client reads.
pub fn parse_answer(bytes: &[u8]) -> Result<Value, String> {
    read_strict(bytes)
}

fn read_strict(bytes: &[u8]) -> Result<Value, String> {
    if bytes.starts_with(&[0xEF, 0xBB, 0xBF]) {
        return Err("it starts with a byte-order mark; send plain UTF-8 JSON".into());
    }
    // Validated once here, so the parser need not validate each string again.
    let text = crate::utf8::str_of(bytes).map_err(|e| format!("it is not UTF-8: {e}"))?;
    let mut de = serde_json::Deserializer::from_str(text);
    StrictValue
        .deserialize(&mut de)
        .and_then(|v| de.end().map(|_| v))
        .map_err(|e| e.to_string())
}

/// The bytes of `doc`, an edited copy of the document `original` was parsed into (by
/// [`parse_strict`] or [`parse_answer`]): see the module docs. The original is read once, in
/// step with `doc`; whatever cannot be matched to it is serialized as serde_json would.
pub fn rewrite(original: &[u8], doc: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(original.len() + 256);
    let spliced = crate::utf8::str_of(original).is_ok_and(|text| {
        let mut de = serde_json::Deserializer::from_str(text);
        Splice {
            after: doc,
            out: &mut out,
        }
        .deserialize(&mut de)
        .and_then(|()| de.end())
        .is_ok()
    });
    if !spliced {
        out.clear();
        write_json(doc, &mut out);
    }
    out
}

fn write_json<T: serde::Serialize + ?Sized>(v: &T, out: &mut Vec<u8>) {
    // Serializing a `Value` or a `str` into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, v);
}

/// Reads one original value while writing `after` in its place.
struct Splice<'v, 'o> {
    after: &'v Value,
    out: &'o mut Vec<u8>,
}

impl<'de> DeserializeSeed<'de> for Splice<'_, '_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        match self.after {
            Value::Object(_) | Value::Array(_) => d.deserialize_any(self),
            leaf => {
                let raw = <&RawValue as serde::Deserialize>::deserialize(d)?;
                splice_leaf(raw.get(), leaf, self.out);
                Ok(())
            }
        }
    }
}

impl<'de> Visitor<'de> for Splice<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Value::Object(m) = self.after else {
            while map
                .next_entry::<de::IgnoredAny, de::IgnoredAny>()?
                .is_some()
            {}
            write_json(self.after, self.out);
            return Ok(());
        };
        let out = self.out;
        out.push(b'{');
        let mut kept: Vec<&str> = Vec::with_capacity(m.len());
        while let Some(k) = map.next_key_seed(KeySeed)? {
            let Some((key, child)) = m.get_key_value(k.as_ref()) else {
                map.next_value::<de::IgnoredAny>()?;
                continue;
            };
            // Duplicate keys: which copy `doc` holds is unknown, so nothing is reused.
            if kept.contains(&key.as_str()) {
                return Err(de::Error::custom("duplicate key"));
            }
            if !kept.is_empty() {
                out.push(b',');
            }
            kept.push(key);
            write_json(key.as_str(), out);
            out.push(b':');
            map.next_value_seed(Splice { after: child, out })?;
        }
        for (key, child) in m {
            if !kept.contains(&key.as_str()) {
                if !kept.is_empty() {
                    out.push(b',');
                }
                kept.push(key);
                write_json(key.as_str(), out);
                out.push(b':');
                write_json(child, out);
            }
        }
        out.push(b'}');
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Value::Array(items) = self.after else {
            while seq.next_element::<de::IgnoredAny>()?.is_some() {}
            write_json(self.after, self.out);
            return Ok(());
        };
        let out = self.out;
        out.push(b'[');
        let mut original_left = true;
        for (i, child) in items.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            if original_left {
                original_left = seq
                    .next_element_seed(Splice { after: child, out })?
                    .is_some();
            }
            if !original_left {
                write_json(child, out);
            }
        }
        if original_left {
            while seq.next_element::<de::IgnoredAny>()?.is_some() {}
        }
        out.push(b']');
        Ok(())
    }
    // The original holds a scalar where `doc` now has a container.
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        self.scalar()
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        self.scalar()
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        self.scalar()
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        self.scalar()
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        self.scalar()
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        self.scalar()
    }
}

impl Splice<'_, '_> {
    fn scalar<E>(self) -> Result<(), E> {
        write_json(self.after, self.out);
        Ok(())
    }
}

/// Length of the common prefix of `a` and `b`, compared a block at a time.
fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    let n = a.len().min(b.len());
    let mut i = 0;
    while i + 32 <= n && a[i..i + 32] == b[i..i + 32] {
        i += 32;
    }
    i + a[i..n]
        .iter()
        .zip(&b[i..n])
        .take_while(|(x, y)| x == y)
        .count()
}

/// Length of the common suffix of `a` and `b`, compared a block at a time.
fn common_suffix(a: &[u8], b: &[u8]) -> usize {
    let n = a.len().min(b.len());
    let (a, b) = (&a[a.len() - n..], &b[b.len() - n..]);
    let mut i = 0;
    while i + 32 <= n && a[n - i - 32..n - i] == b[n - i - 32..n - i] {
        i += 32;
    }
    i + a[..n - i]
        .iter()
        .rev()
        .zip(b[..n - i].iter().rev())
        .take_while(|(x, y)| x == y)
        .count()
}

/// An object key, borrowed from the original when it has no escapes.
pub(super) struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Cow<'de, str>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Cow<'de, str>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
}

/// A string, number, boolean or null of `doc`, where the original held `raw`.
fn splice_leaf(raw: &str, v: &Value, out: &mut Vec<u8>) {
    let same = match (raw.as_bytes().first(), v) {
        (Some(b'"'), Value::String(s)) => match splice_string(raw, s, out) {
            Some(true) => true,
            Some(false) => return,
            None => false,
        },
        (Some(b'"' | b'{' | b'['), _) => false,
        _ => serde_json::from_str::<Value>(raw).is_ok_and(|o| o == *v),
    };
    if same {
        out.extend_from_slice(raw.as_bytes());
    } else {
        write_json(v, out);
    }
}

/// A string: `Some(true)` when unchanged (nothing written). Else, when the original has no
/// escapes, its unchanged head and tail are copied around the escaped middle that differs (a
/// label before or after a text, a mask inside it): `Some(false)`, written. `None`: changed, and
/// the original has escapes; nothing written.
fn splice_string(raw: &str, s: &str, out: &mut Vec<u8>) -> Option<bool> {
    let inner = &raw[1..raw.len() - 1];
    if inner.contains('\\') {
        return serde_json::from_str::<Cow<str>>(raw)
            .is_ok_and(|o| o == s)
            .then_some(true);
    }
    if inner == s {
        return Some(true);
    }
    let (a, b) = (inner.as_bytes(), s.as_bytes());
    let mut head = common_prefix(a, b);
    while !s.is_char_boundary(head) {
        head -= 1;
    }
    let most = a.len().min(b.len()) - head;
    let mut tail = common_suffix(&a[head..], &b[head..]).min(most);
    while !s.is_char_boundary(s.len() - tail) {
        tail -= 1;
    }
    out.push(b'"');
    out.extend_from_slice(&a[..head]);
    let mid = out.len();
    write_json(&s[head..s.len() - tail], out);
    // drop the quotes serde_json put around the middle
    out.pop();
    out.remove(mid);
    out.extend_from_slice(&a[a.len() - tail..]);
    out.push(b'"');
    Some(false)
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
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let v = map.next_value_seed(StrictValue)?;
            match out.entry(key) {
                Entry::Vacant(e) => {
                    e.insert(v);
                }
                Entry::Occupied(e) => {
                    return Err(de::Error::custom(format!("duplicate key `{}`", e.key())));
                }
            }
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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

    fn rewritten(original: &str, edit: impl FnOnce(&mut Value)) -> String {
        let mut doc = parse_answer(original.as_bytes()).unwrap();
        edit(&mut doc);
        let out = String::from_utf8(rewrite(original.as_bytes(), &doc)).unwrap();
        assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), doc, "{out}");
        out
    }

    #[test]
    fn values_left_alone_keep_their_spelling() {
        let original = " {\"id\" : \"c1\", \"n\": 1.0e5, \"big\": 12345678901234567890123,\n \"t\": \"caf\\u00e9 \\/\", \"a\": [ 1 , true, null ] }\n";
        assert_eq!(
            rewritten(original, |_| {}),
            r#"{"id":"c1","n":1.0e5,"big":12345678901234567890123,"t":"caf\u00e9 \/","a":[1,true,null]}"#
        );
    }

    #[test]
    fn a_labeled_text_keeps_its_original_head_and_tail_and_its_neighbours() {
        let original = r#"{"choices":[{"index":0,"message":{"role":"assistant","content":"你好 world"}}],"usage":{"cost": 1.50e0}}"#;
        let out = rewritten(original, |d| {
            let c = d.pointer_mut("/choices/0/message/content").unwrap();
            *c = Value::String(format!("【AI生成】\"{}\"", c.as_str().unwrap()));
        });
        assert!(
            out.contains(r#""content":"【AI生成】\"你好 world\"""#),
            "{out}"
        );
        assert!(out.contains(r#""usage":{"cost":1.50e0}"#), "{out}");
        // a mask in the middle of a text
        let out = rewritten(original, |d| {
            *d.pointer_mut("/choices/0/message/content").unwrap() = "你好 w***d".into();
        });
        assert!(out.contains(r#""content":"你好 w***d""#), "{out}");
    }

    #[test]
    fn added_removed_and_retyped_values_are_written_anew() {
        let original = r#"{"a": [1, 2, 3], "b": {"x": "y"}, "c": "s\u0041"}"#;
        let out = rewritten(original, |d| {
            d["a"].as_array_mut().unwrap().truncate(2);
            d["b"].as_object_mut().unwrap().remove("x");
            d["b"]["z"] = 1.into();
            d["c"] = Value::Null;
            d["aigc"] = serde_json::json!({"Label": "1"});
        });
        assert_eq!(
            out,
            r#"{"a":[1,2],"b":{"z":1},"c":null,"aigc":{"Label":"1"}}"#
        );
        // a changed string with escapes in the original is escaped whole
        let out = rewritten(r#"{"c":"s\u0041 t"}"#, |d| d["c"] = "sA u".into());
        assert_eq!(out, r#"{"c":"sA u"}"#);
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i32>().prop_map(Value::from),
            "[a-zé\"\\\\中\n ]{0,8}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 40, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::btree_map("[a-d]{1,2}", inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Apply edit number `k` to the `n`-th string or container met in document order.
    fn edit(v: &mut Value, n: &mut usize, k: u8, text: &str) {
        if *n == 0 {
            *n = usize::MAX;
            match (v, k % 4) {
                (Value::String(s), 0) => s.insert_str(0, text),
                (Value::String(s), 1) => s.push_str(text),
                (Value::Object(m), 2) => {
                    m.insert(text.to_owned(), Value::from(text));
                }
                (Value::Array(a), 3) => a.push(Value::from(text)),
                (other, _) => *other = Value::from(text),
            }
            return;
        }
        *n = n.saturating_sub(1);
        match v {
            Value::Array(a) => a.iter_mut().for_each(|c| edit(c, n, k, text)),
            Value::Object(m) => m.values_mut().for_each(|c| edit(c, n, k, text)),
            _ => {}
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(400))]
        /// Whatever the edits and the original's spelling, the rewrite reads as the edited value.
        #[test]
        fn a_rewrite_reads_as_the_edited_document(
            doc in json_value(),
            pretty in any::<bool>(),
            edits in prop::collection::vec((0usize..30, any::<u8>(), "[x\"\\\\é]{0,4}"), 0..4),
        ) {
            let original = if pretty {
                serde_json::to_string_pretty(&doc).unwrap()
            } else {
                serde_json::to_string(&doc).unwrap()
            };
            let mut edited = doc.clone();
            for (n, k, text) in &edits {
                let mut n = *n;
                edit(&mut edited, &mut n, *k, text);
            }
            let out = rewrite(original.as_bytes(), &edited);
            let back: Value = serde_json::from_slice(&out).unwrap();
            proptest::prop_assert_eq!(back, edited);
            if edits.is_empty() {
                proptest::prop_assert_eq!(out, serde_json::to_vec(&doc).unwrap());
            }
        }
    }
}
