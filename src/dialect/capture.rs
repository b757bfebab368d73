//! One strict read of a JSON body that picks out the values at a dialect's field patterns, with
//! their byte spans in the body, and builds no tree.
//!
//! This is the read of the clean fast path (`dialect::quick`): most requests and answers hold
//! nothing the policy acts on, and for them shenhe needs the texts (to judge), a few small
//! values (`model`, `response_format.type`, choice indexes) and where the visible texts sit (to
//! splice a label in). Building a `serde_json::Value` tree for that, then reading the original
//! once more to splice, was most of a moderated 1 KB request's own cost (bench/README, item 16).
//!
//! The read is as strict as [`super::json::parse_strict`]: UTF-8 without a byte-order mark, no
//! trailing data, and duplicate object keys refused at any depth, also inside subtrees no pattern
//! reaches. Whatever it cannot do (invalid JSON, a pattern with more than [`MAX_STARS`] `*`
//! steps, more than [`MAX_ACTIVE`] patterns live at one place) gives `None`: the caller then
//! reads the body as a tree, which reports the error or handles the shape.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::ops::Range;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use super::json::KeySeed;
use super::paths::{Pat, Seg};

/// Most `*` steps a pattern may have here (the dialects' own patterns have two at most).
pub const MAX_STARS: usize = 4;
/// Most patterns live at one place of the document.
pub const MAX_ACTIVE: usize = 32;

/// A value found at a pattern.
#[derive(Debug, Clone, PartialEq)]
pub struct Capture<'a> {
    /// Which pattern (its position in the list given to [`capture`]).
    pub pattern: usize,
    /// The array positions the pattern's `*` steps took, in order.
    stars: [u32; MAX_STARS],
    /// The value's bytes in the body (a string with its quotes). Known for every value where
    /// the pattern ends, except where another pattern also goes on below the same place: there
    /// the value is read once, as it comes, and only a string without escapes has a span.
    pub span: Option<Range<usize>>,
    pub leaf: Leaf<'a>,
}

/// What a captured value is.
#[derive(Debug, Clone, PartialEq)]
pub enum Leaf<'a> {
    /// A string, decoded; borrowed from the body when it has no escapes.
    Str(Cow<'a, str>),
    /// A non-negative integer that fits `u64`.
    U64(u64),
    Array,
    Object,
    Null,
    /// A boolean, or any other number.
    Other,
}

impl Capture<'_> {
    /// The position taken by the pattern's `k`-th `*` step.
    pub fn star(&self, k: usize) -> usize {
        self.stars[k] as usize
    }

    /// The concrete path of the value (`pattern` is the one it was found at).
    pub fn path(&self, pattern: &[Pat]) -> Vec<Seg> {
        let mut k = 0;
        pattern
            .iter()
            .map(|p| match p {
                Pat::Key(key) => Seg::Key(key.clone()),
                Pat::Any => {
                    k += 1;
                    Seg::Index(self.star(k - 1))
                }
            })
            .collect()
    }

    /// The string, when the value is one.
    pub fn text(&self) -> Option<&str> {
        match &self.leaf {
            Leaf::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// Every value at any of `patterns` in `body`, in document order; `None` when the body is not
/// strict JSON or the patterns go beyond this reader's limits (see the module docs).
pub fn capture<'a, P: AsRef<[Pat]>>(body: &'a [u8], patterns: &[P]) -> Option<Vec<Capture<'a>>> {
    if body.starts_with(&[0xEF, 0xBB, 0xBF]) {
        return None;
    }
    let pats: Vec<&[Pat]> = patterns.iter().map(AsRef::as_ref).collect();
    if pats.len() > MAX_ACTIVE
        || pats
            .iter()
            .any(|p| p.iter().filter(|s| matches!(s, Pat::Any)).count() > MAX_STARS)
    {
        return None;
    }
    let text = crate::utf8::str_of(body).ok()?;
    let mut out = Vec::new();
    let mut active = Active::default();
    for p in 0..pats.len() {
        active.push(p, 0);
    }
    let mut reader = Reader {
        base: text,
        pats: &pats,
        out: &mut out,
    };
    let mut de = serde_json::Deserializer::from_str(text);
    Node {
        r: &mut reader,
        active,
        stars: [0; MAX_STARS],
        depth: 0,
    }
    .deserialize(&mut de)
    .ok()?;
    de.end().ok()?;
    Some(out)
}

/// The patterns live at one place: (pattern, how many of its steps are behind).
#[derive(Clone, Copy, Default)]
struct Active {
    items: [(u8, u8); MAX_ACTIVE],
    len: usize,
}

