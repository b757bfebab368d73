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
//! steps, more than [`MAX_ACTIVE`] patterns live at one place, nesting past [`MAX_NESTING`], a
//! number that is infinite as a float) gives `None`: the caller then reads the body as a tree,
//! which reports the error or handles the shape. It may decline more than serde_json refuses,
//! never less (a proptest mutates documents to hold it to that).

use std::borrow::Cow;
use std::collections::HashSet;
use std::ops::Range;

use super::paths::{Pat, Seg};
use crate::json_str::special;

/// Most `*` steps a pattern may have here (the dialects' own patterns have two at most).
pub const MAX_STARS: usize = 4;
/// Most patterns live at one place of the document.
pub const MAX_ACTIVE: usize = 32;
/// Most arrays and objects nested in one another; deeper documents are declined (the tree
/// reader, serde_json, refuses past 128).
pub const MAX_NESTING: usize = 100;

/// A value found at a pattern.
#[derive(Debug, Clone, PartialEq)]
pub struct Capture<'a> {
    /// Which pattern (its position in the list given to [`capture`]).
    pub pattern: usize,
    /// The array positions the pattern's `*` steps took, in order.
    stars: [u32; MAX_STARS],
    /// The value's bytes in the body (a string with its quotes). Known for every value where
    /// the pattern ends, except where another pattern also goes on below the same place: there
    /// only a string without escapes has a span.
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

    /// Every `*` step's index (see [`Capture::star`]).
    pub fn stars(&self) -> [u32; MAX_STARS] {
        self.stars
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
    let mut active = Active::default();
    for p in 0..pats.len() {
        active.push(p, 0);
    }
    let mut r = Reader {
        text,
        b: body,
        pos: 0,
        pats: &pats,
        out: Vec::new(),
        keys: Vec::new(),
    };
    r.value(active, [0; MAX_STARS], 0, 0)?;
    r.ws();
    (r.pos == body.len()).then_some(r.out)
}

/// The patterns live at one place: (pattern, how many of its steps are behind).
#[derive(Clone, Copy, Default)]
struct Active {
    items: [(u8, u8); MAX_ACTIVE],
    len: usize,
}

impl Active {
    fn push(&mut self, pattern: usize, step: usize) {
        // `capture` checks the pattern count; a step past 255 cannot be reached (nesting limit).
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

/// The reader: a strict JSON (RFC 8259) recognizer over text already checked as UTF-8.
///
/// Written by hand: driving serde_json through `DeserializeSeed` visitors (the first version)
/// decoded every key and number and went through a visitor call per value; this reader scans
/// strings many bytes at a time (`json_str::special`) and decodes only keys with escapes and
/// captured strings (bench/README, items 20 and 38). What it is unsure of it declines, and serde_json, on the tree
/// path, has the last word.
struct Reader<'a, 'p> {
    text: &'a str,
    b: &'a [u8],
    pos: usize,
    pats: &'p [&'p [Pat]],
    out: Vec<Capture<'a>>,
    /// The keys of the objects being read, outermost first: one list for the whole body, so
    /// that an object costs no allocation of its own ([`Keys`] says whose they are).
    keys: Vec<Cow<'a, str>>,
}

impl<'a> Reader<'a, '_> {
    fn is_end(&self, (p, s): (usize, usize)) -> bool {
        s == self.pats[p].len()
    }