impl Active {
    fn push(&mut self, pattern: usize, step: usize) {
        // `capture` checks the pattern count; a step past 255 cannot be reached (depth limit).
        self.items[self.len] = (pattern as u8, step.min(255) as u8);
        self.len += 1;
    }
    fn iter(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.items[..self.len]
            .iter()
            .map(|&(p, s)| (usize::from(p), usize::from(s)))
    }
    fn is_empty(&self) -> bool {
        self.len == 0
    }
}

struct Reader<'a, 'p, 'o> {
    base: &'a str,
    pats: &'p [&'p [Pat]],
    out: &'o mut Vec<Capture<'a>>,
}

impl<'a> Reader<'a, '_, '_> {
    fn is_end(&self, (p, s): (usize, usize)) -> bool {
        s == self.pats[p].len()
    }
    fn offset(&self, part: &str) -> usize {
        part.as_ptr() as usize - self.base.as_ptr() as usize
    }
}

/// One value of the document, with the patterns live at it.
struct Node<'r, 'a, 'p, 'o> {
    r: &'r mut Reader<'a, 'p, 'o>,
    active: Active,
    stars: [u32; MAX_STARS],
    /// How many arrays lie above this value.
    depth: usize,
}

impl<'r, 'a, 'p, 'o> Node<'r, 'a, 'p, 'o> {
    /// The patterns that go on below this value, stepped along `key` or an array element.
    fn below(&self, key: Option<&str>) -> Active {
        let mut next = Active::default();
        for (p, s) in self.active.iter() {
            match (self.r.pats[p].get(s), key) {
                (Some(Pat::Key(k)), Some(key)) if k == key => next.push(p, s + 1),
                (Some(Pat::Any), None) => next.push(p, s + 1),
                _ => {}
            }
        }
        next
    }

    fn child(&mut self, active: Active, index: Option<u32>) -> Node<'_, 'a, 'p, 'o> {
        let (mut stars, mut depth) = (self.stars, self.depth);
        if let Some(i) = index {
            // Live patterns took the same path here, so their `*` steps are the arrays passed
            // through; a pattern has `MAX_STARS` at most, so a live one never goes deeper.
            if depth < MAX_STARS {
                stars[depth] = i;
            }
            depth += 1;
        }
        Node {
            r: self.r,
            active,
            stars,
            depth,
        }
    }

    fn record(&mut self, span: Option<Range<usize>>, leaf: Leaf<'a>) {
        for a in self.active.iter() {
            if self.r.is_end(a) {
                self.r.out.push(Capture {
                    pattern: a.0,
                    stars: self.stars,
                    span: span.clone(),
                    leaf: leaf.clone(),
                });
            }
        }
    }
}

impl<'de: 'a, 'a> DeserializeSeed<'de> for Node<'_, 'a, '_, '_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(mut self, d: D) -> Result<(), D::Error> {
        if self.active.is_empty() {
            return d.deserialize_any(Skip);
        }
        if self.active.iter().any(|a| !self.r.is_end(a)) {
            // Patterns go on below: the value is read once, as it comes (see `Visitor`).
            return d.deserialize_any(self);
        }
        // Patterns end here and only here: the value's span is wanted, whatever its type.
        let raw = <&'de RawValue as serde::Deserialize>::deserialize(d)?;
        let raw: &'a str = raw.get();
        let start = self.r.offset(raw);
        let leaf = match raw.as_bytes()[0] {
            b'"' if !raw.contains('\\') => Leaf::Str(Cow::Borrowed(&raw[1..raw.len() - 1])),
            b'"' => Leaf::Str(Cow::Owned(
                serde_json::from_str::<String>(raw).map_err(de::Error::custom)?,
            )),
            // Still read strictly (duplicate keys) inside.
            b'[' | b'{' => {
                serde_json::from_str::<Strict>(raw).map_err(de::Error::custom)?;
                if raw.starts_with('[') {
                    Leaf::Array
                } else {
                    Leaf::Object
                }
            }
            b'0'..=b'9' => raw.parse().map_or(Leaf::Other, Leaf::U64),
            b'n' => Leaf::Null,
            _ => Leaf::Other,
        };
        self.record(Some(start..start + raw.len()), leaf);
        Ok(())
    }
}

/// A value below which patterns go on; those that end at it are recorded as it comes.
impl<'de: 'a, 'a> Visitor<'de> for Node<'_, 'a, '_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        // The object's own captures come before those inside it (document order).
        self.record(None, Leaf::Object);
        let mut keys = KeySet::default();
        while let Some(key) = map.next_key_seed(KeySeed)? {
            let below = self.below(Some(&key));
            keys.insert(key)?;
            map.next_value_seed(self.child(below, None))?;
        }
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        self.record(None, Leaf::Array);
        let below = self.below(None);
        let mut i = 0u32;
        loop {
            let node = self.child(below, Some(i));
            if seq.next_element_seed(node)?.is_none() {
                return Ok(());
            }
            i = i.saturating_add(1);
        }
    }
    fn visit_borrowed_str<E>(mut self, v: &'de str) -> Result<(), E> {
        // Borrowed: no escapes, so the quotes sit right around it.
        let start = self.r.offset(v) - 1;
        self.record(
            Some(start..start + v.len() + 2),
            Leaf::Str(Cow::Borrowed(v)),
        );
        Ok(())
    }
    fn visit_str<E>(mut self, v: &str) -> Result<(), E> {
        self.record(None, Leaf::Str(Cow::Owned(v.to_owned())));
        Ok(())
    }
    fn visit_u64<E>(mut self, v: u64) -> Result<(), E> {
        self.record(None, Leaf::U64(v));
        Ok(())
    }
    fn visit_unit<E>(mut self) -> Result<(), E> {
        self.record(None, Leaf::Null);
        Ok(())
    }
    fn visit_bool<E>(mut self, _: bool) -> Result<(), E> {
        self.record(None, Leaf::Other);
        Ok(())
    }
    fn visit_i64<E>(mut self, _: i64) -> Result<(), E> {
        self.record(None, Leaf::Other);
        Ok(())
    }
    fn visit_f64<E>(mut self, _: f64) -> Result<(), E> {
        self.record(None, Leaf::Other);
        Ok(())
    }
}

/// A subtree no pattern reaches: read for strictness only (duplicate keys), nothing kept.
struct Skip;

/// [`Skip`] as a type to deserialize a captured container with.
struct Strict;

impl<'de> serde::Deserialize<'de> for Strict {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Strict, D::Error> {
        d.deserialize_any(Skip).map(|()| Strict)
    }
}

impl<'de> DeserializeSeed<'de> for Skip {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(Skip)
    }
}

impl<'de> Visitor<'de> for Skip {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut keys = KeySet::default();
        while let Some(key) = map.next_key_seed(KeySeed)? {
            keys.insert(key)?;
            map.next_value_seed(Skip)?;
        }
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Skip)?.is_some() {}
        Ok(())
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
}

/// The keys of one object, to refuse a duplicate: a list while the object is small, a hash
/// set past that (an object of many keys must not cost a quadratic compare).
#[derive(Default)]
struct KeySet<'de> {
    few: Vec<Cow<'de, str>>,
    many: Option<HashSet<Cow<'de, str>>>,
}

impl<'de> KeySet<'de> {
    const FEW: usize = 16;