    fn ws(&mut self) {
        while let Some(&c) = self.b.get(self.pos) {
            if !matches!(c, b' ' | b'\n' | b'\r' | b'\t') {
                break;
            }
            self.pos += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    /// Skip whitespace, then take `c` if it comes next.
    fn eat(&mut self, c: u8) -> bool {
        self.ws();
        if self.peek() == Some(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn record(
        &mut self,
        active: &Active,
        stars: [u32; MAX_STARS],
        span: Option<Range<usize>>,
        leaf: Leaf<'a>,
    ) {
        for a in active.iter() {
            if self.is_end(a) {
                self.out.push(Capture {
                    pattern: a.0,
                    stars,
                    span: span.clone(),
                    leaf: leaf.clone(),
                });
            }
        }
    }

    /// The patterns that go on below a value, stepped along `key` or an array element.
    fn below(&self, active: &Active, key: Option<&str>) -> Active {
        let mut next = Active::default();
        for (p, s) in active.iter() {
            match (self.pats[p].get(s), key) {
                (Some(Pat::Key(k)), Some(key)) if k == key => next.push(p, s + 1),
                (Some(Pat::Any), None) => next.push(p, s + 1),
                _ => {}
            }
        }
        next
    }

    /// One value with the patterns live at it; `arrays` counts the arrays above it, `nesting`
    /// the arrays and objects.
    fn value(
        &mut self,
        active: Active,
        stars: [u32; MAX_STARS],
        arrays: usize,
        nesting: usize,
    ) -> Option<()> {
        self.ws();
        if active.is_empty() {
            return self.skip(nesting);
        }
        let start = self.pos;
        if active.iter().all(|a| self.is_end(a)) {
            // Patterns end here and only here: the value's span is wanted, whatever its type.
            let leaf = match self.peek()? {
                b'"' => self.string_leaf()?.0,
                _ => self.skipped_leaf(nesting)?,
            };
            self.record(&active, stars, Some(start..self.pos), leaf);
            return Some(());
        }
        // Patterns go on below: the value is read once, as it comes.
        match self.peek()? {
            b'{' => {
                // The object's own captures come before those inside it (document order).
                self.record(&active, stars, None, Leaf::Object);
                self.object(nesting, |r, key| {
                    let below = r.below(&active, Some(key));
                    r.value(below, stars, arrays, nesting + 1)
                })
            }
            b'[' => {
                self.record(&active, stars, None, Leaf::Array);
                let below = self.below(&active, None);
                self.array(nesting, |r, i| {
                    let mut st = stars;
                    // Live patterns took the same path here, so their `*` steps are the arrays
                    // passed through; a pattern has `MAX_STARS` at most, so a live one never
                    // goes deeper.
                    if arrays < MAX_STARS {
                        st[arrays] = i;
                    }
                    r.value(below, st, arrays + 1, nesting + 1)
                })
            }
            b'"' => {
                // With escapes, the decoded text is not what the body holds: no span.
                let (leaf, escaped) = self.string_leaf()?;
                self.record(&active, stars, (!escaped).then_some(start..self.pos), leaf);
                Some(())
            }
            _ => {
                let leaf = self.skipped_leaf(nesting)?;
                self.record(&active, stars, None, leaf);
                Some(())
            }
        }
    }

    /// A string at the cursor as a leaf, and whether it had escapes.
    fn string_leaf(&mut self) -> Option<(Leaf<'a>, bool)> {
        let (text, escaped) = self.decoded()?;
        Some((Leaf::Str(text), escaped))
    }

    /// A string at the cursor, decoded (borrowed when it has no escapes), and whether it had
    /// escapes.
    fn decoded(&mut self) -> Option<(Cow<'a, str>, bool)> {
        let (s, escaped) = self.string()?;
        let text = match escaped {
            false => Cow::Borrowed(s),
            true => Cow::Owned(unescape(s)?),
        };
        Some((text, escaped))
    }

    /// Read past a value that is not a string, and say what it was.
    fn skipped_leaf(&mut self, nesting: usize) -> Option<Leaf<'a>> {
        let start = self.pos;
        let first = self.peek()?;
        self.skip(nesting)?;
        Some(match first {
            b'[' => Leaf::Array,
            b'{' => Leaf::Object,
            b'n' => Leaf::Null,
            b'0'..=b'9' => self.text[start..self.pos]
                .parse()
                .map_or(Leaf::Other, Leaf::U64),
            _ => Leaf::Other,
        })
    }

    /// Read past one value no pattern looks into, as strictly as the rest (duplicate keys).
    fn skip(&mut self, nesting: usize) -> Option<()> {
        self.ws();
        match self.peek()? {
            b'{' => self.object(nesting, |r, _| r.skip(nesting + 1)),
            b'[' => self.array(nesting, |r, _| r.skip(nesting + 1)),
            b'"' => {
                let (s, escaped) = self.string()?;
                if escaped {
                    check_escapes(s)?;
                }
                Some(())
            }
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    /// An object at the cursor: each member's key checked against the others, then
    /// `member(reader, key)` reads its value.
    fn object(
        &mut self,
        nesting: usize,
        mut member: impl FnMut(&mut Self, &str) -> Option<()>,
    ) -> Option<()> {
        self.pos += 1;
        if nesting >= MAX_NESTING {
            return None;
        }
        let mut keys = Keys::new(self.keys.len());
        if self.eat(b'}') {
            return Some(());
        }
        loop {
            self.ws();
            let key = self.key()?;
            if !self.eat(b':') {
                return None;
            }
            member(self, &key)?;
            keys.insert(&mut self.keys, key)?;
            if self.eat(b'}') {
                self.keys.truncate(keys.from);
                return Some(());
            }
            if !self.eat(b',') {
                return None;
            }
        }
    }

    /// An array at the cursor: `element(reader, index)` reads each element.
    fn array(
        &mut self,
        nesting: usize,
        mut element: impl FnMut(&mut Self, u32) -> Option<()>,
    ) -> Option<()> {
        self.pos += 1;
        if nesting >= MAX_NESTING {
            return None;
        }
        if self.eat(b']') {
            return Some(());
        }
        let mut i = 0u32;
        loop {
            element(self, i)?;
            if self.eat(b']') {
                return Some(());
            }
            if !self.eat(b',') {
                return None;
            }
            i = i.saturating_add(1);
        }
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        if self.b[self.pos..].starts_with(word) {
            self.pos += word.len();
            Some(())
        } else {
            None
        }
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`. A number serde_json would read as a
    /// float is declined when it is not finite there (serde_json refuses it as out of range).
    fn number(&mut self) -> Option<()> {
        let start = self.pos;
        let digits = |r: &mut Self| {
            let from = r.pos;
            while matches!(r.peek(), Some(b'0'..=b'9')) {
                r.pos += 1;
            }
            r.pos - from
        };
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        let first = self.peek()?;
        let int = digits(self);
        if int == 0 || (first == b'0' && int > 1) {
            return None;
        }
        let mut integer = true;
        if self.peek() == Some(b'.') {
            self.pos += 1;
            integer = false;
            if digits(self) == 0 {
                return None;
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.pos += 1;
            integer = false;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if digits(self) == 0 {
                return None;
            }
        }
        let raw = &self.text[start..self.pos];
        // Integers of up to 18 digits fit i64 and u64; longer ones, and every other number,
        // become a float in serde_json, which must be finite.
        if (!integer || int > 18) && !raw.parse::<f64>().ok()?.is_finite() {
            return None;
        }
        Some(())
    }

    /// A string at the cursor: its text between the quotes (raw, escapes not decoded) and
    /// whether it has escapes. Refuses control characters.
    fn string(&mut self) -> Option<(&'a str, bool)> {
        debug_assert_eq!(self.peek(), Some(b'"'));
        self.pos += 1;
        let start = self.pos;
        let mut escaped = false;
        loop {
            self.pos = special(self.b, self.pos);
            match self.peek()? {
                b'"' => {
                    let s = &self.text[start..self.pos];
                    self.pos += 1;
                    return Some((s, escaped));
                }
                b'\\' => {
                    escaped = true;
                    // The escaped character is checked when the string is decoded or checked.
                    self.pos += 2;
                    if self.pos > self.b.len() {
                        return None;
                    }
                }
                _ => return None, // a control character
            }
        }
    }

    /// An object key, decoded.
    fn key(&mut self) -> Option<Cow<'a, str>> {
        if self.peek() != Some(b'"') {
            return None;
        }
        Some(self.decoded()?.0)
    }
}

/// Check the escapes of a raw string as [`unescape`] would, without building the text.
fn check_escapes(raw: &str) -> Option<()> {
    unescape_into(raw, None)
}

/// Decode a raw JSON string's escapes; `None` for an unknown escape or a lone surrogate.
fn unescape(raw: &str) -> Option<String> {
    let mut out = String::with_capacity(raw.len());
    unescape_into(raw, Some(&mut out))?;
    Some(out)
}

fn unescape_into(raw: &str, mut out: Option<&mut String>) -> Option<()> {
    let b = raw.as_bytes();
    let mut i = 0;
    let mut plain = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            i += 1;
            continue;
        }
        if let Some(o) = out.as_deref_mut() {
            o.push_str(&raw[plain..i]);
        }
        let c = *b.get(i + 1)?;
        i += 2;
        let ch = match c {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let hi = hex4(b, i)?;
                i += 4;
                match hi {
                    0xD800..=0xDBFF => {
                        if b.get(i..i + 2)? != b"\\u" {
                            return None;
                        }
                        let lo = hex4(b, i + 2)?;
                        if !(0xDC00..=0xDFFF).contains(&lo) {
                            return None;
                        }
                        i += 6;
                        char::from_u32(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00))?
                    }
                    0xDC00..=0xDFFF => return None,
                    _ => char::from_u32(hi)?,
                }
            }
            _ => return None,
        };
        if let Some(o) = out.as_deref_mut() {
            o.push(ch);
        }
        plain = i;
    }
    if let Some(o) = out {
        o.push_str(&raw[plain..]);
    }
    Some(())
}

fn hex4(b: &[u8], at: usize) -> Option<u32> {
    let h = b.get(at..at + 4)?;
    let mut v = 0;
    for &c in h {
        v = v * 16 + char::from(c).to_digit(16)?;
    }
    Some(v)
}

/// The keys of one object, to refuse a duplicate: those of the reader's list from `from` on
/// while the object is small (the objects inside it have left theirs by the time its next key
/// comes), a hash set past that (an object of many keys must not cost a quadratic compare).
struct Keys<'de> {
    from: usize,
    many: Option<HashSet<Cow<'de, str>>>,
}

impl<'de> Keys<'de> {
    const FEW: usize = 16;

    fn new(from: usize) -> Self {
        Keys { from, many: None }
    }

    /// `None` when the key is already there.
    fn insert(&mut self, list: &mut Vec<Cow<'de, str>>, key: Cow<'de, str>) -> Option<()> {
        let fresh = match &mut self.many {
            Some(set) => set.insert(key),
            None if list.len() - self.from < Self::FEW => {
                let fresh = !list[self.from..].contains(&key);
                list.push(key);
                fresh
            }
            None => {
                let mut set: HashSet<Cow<'de, str>> = list.drain(self.from..).collect();
                let fresh = set.insert(key);
                self.many = Some(set);
                fresh
            }
        };
        fresh.then_some(())
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

    /// Both serde_json's strict reader and this one refuse `bad`.
    fn refused_by_both(bad: &[u8], p: &[Vec<Pat>]) {
        let shown = String::from_utf8_lossy(bad);
        assert!(parse_strict(bad).is_err(), "{shown}");
        assert!(capture(bad, p).is_none(), "{shown}");
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
            refused_by_both(bad, &p);
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
    fn keys_are_compared_within_their_own_object_only() {
        let p = pats(&["messages.*.content"]);
        // The same key in a parent, a child and siblings is no duplicate.
        let mut many: String = (0..40).map(|i| format!("\"k{i}\":{i},")).collect();
        many.pop();
        for good in [
            r#"{"k":{"k":{"k":1}},"j":{"k":2},"messages":[{"content":"x","k":{"content":1}}]}"#
                .to_string(),
            format!(r#"{{"k0":{{{many}}},"k1":{{{many}}},"messages":[]}}"#),
            format!(r#"{{{many},"in":{{{many}}},"messages":[]}}"#),
        ] {
            assert!(capture(good.as_bytes(), &p).is_some(), "{good}");
            assert!(parse_strict(good.as_bytes()).is_ok());
        }
        // A duplicate after a child that held the same keys, and after a child of many keys.
        for bad in [
            r#"{"k":{"k":1,"j":2},"j":1,"j":2}"#.to_string(),
            format!(r#"{{"in":{{{many}}},"k3":1,"in":2}}"#),
            format!(r#"{{{many},"in":{{{many}}},"k39":0}}"#),
        ] {
            refused_by_both(bad.as_bytes(), &p);
        }
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

    #[test]
    fn the_grammar_is_read_as_serde_json_reads_it() {
        let p = pats(&["a", "b.*"]);
        for good in [
            &br#"{"a":-0}"#[..],
            br#"{"a":1.5e-3,"b":[1E+2,0.0,-12]}"#,
            br#" { "a" : [ true , false , null ] } "#,
            br#"{"a":123456789012345678901234567890}"#,
            br#"{"a":"\ud83d\ude00 \u00e9 \/ \b\f\n\r\t \" \\"}"#,
            br#"{"\u0062":["x"]}"#,
            b"{\"a\":\"\xe4\xb8\xad\"}\n",
        ] {
            let shown = String::from_utf8_lossy(good);
            assert!(parse_strict(good).is_ok(), "{shown}");
            assert!(capture(good, &p).is_some(), "{shown}");
        }
        for bad in [
            &b""[..],
            b"   ",
            br#"{"a":01}"#,
            br#"{"a":-}"#,
            br#"{"a":1.}"#,
            br#"{"a":.5}"#,
            br#"{"a":1e}"#,
            br#"{"a":1e400}"#,
            br#"{"a":+1}"#,
            br#"{"a":tru}"#,
            br#"{"a":nul}"#,
            br#"{"a":[1,]}"#,
            br#"{"a":1,}"#,
            br#"{"a" 1}"#,
            br#"{a:1}"#,
            br#"{"a":1}}"#,
            br#"{"a":"\x"}"#,
            br#"{"a":"\u12"}"#,
            br#"{"a":"\udc00"}"#,
            br#"{"a":"\ud800\u0041"}"#,
            b"{\"a\":\"line\nbreak\"}",
            b"{\"a\":\"tab\there\"}",
            br#"{"a":"open}"#,
            br#"{"b":["\q"]}"#,
            br#"{"c":{"\u0061":1,"a":2}}"#,
        ] {
            refused_by_both(bad, &p);
        }
        // Nesting past the limit is declined; serde_json refuses past 128 itself.
        let deep = format!(
            "{}{}",
            "[".repeat(MAX_NESTING + 1),
            "]".repeat(MAX_NESTING + 1)
        );
        assert!(capture(deep.as_bytes(), &p).is_none());
        let ok = format!("{}{}", "[".repeat(MAX_NESTING), "]".repeat(MAX_NESTING));
        assert!(capture(ok.as_bytes(), &p).is_some());
    }

    #[test]
    fn escaped_strings_are_decoded_and_keys_compared_decoded() {
        let p = pats(&["a", "b.*"]);
        let body = br#"{"\u0061":"x\u4e2dy","b":["\ud83d\ude00",7]}"#;
        let caps = capture(body, &p).unwrap();
        assert_eq!(caps[0].text(), Some("x中y"));
        assert_eq!(
            caps[0].span.clone().map(|s| &body[s]),
            Some(&br#""x\u4e2dy""#[..])
        );
        assert_eq!(caps[1].text(), Some("😀"));
        assert_eq!(caps[2].leaf, Leaf::U64(7));
    }

    /// Bytes that JSON gives meaning to, for mutating documents.
    fn mutation() -> impl Strategy<Value = (usize, u8, u8)> {
        let byte = prop::sample::select(b"{}[],:\"\\ \n\t0159-+.eEtfnulrsaux\x01\xe4".to_vec());
        (any::<usize>(), 0u8..3, byte)
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
        /// A document changed at a few places is taken only when serde_json's strict reader
        /// takes it too (declining more is allowed: the tree then decides), and a valid one
        /// without exponents is taken.
        #[test]
        fn never_more_lenient_than_the_tree(
            v in json_value(),
            edits in prop::collection::vec(mutation(), 0..4),
        ) {
            let mut body = serde_json::to_vec(&v).unwrap();
            for (at, op, b) in edits {
                let at = at % (body.len() + 1);
                match op {
                    0 => body.insert(at, b),
                    1 if at < body.len() => { body.remove(at); }
                    _ if at < body.len() => body[at] = b,
                    _ => {}
                }
            }
            let p = pats(&["messages.*.content", "content", "*.text", "a"]);
            let strict = parse_strict(&body).is_ok();
            let taken = capture(&body, &p).is_some();
            prop_assert!(!taken || strict, "taken but not strict JSON: {}", String::from_utf8_lossy(&body));
            let plain = !body
                .windows(2)
                .any(|w| w[0].is_ascii_digit() && matches!(w[1], b'e' | b'E'));
            prop_assert!(!strict || taken || !plain, "strict JSON declined: {}", String::from_utf8_lossy(&body));
        }
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