    fn insert<E: de::Error>(&mut self, key: Cow<'de, str>) -> Result<(), E> {
        let fresh = match &mut self.many {
            Some(set) => set.insert(key),
            None if self.few.len() < Self::FEW => {
                let fresh = !self.few.contains(&key);
                self.few.push(key);
                fresh
            }
            None => {
                let mut set: HashSet<Cow<'de, str>> = self.few.drain(..).collect();
                let fresh = set.insert(key);
                self.many = Some(set);
                fresh
            }
        };
        if fresh {
            Ok(())
        } else {
            Err(E::custom("duplicate key"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialect::json::parse_strict;
    use crate::dialect::paths::{find_strings, parse_pattern, Found};
    use proptest::prelude::*;
    use serde_json::Value;

    fn pats(list: &[&str]) -> Vec<Vec<Pat>> {
        list.iter().map(|p| parse_pattern(p).unwrap()).collect()
    }

    /// The strings found, as `find_strings` on the tree gives them: pattern by pattern, each in
    /// document order.
    fn found(body: &[u8], patterns: &[Vec<Pat>]) -> Option<Vec<Found>> {
        let mut caps = capture(body, patterns)?;
        caps.sort_by_key(|c| c.pattern);
        Some(
            caps.iter()
                .filter_map(|c| {
                    Some(Found {
                        path: c.path(&patterns[c.pattern]),
                        text: c.text()?.to_owned(),
                    })
                })
                .collect(),
        )
    }

    #[test]
    fn strings_with_their_spans_and_paths() {
        let body = br#"{"model":"m","messages":[{"role":"user","content":"a\nb"},
            {"role":"user","content":[{"type":"text","text":"c"},{"type":"image_url"}]},
            {"content":"d"}],"m2":"e\tf"}"#;
        let p = pats(&[
            "messages.*.content",
            "messages.*.content.*.text",
            "model",
            "m2",
        ]);
        let caps = capture(body, &p).unwrap();
        let text = std::str::from_utf8(body).unwrap();
        let shown: Vec<(usize, Option<&str>, Option<&str>)> = caps
            .iter()
            .map(|c| (c.pattern, c.span.clone().map(|s| &text[s]), c.text()))
            .collect();
        assert_eq!(shown[0], (2, Some("\"m\""), Some("m")));
        // `content` is also a step of pattern 1: read once, as it comes, so a string with an
        // escape has no span there, one without has its own.
        assert_eq!(shown[1], (0, None, Some("a\nb")));
        assert_eq!(caps[2].leaf, Leaf::Array);
        assert_eq!(shown[3], (1, Some("\"c\""), Some("c")));
        assert_eq!(shown[4], (0, Some("\"d\""), Some("d")));
        // Where patterns only end, every value has its span.
        assert_eq!(shown[5], (3, Some(r#""e\tf""#), Some("e\tf")));
        assert_eq!(caps.len(), 6);
        assert_eq!(
            crate::dialect::paths::display(&caps[3].path(&p[1])),
            "messages[1].content[0].text"
        );
        assert_eq!(found(body, &p).unwrap(), {
            let v = parse_strict(body).unwrap();
            let mut out = Vec::new();
            for pat in &p {
                find_strings(&v, pat, &mut out);
            }
            out
        });
    }

    #[test]
    fn numbers_and_other_leaves() {
        let body = br#"{"choices":[{"index":3,"x":-1},{"index":1.5},{"index":null}]}"#;
        let caps = capture(body, &pats(&["choices.*.index", "choices.*.x"])).unwrap();
        let leaves: Vec<&Leaf> = caps.iter().map(|c| &c.leaf).collect();
        assert_eq!(
            leaves,
            [&Leaf::U64(3), &Leaf::Other, &Leaf::Other, &Leaf::Null]
        );
        assert_eq!(caps[2].star(0), 1);
    }

    #[test]
    fn strictness_matches_the_tree_reader() {
        let p = pats(&["messages.*.content"]);
        for bad in [
            &br#"{"messages":[{"content":"x","content":"y"}]}"#[..],
            br#"{"messages":[],"messages":[]}"#,
            br#"{"other":{"deep":[{"k":1,"k":2}]},"messages":[]}"#,
            br#"{"messages":[{"content":{"a":1,"a":2}}]}"#,
            br#"{"messages":[]} {}"#,
            b"\xEF\xBB\xBF{\"messages\":[]}",
            br#"{"messages":[{"content":"\ud800"}]}"#,
            br#"{"messages":[{"content":"x"}]"#,
            b"{\"messages\":[{\"content\":\"\xff\"}]}",
        ] {
            assert!(
                parse_strict(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
            assert!(
                capture(bad, &p).is_none(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        // Escaped keys are compared decoded.
        assert!(capture(br#"{"a":1,"\u0061":2}"#, &p).is_none());
        // Many keys: the hash set takes over, and still finds the duplicate.
        let mut many: String = (0..40).map(|i| format!("\"k{i}\":{i},")).collect();
        many.push_str("\"k7\":0");
        assert!(capture(format!("{{{many}}}").as_bytes(), &p).is_none());
        assert!(parse_strict(format!("{{{many}}}").as_bytes()).is_err());
    }

    #[test]
    fn patterns_beyond_the_limits_are_declined() {
        let deep = pats(&["*.*.*.*.*"]);
        assert!(capture(b"[]", &deep).is_none());
        let many: Vec<Vec<Pat>> = (0..MAX_ACTIVE + 1)
            .map(|i| parse_pattern(&format!("k{i}")).unwrap())
            .collect();
        assert!(capture(b"{}", &many).is_none());
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let text = "[a-c\u{4e2d}\u{e9}\"\\\\\n/ ]{0,6}";
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i32>().prop_map(Value::from),
            text.prop_map(Value::String),
        ];
        leaf.prop_recursive(5, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::btree_map("(messages|content|text|a|\u{4e2d})", inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// The strings found equal what `find_strings` finds on the tree, paths included, and
        /// each span holds the string's JSON spelling.
        #[test]
        fn same_strings_as_the_tree(v in json_value(), pretty in any::<bool>()) {
            let body = if pretty {
                serde_json::to_vec_pretty(&v).unwrap()
            } else {
                serde_json::to_vec(&v).unwrap()
            };
            let p = pats(&[
                "messages.*.content",
                "messages.*.content.*.text",
                "content",
                "*.text",
                "a.*.*.a",
                "messages.a",
            ]);
            let mut want = Vec::new();
            for pat in &p {
                find_strings(&v, pat, &mut want);
            }
            prop_assert_eq!(found(&body, &p).unwrap(), want);
            for c in capture(&body, &p).unwrap() {
                if let (Some(t), Some(span)) = (c.text(), c.span.clone()) {
                    let raw: String = serde_json::from_slice(&body[span]).unwrap();
                    prop_assert_eq!(raw, t);
                }
            }
        }
    }
}
