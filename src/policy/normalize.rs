//! Text normalization: the matching form of a text plus a map back to original byte offsets.
//!
//! Per character, in this order (each step switchable in `policy.normalize`):
//! 1. `zero_width`: drop format and default-ignorable characters (Cf: U+200B–U+200F, U+2060–U+2064,
//!    U+FEFF, soft hyphen, bidi controls…; variation selectors; Hangul fillers).
//! 2. `width`: NFKC of the character (full-width → ASCII, ligatures, compatibility ideographs).
//! 3. `confusables`: strip diacritics (NFD, drop combining marks, NFC); then a non-ASCII,
//!    non-CJK letter whose UTS #39 skeleton (or its lower case's) is plain ASCII letters or
//!    digits is replaced by that skeleton (Cyrillic а → a, В → B, Greek ο → o).
//! 4. `case`: Unicode lower-casing.
//! 5. `traditional`: traditional → simplified Chinese with fast2s's character table (the
//!    character alone, without its neighbours as context).
//!
//! The result of steps 1–6 for every BMP character is computed once per flag set into a table
//! (cached in a process-wide `LazyLock`); characters outside the BMP are mapped on the fly.
//!
//! Then `separators`: each output character is a *separator* (not alphanumeric: whitespace,
//! punctuation, symbols, emoji, controls), *CJK* (Han, kana, Hangul, Bopomofo) or a *word*
//! character (any other letter, digit or mark). A maximal run of separators between two
//! non-separators L and R:
//! - is dropped at the start or end of the text;
//! - is dropped when L or R is CJK (`制 造*炸|弹` → `制造炸弹`);
//! - is dropped when L and R are both *single* word characters, i.e. neither has a word character
//!   on its other side (`f.o.r.b.i.d`, `f o r b i d` → `forbid`);
//! - otherwise becomes one ASCII space (`forbidden  word` → `forbidden word`, which does not
//!   contain `forbiddenword`; the term `bad phrase` matches `bad   phrase`).
//!
//! Terms go through exactly the same steps, so a term and the text it should match agree.
//! The streaming form ([`NormState`]) carries the pending separator run and one held word
//! character across pieces, so normalizing a text piece by piece gives the same output as
//! normalizing it whole.

use std::sync::{Arc, LazyLock, Mutex};

use unicode_normalization::char::is_combining_mark;
use unicode_normalization::UnicodeNormalization;

use super::config::NormalizeConfig;

/// How a normalized character takes part in separator handling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    Sep = 0,
    Cjk = 1,
    Word = 2,
}

impl Class {
    fn from_bits(b: u32) -> Class {
        match b & 3 {
            0 => Class::Sep,
            1 => Class::Cjk,
            _ => Class::Word,
        }
    }
}

const CLASS_SHIFT: u32 = 24;
const CHAR_MASK: u32 = 0x1F_FFFF;
const REMOVED: u32 = 1 << 30;
const MULTI: u32 = 1 << 31;

const LOW_BITS: u64 = 0x0101_0101_0101_0101;
const HIGH_BITS: u64 = 0x8080_8080_8080_8080;

/// The bytes of `x` that are ASCII letters or digits, as the high bit of each byte (SWAR: no
/// crate gives this for one machine word, and `std::simd` is not stable).
#[inline(always)]
fn alnum_bytes(x: u64) -> u64 {
    // Each byte below 0x80 (high bits cleared first), so the additions carry into no
    // neighbour: `v + (0x80 - lo)` has its high bit set when `v >= lo`, `v + (0x7F - hi)`
    // when `v > hi`.
    let in_range = |v: u64, lo: u8, hi: u8| {
        v.wrapping_add(LOW_BITS * u64::from(0x80 - lo))
            & !v.wrapping_add(LOW_BITS * u64::from(0x7F - hi))
    };
    let v = x & !HIGH_BITS;
    let digits = in_range(v, b'0', b'9');
    let letters = in_range(v | (LOW_BITS * 0x20), b'a', b'z');
    (digits | letters) & !x & HIGH_BITS
}

/// Per-character mapping for one set of normalization flags.
pub(crate) struct CharTable {
    /// One packed entry per BMP code point: a single output char and its class, `REMOVED`, or
    /// `MULTI | index` into `multi`.
    bmp: Box<[u32; 0x1_0000]>,
    multi: Vec<Box<[(char, Class)]>>,
    /// Per byte: the ASCII byte it maps to when it is an ASCII byte that maps to a single word
    /// character (letters and digits under every flag set), else 0 (every byte from 0x80 on).
    /// Drives the fast path through ASCII words; 256 entries, so a byte indexes it unchecked.
    ascii_word: [u8; 256],
    /// How `ascii_word` maps the bytes it keeps: `Some(false)` each to itself, `Some(true)`
    /// each to its ASCII lower case (then a run is copied and lower-cased in place), `None`
    /// otherwise (a run is mapped byte by byte).
    ascii_lower: Option<bool>,
    /// Whether an ASCII space maps to itself as a separator (a one-space gap between two words
    /// then stays as it is: see the word-run fast path in `Normalizer::feed`).
    space_is_sep: bool,
    /// Whether the word bytes of `ascii_word` are exactly the ASCII letters and digits (under
    /// every flag set so far): [`CharTable::word_end`] then tests eight bytes at a time.
    alnum_words: bool,
    /// One bit per BMP code point: whether it maps to itself as CJK ([`CharTable::run_cjk`]).
    /// 8 KiB instead of a load from the 256 KiB `bmp` per character of a CJK run, which
    /// missed cache between requests.
    self_cjk_bits: Box<[u64; 0x1_0000 / 64]>,
    /// One bit per BMP code point: whether it maps to another three-byte character as CJK (a
    /// traditional character to its simplified form, a compatibility ideograph to the unified
    /// one): such a character also goes in a CJK run, which then keeps its length.
    mapped_cjk_bits: Box<[u64; 0x1_0000 / 64]>,
    flags: NormalizeConfig,
}

/// Format and default-ignorable code points dropped by the `zero_width` step.
pub(crate) fn is_ignorable(c: char) -> bool {
    matches!(c as u32,
        0x00AD | 0x034F | 0x061C | 0x115F | 0x1160 | 0x17B4 | 0x17B5 | 0x180B..=0x180F
        | 0x200B..=0x200F | 0x202A..=0x202E | 0x2060..=0x206F | 0x3164 | 0xFE00..=0xFE0F
        | 0xFEFF | 0xFFA0 | 0xFFF0..=0xFFFB | 0x0600..=0x0605 | 0x06DD | 0x070F | 0x0890
        | 0x0891 | 0x08E2 | 0x110BD | 0x110CD | 0x13430..=0x1343F | 0x1BCA0..=0x1BCA3
        | 0x1D173..=0x1D17A | 0xE0000..=0xE0FFF)
}

/// Han, kana, Hangul, Bopomofo and CJK radicals: scripts written without spaces.
pub(crate) fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x1100..=0x11FF | 0x2E80..=0x2FDF | 0x3005..=0x3007 | 0x3021..=0x3029
        | 0x3041..=0x30FA | 0x30FC..=0x30FF | 0x3100..=0x312F | 0x3131..=0x318F
        | 0x31A0..=0x31FF | 0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xA960..=0xA97F
        | 0xAC00..=0xD7FF | 0xF900..=0xFAFF | 0x20000..=0x323AF)
}

pub(crate) fn classify(c: char) -> Class {
    if c.is_ascii() {
        if c.is_ascii_alphanumeric() {
            Class::Word
        } else {
            Class::Sep
        }
    } else if is_cjk(c) {
        Class::Cjk
    } else if c.is_alphanumeric() || is_combining_mark(c) {
        Class::Word
    } else {
        Class::Sep
    }
}

/// Steps 1–6 for one character, the slow way (used to build the table and for non-BMP chars).
fn map_slow(c: char, f: &NormalizeConfig, out: &mut Vec<(char, Class)>) {
    out.clear();
    if f.zero_width && is_ignorable(c) {
        return;
    }
    let mut buf: Vec<char> = if f.width {
        std::iter::once(c).nfkc().collect()
    } else {
        vec![c]
    };
    if f.confusables && buf.iter().any(|&d| !d.is_ascii()) {
        buf = buf
            .iter()
            .copied()
            .nfd()
            .filter(|&d| !is_combining_mark(d))
            .nfc()
            .collect();
    }
    if f.confusables {
        let mut folded = Vec::with_capacity(buf.len());
        let mut tmp = [0u8; 4];
        for &d in &buf {
            if !d.is_ascii() && d.is_alphabetic() && !is_cjk(d) {
                // The skeleton of the character as written, else of its lower case
                // (Cyrillic В has the skeleton B, в has none).
                let ascii_skeleton = |c: char, tmp: &mut [u8; 4]| -> Option<Vec<char>> {
                    let sk: Vec<char> = unicode_security::skeleton(c.encode_utf8(tmp))
                        .filter(|&s| !is_combining_mark(s))
                        .collect();
                    (!sk.is_empty() && sk.iter().all(|s| s.is_ascii_alphanumeric())).then_some(sk)
                };
                let sk = ascii_skeleton(d, &mut tmp).or_else(|| {
                    let mut lower = d.to_lowercase();
                    match (lower.next(), lower.next()) {
                        (Some(l), None) if l != d => ascii_skeleton(l, &mut tmp),
                        _ => None,
                    }
                });
                if let Some(sk) = sk {
                    for s in sk {
                        folded.push(if f.case { s.to_ascii_lowercase() } else { s });
                    }
                    continue;
                }
            }
            folded.push(d);
        }
        buf = folded;
    }
    if f.case {
        buf = buf.iter().flat_map(|d| d.to_lowercase()).collect();
    }
    if f.traditional {
        let mut tmp = [0u8; 4];
        for d in buf.iter_mut() {
            if d.len_utf8() == 3 {
                let conv = fast2s::convert(d.encode_utf8(&mut tmp));
                let mut it = conv.chars();
                if let (Some(s), None) = (it.next(), it.next()) {
                    *d = s;
                }
            }
        }
    }
    for d in buf {
        if f.zero_width && is_ignorable(d) {
            continue;
        }
        out.push((d, classify(d)));
    }
}

fn table_key(f: &NormalizeConfig) -> u8 {
    u8::from(f.width)
        | u8::from(f.case) << 1
        | u8::from(f.zero_width) << 2
        | u8::from(f.traditional) << 3
        | u8::from(f.confusables) << 4
}

type TableCache = Mutex<Vec<(u8, Arc<CharTable>)>>;

/// Tables already built, by flag set; building one takes tens of milliseconds.
static TABLES: LazyLock<TableCache> = LazyLock::new(|| Mutex::new(Vec::new()));

impl CharTable {
    /// The table for `flags`, built on first use and shared afterwards.
    pub(crate) fn get(flags: &NormalizeConfig) -> Arc<CharTable> {
        let key = table_key(flags);
        let mut cache = TABLES
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((_, t)) = cache.iter().find(|(k, _)| *k == key) {
            return Arc::clone(t);
        }
        let t = Arc::new(CharTable::build(flags));
        cache.push((key, Arc::clone(&t)));
        t
    }

    fn build(flags: &NormalizeConfig) -> CharTable {
        let mut bmp = vec![REMOVED; 0x1_0000];
        let mut multi = Vec::new();
        let mut out = Vec::with_capacity(4);
        for cp in 0u32..0x1_0000 {
            let Some(c) = char::from_u32(cp) else {
                continue;
            };
            map_slow(c, flags, &mut out);
            bmp[cp as usize] = match out.as_slice() {
                [] => REMOVED,
                [(d, class)] => *d as u32 | (*class as u32) << CLASS_SHIFT,
                many => {
                    multi.push(many.to_vec().into_boxed_slice());
                    MULTI | (multi.len() as u32 - 1)
                }
            };
        }
        let mut ascii_word = [0u8; 256];
        for (b, slot) in ascii_word.iter_mut().enumerate().take(0x80) {
            let e = bmp[b];
            let d = e & CHAR_MASK;
            if e & (MULTI | REMOVED) == 0
                && d < 0x80
                && d != 0
                && Class::from_bits(e >> CLASS_SHIFT) == Class::Word
            {
                *slot = d as u8;
            }
        }
        let maps_all = |f: fn(u8) -> u8| {
            (0u8..128)
                .filter(|&b| ascii_word[usize::from(b)] != 0)
                .all(|b| ascii_word[usize::from(b)] == f(b))
        };
        let ascii_lower = if maps_all(|b| b) {
            Some(false)
        } else if maps_all(|b| b.to_ascii_lowercase()) {
            Some(true)
        } else {
            None
        };
        let alnum_words =
            (0..=255u8).all(|b| (ascii_word[usize::from(b)] != 0) == b.is_ascii_alphanumeric());
        let space = bmp[usize::from(b' ')];
        let space_is_sep = space & (REMOVED | MULTI) == 0
            && space & CHAR_MASK == u32::from(b' ')
            && Class::from_bits(space >> CLASS_SHIFT) == Class::Sep;
        // The entry of a CJK character that maps to itself: no flag, its own code point, class
        // CJK.
        const SELF_CJK: u32 = (Class::Cjk as u32) << CLASS_SHIFT;
        let mut self_cjk_bits = Box::new([0u64; 0x1_0000 / 64]);
        let mut mapped_cjk_bits = Box::new([0u64; 0x1_0000 / 64]);
        for (cp, &e) in bmp.iter().enumerate() {
            let three_bytes = |c: u32| (0x800..0x1_0000).contains(&c);
            if e == cp as u32 | SELF_CJK {
                self_cjk_bits[cp >> 6] |= 1 << (cp & 63);
            } else if e & !CHAR_MASK == SELF_CJK
                && three_bytes(cp as u32)
                && three_bytes(e & CHAR_MASK)
            {
                mapped_cjk_bits[cp >> 6] |= 1 << (cp & 63);
            }
        }
        CharTable {
            bmp: bmp
                .into_boxed_slice()
                .try_into()
                .expect("one entry per BMP code point"),
            multi,
            ascii_word,
            ascii_lower,
            space_is_sep,
            alnum_words,
            self_cjk_bits,
            mapped_cjk_bits,
            flags: *flags,
        }
    }
}

/// Where a stretch of normalized text comes from, relative to `NormBuf::obase`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Anchor {
    /// Normalized byte offset (relative to `text`) where the stretch starts; it runs to the
    /// next anchor.
    at: u32,
    /// Original offset of the stretch's first character.
    os: u32,
    /// `Some(end)`: the stretch is one character from original `os..end`. `None`: a run that
    /// is byte for byte the original, so each character's original range is as long as it and
    /// sits at the same distance from `os` as the character from `at`.
    oe: Option<u32>,
}

/// Normalized text with a map from each normalized character back to the original byte range
/// of the character that produced it (relative to `obase`, so a long stream fits in `u32`).
///
/// Most text comes out as long as it went in (CJK, ASCII letters, trad → simp), so the map
/// holds anchors only where that breaks (a dropped or collapsed separator, full-width → ASCII,
/// a multi-character expansion), not an entry per byte.
#[derive(Debug, Default, Clone)]
pub(crate) struct NormBuf {
    pub text: String,
    /// Sorted by `at`; the first is at 0 when `text` is not empty.
    omap: Vec<Anchor>,
    obase: usize,
    /// Tests only: the per-byte map (absolute original start, end) the anchors must agree with.
    #[cfg(test)]
    dense: Vec<(usize, usize)>,
}

/// Where the normalizer puts its output: a [`NormBuf`] (the text and its map back to the
/// original), or a reader that takes each character as it comes (the one-shot keyword scan,
/// which never writes the normalized text out).
pub(crate) trait Emit {
    /// One output character, from original bytes `os..oe`.
    fn emit(&mut self, ch: char, os: usize, oe: usize);
    /// The run of ASCII words from `piece[i]` (which is a word byte), `piece` at original
    /// offset `base`: each byte its own output character, mapped through `table.ascii_word`.
    /// A one-space gap at `join_from` or later, followed by a word of two characters at least,
    /// stays a space and the run goes on ([`CharTable::words_end`]). Returns where it ends.
    fn ascii_run(
        &mut self,
        table: &CharTable,
        piece: &str,
        i: usize,
        base: usize,
        join_from: usize,
    ) -> usize;
    /// The run of three-byte characters from `piece[i]` that map to one three-byte character
    /// as CJK ([`CharTable::run_cjk`]), `piece` at original offset `base`: each output as it
    /// maps, byte for byte in length. Returns where the run ends (`i` when there is none).
    fn cjk_run(&mut self, table: &CharTable, piece: &str, i: usize, base: usize) -> usize;
    /// Make room for about `n` more output bytes.
    fn reserve(&mut self, _n: usize) {}
}

impl Emit for NormBuf {
    #[inline(always)]
    fn emit(&mut self, ch: char, os: usize, oe: usize) {
        NormBuf::emit(self, ch, os, oe);
    }

    #[inline]
    fn ascii_run(
        &mut self,
        table: &CharTable,
        piece: &str,
        i: usize,
        base: usize,
        join_from: usize,
    ) -> usize {
        let end = table.words_end(piece.as_bytes(), i, join_from);
        NormBuf::emit_ascii_run(self, table, &piece[i..end], base + i);
        end
    }

    #[inline]
    fn cjk_run(&mut self, table: &CharTable, piece: &str, i: usize, base: usize) -> usize {
        let bytes = piece.as_bytes();
        let Some(first) = table.run_cjk(bytes, i) else {
            return i;
        };
        // The first character carries the anchor; the others map byte for byte after it,
        // copied as they are between the few that map to another character.
        self.emit(
            char::from_u32(first).unwrap_or_default(),
            base + i,
            base + i + 3,
        );
        let (mut j, mut copied) = (i + 3, i + 3);
        while let Some(cp) = table.run_cjk(bytes, j) {
            if piece[j..j + 3].chars().next() != char::from_u32(cp) {
                self.text.push_str(&piece[copied..j]);
                self.text.push(char::from_u32(cp).unwrap_or_default());
                copied = j + 3;
            }
            #[cfg(test)]
            self.dense
                .extend(std::iter::repeat_n((base + j, base + j + 3), 3));
            j += 3;
        }
        self.text.push_str(&piece[copied..j]);
        j
    }

    fn reserve(&mut self, n: usize) {
        self.text.reserve(n);
    }
}

/// The code point of the three-byte UTF-8 character at `bytes[j]` (below U+10000), if one is
/// there (`bytes` is valid UTF-8).
#[inline(always)]
pub(super) fn three_byte_char(bytes: &[u8], j: usize) -> Option<u32> {
    char_of_three(bytes.get(j..j + 3)?)
}

/// The code point of the three-byte UTF-8 character that `b` (three bytes of valid UTF-8
/// text) begins with, if it is one.
#[inline(always)]
pub(super) fn char_of_three(b: &[u8]) -> Option<u32> {
    let &[b0, b1, b2] = b else {
        return None;
    };
    (0xE0..0xF0)
        .contains(&b0)
        .then(|| u32::from(b0 & 0x0F) << 12 | u32::from(b1 & 0x3F) << 6 | u32::from(b2 & 0x3F))
}

impl CharTable {
    /// What the three-byte character at `bytes[j]` maps to when that is one three-byte
    /// character of class CJK (the BMP beyond U+0800 holds all common CJK; itself, or its
    /// simplified or unified form): then, with nothing held, the separator rule only clears
    /// the pending run before it, and the output keeps the original's length.
    #[inline(always)]
    pub(crate) fn run_cjk(&self, bytes: &[u8], j: usize) -> Option<u32> {
        self.run_cjk_of(three_byte_char(bytes, j)?)
    }

    /// [`CharTable::run_cjk`] for the BMP character `cp` beyond U+0800.
    #[inline(always)]
    pub(crate) fn run_cjk_of(&self, cp: u32) -> Option<u32> {
        // `cp` < 0x10000: the tables need no bounds check.
        let k = usize::from(cp as u16 >> 6);
        if self.self_cjk_bits[k] >> (cp & 63) & 1 != 0 {
            return Some(cp);
        }
        if self.mapped_cjk_bits[k] >> (cp & 63) & 1 != 0 {
            return Some(self.bmp[cp as usize] & CHAR_MASK);
        }
        None
    }

    /// Whether the character at `bytes[j]` is a three-byte separator (`，` `。` `、` …).
    #[inline]
    pub(crate) fn cjk_sep(&self, bytes: &[u8], j: usize) -> bool {
        three_byte_char(bytes, j).is_some_and(|cp| {
            let e = self.bmp[cp as usize];
            e & (REMOVED | MULTI) == 0 && Class::from_bits(e >> CLASS_SHIFT) == Class::Sep
        })
    }

    /// What a character of a CJK run ([`CharTable::run_cjk`]) maps to.
    #[inline]
    pub(crate) fn run_cjk_char(&self, c: char) -> u32 {
        match self.bmp.get(c as usize) {
            Some(&e) if e & (REMOVED | MULTI) == 0 => e & CHAR_MASK,
            _ => c as u32,
        }
    }

    /// The output byte of an ASCII word byte (letter or digit under every flag set), else 0.
    #[inline(always)]
    pub(crate) fn word_byte(&self, b: u8) -> u8 {
        self.ascii_word[usize::from(b)]
    }

    /// The output byte of ASCII byte `b` inside an [`Emit::ascii_run`] (a word byte, or the
    /// space of a joining gap).
    #[inline(always)]
    pub(crate) fn run_byte(&self, b: u8) -> u8 {
        match self.word_byte(b) {
            0 => b,
            m => m,
        }
    }

    /// Whether `b` is an ASCII byte that maps to one word character.
    #[inline(always)]
    fn is_word(&self, b: u8) -> bool {
        self.word_byte(b) != 0
    }

    /// Whether the gap at `bytes[j]` joins two words in an [`Emit::ascii_run`]: one space,
    /// then a word of two characters at least (the space then maps to itself at its offset).
    #[inline(always)]
    pub(crate) fn joins(&self, bytes: &[u8], j: usize) -> bool {
        bytes.get(j) == Some(&b' ')
            && bytes.get(j + 1).is_some_and(|&x| self.is_word(x))
            && bytes.get(j + 2).is_some_and(|&x| self.is_word(x))
    }

    /// Where the run of ASCII word bytes from `from` ends.
    #[inline(always)]
    pub(crate) fn word_end(&self, bytes: &[u8], from: usize) -> usize {
        let mut i = from;
        if self.alnum_words {
            // Eight bytes at a time: one well-predicted branch per word of up to eight
            // letters, where a byte loop mispredicts at every word's end.
            while let Some(chunk) = bytes.get(i..i + 8) {
                let x = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
                let stop = !alnum_bytes(x) & HIGH_BITS;
                if stop != 0 {
                    return i + (stop.trailing_zeros() / 8) as usize;
                }
                i += 8;
            }
        }
        bytes[i..]
            .iter()
            .position(|&x| !self.is_word(x))
            .map_or(bytes.len(), |k| i + k)
    }

    /// Where the [`Emit::ascii_run`] from `i` ends.
    #[inline(always)]
    pub(crate) fn words_end(&self, bytes: &[u8], i: usize, join_from: usize) -> usize {
        let mut run = self.word_end(bytes, i);
        while run >= join_from && self.joins(bytes, run) {
            run = self.word_end(bytes, run + 1);
        }
        run
    }
}

impl NormBuf {
    #[inline(always)]
    fn emit(&mut self, ch: char, os: usize, oe: usize) {
        let s = (os - self.obase) as u32;
        let e = (oe - self.obase) as u32;
        let at = self.text.len() as u32;
        self.text.push(ch);
        #[cfg(test)]
        self.dense
            .extend(std::iter::repeat_n((os, oe), ch.len_utf8()));
        if (e - s) as usize == ch.len_utf8() {
            if let Some(a) = self.omap.last() {
                if a.oe.is_none() && a.os + (at - a.at) == s {
                    return;
                }
            }
            self.omap.push(Anchor {
                at,
                os: s,
                oe: None,
            });
        } else {
            self.omap.push(Anchor {
                at,
                os: s,
                oe: Some(e),
            });
        }
    }

    /// Append a run of ASCII bytes, each its own output character, from original offset `os`.
    #[inline]
    fn emit_ascii_run(&mut self, table: &CharTable, run: &str, os: usize) {
        let Some(&first) = run.as_bytes().first() else {
            return;
        };
        // The first byte decides whether the run continues the last anchor; the rest follow
        // it byte for byte.
        let map = &table.ascii_word;
        self.emit(char::from(map[usize::from(first & 0x7F)]), os, os + 1);
        #[cfg(test)]
        self.dense
            .extend((os + 1..os + run.len()).map(|o| (o, o + 1)));
        let rest = &run[1..];
        match table.ascii_lower {
            // A token-sized run: byte by byte costs less than a copy call and a lowering pass.
            Some(_) if rest.len() <= 8 => {
                for &b in rest.as_bytes() {
                    self.text.push(char::from(table.run_byte(b)));
                }
            }
            Some(lower) => {
                let at = self.text.len();
                self.text.push_str(rest);
                if lower {
                    self.text[at..].make_ascii_lowercase();
                }
            }
            None => self
                .text
                .extend(rest.bytes().map(|b| char::from(map[usize::from(b & 0x7F)]))),
        }
    }

    /// The anchor covering normalized byte `i`.
    #[inline]
    fn anchor(&self, i: usize) -> Anchor {
        // A stream asks about its tail on every piece: try the last anchor first.
        if let Some(&a) = self.omap.last() {
            if a.at as usize <= i {
                return a;
            }
        }
        let k = self.omap.partition_point(|a| a.at as usize <= i);
        self.omap[k.saturating_sub(1)]
    }

    /// Original start offset of the character behind normalized byte `i` (relative to `text`).
    pub fn orig_start(&self, i: usize) -> usize {
        let a = self.anchor(i);
        if a.oe.is_some() {
            return self.obase + a.os as usize;
        }
        let mut cs = i;
        while !self.text.is_char_boundary(cs) {
            cs -= 1;
        }
        self.obase + a.os as usize + (cs - a.at as usize)
    }

    /// Original end offset of the character behind normalized byte `i`.
    pub fn orig_end(&self, i: usize) -> usize {
        let a = self.anchor(i);
        if let Some(e) = a.oe {
            return self.obase + e as usize;
        }
        let mut ce = i + 1;
        while !self.text.is_char_boundary(ce) {
            ce += 1;
        }
        self.obase + a.os as usize + (ce - a.at as usize)
    }

    /// Heap bytes held (what a clone allocates).
    pub fn memory_bytes(&self) -> usize {
        self.text.len() + self.omap.len() * std::mem::size_of::<Anchor>()
    }

    pub fn len(&self) -> usize {
        self.text.len()
    }

    /// Drop the first `k` bytes (`k` on a char boundary); `consumed` is the lowest original
    /// offset a later emission can carry, used as the new base when the buffer empties.
    pub fn trim_front(&mut self, k: usize, consumed: usize) {
        if k == 0 {
            return;
        }
        #[cfg(test)]
        self.dense.drain(..k.min(self.dense.len()));
        if k >= self.text.len() {
            self.text.clear();
            self.omap.clear();
            self.obase = consumed;
            return;
        }
        // The anchor covering `k` becomes the first, starting at `k`.
        let first = self.omap.partition_point(|a| a.at as usize <= k) - 1;
        let a = &mut self.omap[first];
        if a.oe.is_none() {
            a.os += k as u32 - a.at;
        }
        a.at = k as u32;
        self.omap.drain(..first);
        self.text.drain(..k);
        let delta = self.omap[0].os;
        for a in self.omap.iter_mut() {
            a.at -= k as u32;
            a.os -= delta;
            if let Some(e) = a.oe.as_mut() {
                *e -= delta;
            }
        }
        self.obase += delta as usize;
    }

    /// Start a fresh buffer at original offset `base`.
    pub fn reset(&mut self, base: usize) {
        #[cfg(test)]
        self.dense.clear();
        self.text.clear();
        self.omap.clear();
        self.obase = base;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Last {
    /// Start of text: nothing emitted yet.
    #[default]
    Boundary,
    Cjk,
    /// A word character; `single_left` when its left neighbour is not a word character.
    Word {
        single_left: bool,
    },
}

#[derive(Debug, Clone, Copy)]
struct HeldWord {
    ch: char,
    os: usize,
    oe: usize,
    sep_os: usize,
    sep_oe: usize,
}

/// Streaming state of the separator rule: carried from one piece to the next.
#[derive(Debug, Clone, Default)]
pub(crate) struct NormState {
    last: Last,
    /// Original range of the first separator of an undecided run.
    pending_sep: Option<(usize, usize)>,
    /// A word character after a separator run that followed a single word character: whether
    /// the run is dropped depends on the character after this one.
    held: Option<HeldWord>,
}

impl NormState {
    /// Original offset of the earliest character whose output is not yet decided.
    pub fn pending_origin(&self) -> Option<usize> {
        self.held.map(|h| h.os)
    }

    /// The lowest original offset a later emission can carry (a kept separator's origin).
    pub fn min_future_origin(&self) -> Option<usize> {
        match (self.pending_sep, self.held) {
            (Some((s, _)), _) => Some(s),
            (None, Some(h)) => Some(h.sep_os),
            (None, None) => None,
        }
    }
}

/// The normalizer of a compiled policy.
#[derive(Clone)]
pub(crate) struct Normalizer {
    table: Arc<CharTable>,
    separators: bool,
    /// Take the ASCII-word and CJK-run fast paths (off only in tests, to compare with the slow
    /// path).
    ascii_fast: bool,
}

impl std::fmt::Debug for Normalizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Normalizer")
            .field("flags", &self.table.flags)
            .finish()
    }
}

impl Normalizer {
    /// The character table of this normalizer's flags.
    pub(crate) fn table(&self) -> &CharTable {
        &self.table
    }

    pub fn new(flags: &NormalizeConfig) -> Normalizer {
        Normalizer {
            table: CharTable::get(flags),
            separators: flags.separators,
            ascii_fast: true,
        }
    }

    /// Normalize one piece whose first byte is at original offset `base`, appending to `out`.
    ///
    /// Inlined, with the runs of common text (ASCII words, separators between them, CJK that
    /// maps to itself) read here and any other character through [`Normalizer::slow_char`]: a
    /// stream calls this with every token, and a loop holding every path would cost as much
    /// to set up as a piece of a few bytes costs to read.
    #[inline(always)]
    pub fn feed<E: Emit>(&self, st: &mut NormState, piece: &str, base: usize, out: &mut E) {
        let bytes = piece.as_bytes();
        out.reserve(bytes.len() + 4);
        let mut scratch = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            if b < 0x80 {
                // Fast path: inside a word (or with separators off) an ASCII letter or digit
                // is emitted as it maps, with nothing pending; do the whole run at once.
                if self.ascii_fast
                    && self.table.is_word(b)
                    && (!self.separators
                        || (st.held.is_none()
                            && st.pending_sep.is_none()
                            && matches!(st.last, Last::Word { .. })))
                {
                    // This word continues the last, so it has two characters at least and
                    // the gap after it may join the next.
                    let run = out.ascii_run(&self.table, piece, i, base, self.join_from(i));
                    if self.separators {
                        st.last = Last::Word { single_left: false };
                    }
                    i = run;
                    continue;
                }
                if let Some(next) = self.separator_run(st, piece, i, base, out) {
                    i = next;
                    continue;
                }
            } else if self.ascii_fast && (0xE0..0xF0).contains(&b) && st.held.is_none() {
                // Fast path: a run of three-byte characters (the BMP beyond U+0800: all common
                // CJK) that normalize to one three-byte CJK character (themselves, their
                // simplified form) goes as one stretch. With nothing held, each would only
                // clear the pending separator run and emit what it maps to.
                let mut j = out.cjk_run(&self.table, piece, i, base);
                if j > i {
                    if self.separators {
                        // A separator between two CJK characters (`，` `。` in a sentence) is
                        // dropped: the run goes on after it, the way the general path would
                        // keep it pending and clear it at the next character.
                        while self.table.cjk_sep(bytes, j)
                            && self.table.run_cjk(bytes, j + 3).is_some()
                        {
                            j = out.cjk_run(&self.table, piece, j + 3, base);
                        }
                        st.pending_sep = None;
                        st.last = Last::Cjk;
                    }
                    i = j;
                    continue;
                }
            }
            i = self.slow_char(st, piece, i, base, out, &mut scratch);
        }
    }

    /// The character at `piece[i]`, the general way: through the table (or, beyond the BMP,
    /// `map_slow` into `scratch`) and the separator rule one output character at a time.
    /// Returns where the next character starts.
    #[inline(never)]
    fn slow_char<E: Emit>(
        &self,
        st: &mut NormState,
        piece: &str,
        i: usize,
        base: usize,
        out: &mut E,
        scratch: &mut Vec<(char, Class)>,
    ) -> usize {
        let Some(c) = piece[i..].chars().next() else {
            return piece.len();
        };
        let n = c.len_utf8();
        let (os, oe) = (base + i, base + i + n);
        if (c as u32) < 0x1_0000 {
            let e = self.table.bmp[c as usize];
            if e & MULTI != 0 {
                for &(d, class) in self.table.multi[(e & !MULTI) as usize].iter() {
                    self.step(st, d, class, os, oe, out);
                }
            } else if e & REMOVED == 0 {
                let d = char::from_u32(e & CHAR_MASK).unwrap_or(c);
                self.step(st, d, Class::from_bits(e >> CLASS_SHIFT), os, oe, out);
            }
        } else {
            map_slow(c, &self.table.flags, scratch);
            for &(d, class) in scratch.iter() {
                self.step(st, d, class, os, oe, out);
            }
        }
        i + n
    }

    /// English-like text (`tok tok tok`): after a word of two characters at least, one space
    /// and a next word of two characters at least stay one space at the same offset, so words
    /// and gaps map byte for byte and go in the same run (lower-cased as one string). The
    /// offset from which a gap may join words in a run from `from` (`usize::MAX`: never).
    #[inline(always)]
    fn join_from(&self, from: usize) -> usize {
        if self.separators && self.table.ascii_lower.is_some() && self.table.space_is_sep {
            from
        } else {
            usize::MAX
        }
    }

    /// Fast path for a run of ASCII separators at `i` with no word character held: the
    /// per-character path would keep the first one pending (unless at a boundary) and ignore
    /// the rest. Between a word of several characters and an ASCII word later in this piece
    /// (`tok tok`), the pending separator would become one space at that word's first
    /// character, followed by the word's run: done here in one step too. Returns where to go
    /// on, or `None` when the case does not apply.
    #[inline]
    fn separator_run<E: Emit>(
        &self,
        st: &mut NormState,
        piece: &str,
        i: usize,
        base: usize,
        out: &mut E,
    ) -> Option<usize> {
        let bytes = piece.as_bytes();
        let is_sep = |b: u8| {
            let e = self.table.bmp[usize::from(b)];
            b < 0x80
                && e & (REMOVED | MULTI) == 0
                && Class::from_bits(e >> CLASS_SHIFT) == Class::Sep
        };
        if !(self.ascii_fast && self.separators && st.held.is_none() && is_sep(bytes[i])) {
            return None;
        }
        let start = i + 1 + bytes[i + 1..].iter().take_while(|&&b| is_sep(b)).count();
        if st.pending_sep.is_none()
            && st.last == (Last::Word { single_left: false })
            && bytes.get(start).is_some_and(|&b| self.table.is_word(b))
        {
            out.emit(' ', base + i, base + i + 1);
            // English sentences (`… meeting. Please summarise …`): the words after a
            // punctuation run go in one run too, not one call here per word, once the first
            // has two characters.
            let end = out.ascii_run(
                &self.table,
                piece,
                start,
                base,
                self.join_from(start).saturating_add(2),
            );
            st.last = Last::Word {
                single_left: end - start == 1,
            };
            return Some(end);
        }
        if st.pending_sep.is_none() && st.last != Last::Boundary {
            st.pending_sep = Some((base + i, base + i + 1));
        }
        Some(start)
    }

    /// End of text: a held word character is single (boundary on its right); a trailing
    /// separator run is dropped. Resets `st` for a new text.
    pub fn finish<E: Emit>(&self, st: &mut NormState, out: &mut E) {
        if let Some(h) = st.held.take() {
            out.emit(h.ch, h.os, h.oe);
        }
        *st = NormState::default();
    }

    /// Normalize a whole text (terms, allow phrases, tests) into its matching form.
    pub fn normalize_str(&self, s: &str, out: &mut NormBuf) {
        out.reset(0);
        let mut st = NormState::default();
        self.feed(&mut st, s, 0, out);
        self.finish(&mut st, out);
    }

    #[inline(always)]
    fn step<E: Emit>(
        &self,
        st: &mut NormState,
        ch: char,
        class: Class,
        os: usize,
        oe: usize,
        out: &mut E,
    ) {
        if !self.separators {
            out.emit(ch, os, oe);
            return;
        }
        match class {
            Class::Sep => {
                if let Some(h) = st.held.take() {
                    // The held character has a separator on its right: it is single, so the
                    // run before it is dropped.
                    out.emit(h.ch, h.os, h.oe);
                    st.last = Last::Word { single_left: true };
                }
                if st.pending_sep.is_none() && st.last != Last::Boundary {
                    st.pending_sep = Some((os, oe));
                }
            }
            Class::Cjk => {
                if let Some(h) = st.held.take() {
                    out.emit(h.ch, h.os, h.oe);
                }
                st.pending_sep = None;
                out.emit(ch, os, oe);
                st.last = Last::Cjk;
            }
            Class::Word => {
                if let Some(h) = st.held.take() {
                    // The held character continues into a word: not single, keep one space.
                    out.emit(' ', h.sep_os, h.sep_oe);
                    out.emit(h.ch, h.os, h.oe);
                    out.emit(ch, os, oe);
                    st.last = Last::Word { single_left: false };
                    return;
                }
                match (st.pending_sep.take(), st.last) {
                    (Some((so, se)), Last::Word { single_left }) => {
                        if single_left {
                            st.held = Some(HeldWord {
                                ch,
                                os,
                                oe,
                                sep_os: so,
                                sep_oe: se,
                            });
                        } else {
                            out.emit(' ', so, se);
                            out.emit(ch, os, oe);
                        }
                        st.last = Last::Word { single_left: true };
                    }
                    (Some(_), _) => {
                        out.emit(ch, os, oe);
                        st.last = Last::Word { single_left: true };
                    }
                    (None, last) => {
                        out.emit(ch, os, oe);
                        st.last = Last::Word {
                            single_left: !matches!(last, Last::Word { .. }),
                        };
                    }
                }
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn norm_with(f: NormalizeConfig, s: &str) -> String {
        let n = Normalizer::new(&f);
        let mut out = NormBuf::default();
        n.normalize_str(s, &mut out);
        out.text
    }

    fn norm(s: &str) -> String {
        norm_with(NormalizeConfig::default(), s)
    }

    #[test]
    fn eight_byte_word_test_agrees_with_the_byte_test() {
        // Every byte value in every lane, among neighbours that would carry into it.
        for b in 0..=255u8 {
            for lane in 0..8 {
                for fill in [0x00, 0x7F, 0x80, 0xFF, b'z', b'0'] {
                    let mut bytes = [fill; 8];
                    bytes[lane] = b;
                    let got = alnum_bytes(u64::from_le_bytes(bytes));
                    for (k, &x) in bytes.iter().enumerate() {
                        let bit = got >> (8 * k + 7) & 1 == 1;
                        assert_eq!(bit, x.is_ascii_alphanumeric(), "{bytes:?} lane {k}");
                    }
                }
            }
        }
        let t = Normalizer::new(&NormalizeConfig::default());
        assert!(t.table().alnum_words);
        let text = b"abcdefghij klmnopq0123456789_x\xc3\xa9abc 12345678";
        for from in 0..text.len() {
            let want = text[from..]
                .iter()
                .position(|&x| !x.is_ascii_alphanumeric())
                .map_or(text.len(), |k| from + k);
            assert_eq!(t.table().word_end(text, from), want, "from {from}");
        }
    }

    fn only(step: &str) -> NormalizeConfig {
        NormalizeConfig {
            width: step == "width",
            case: step == "case",
            zero_width: step == "zero_width",
            separators: step == "separators",
            traditional: step == "traditional",
            confusables: step == "confusables",
            joined_words: step == "joined_words",
        }
    }

    #[test]
    fn width_folding() {
        assert_eq!(norm_with(only("width"), "ＡＢＣ１２３"), "ABC123");
        assert_eq!(norm_with(only("width"), "ﬁ①"), "fi1");
        assert_eq!(norm_with(only("case"), "ＡＢＣ"), "ａｂｃ");
        assert_eq!(norm("ＦＯＲＢＩＤ"), "forbid");
    }

    #[test]
    fn case_folding() {
        assert_eq!(norm_with(only("case"), "ForBID Ä"), "forbid ä");
        assert_eq!(norm_with(only("width"), "ForBID"), "ForBID");
    }

    #[test]
    fn zero_width_removal() {
        let s = "炸\u{200B}弹\u{FEFF}x\u{00AD}y\u{FE0F}\u{2060}";
        assert_eq!(norm_with(only("zero_width"), s), "炸弹xy");
        assert_eq!(norm_with(only("case"), s), s);
    }

    #[test]
    fn traditional_to_simplified() {
        assert_eq!(norm_with(only("traditional"), "製造炸彈"), "制造炸弹");
        assert_eq!(norm_with(only("traditional"), "爆炸裝置"), "爆炸装置");
        assert_eq!(norm_with(only("width"), "炸彈"), "炸彈");
    }

    #[test]
    fn confusables_fold_to_latin() {
        // Cyrillic а, о, е; Greek ο.
        assert_eq!(norm_with(only("confusables"), "b\u{043E}mb"), "bomb");
        assert_eq!(norm_with(only("confusables"), "\u{03BF}k"), "ok");
        assert_eq!(norm_with(only("confusables"), "bômb"), "bomb");
        assert_eq!(norm("ВОМВ"), "bomb");
        assert_eq!(norm_with(only("case"), "b\u{043E}mb"), "b\u{043E}mb");
        // CJK untouched.
        assert_eq!(norm_with(only("confusables"), "炸弹"), "炸弹");
    }

    #[test]
    fn separators_between_cjk() {
        assert_eq!(norm_with(only("separators"), "制 造*炸|弹"), "制造炸弹");
        assert_eq!(norm("制　造，炸😀弹"), "制造炸弹");
        assert_eq!(norm("炸 bomb"), "炸bomb");
    }

    #[test]
    fn separators_between_single_letters() {
        assert_eq!(norm("f.o.r.b.i.d"), "forbid");
        assert_eq!(norm("f o r b i d"), "forbid");
        assert_eq!(norm("f  -  o r"), "for");
        assert_eq!(norm("I am f o o"), "i am foo");
    }

    #[test]
    fn separators_between_words_are_kept() {
        assert_eq!(norm("forbidden word"), "forbidden word");
        assert_eq!(norm("a forbidden wordlist"), "a forbidden wordlist");
        assert_eq!(norm("bad   phrase"), "bad phrase");
        assert_eq!(norm("bad_phrase!"), "bad phrase");
        assert_eq!(norm("  lead and trail  "), "lead and trail");
        assert_eq!(norm_with(only("case"), "a  b"), "a  b");
        // Sentences: each punctuation run between words becomes one space, and the words
        // after it (a single letter among them) keep their own rule.
        assert_eq!(
            norm("The meeting. Please summarise, the notes; a b c done"),
            "the meeting please summarise the notes abc done"
        );
    }

    #[test]
    fn offsets_round_trip_on_mixed_text() {
        let s = "Ａ炸\u{200B}彈 👍🏽 e\u{301}x Ｂ 한국";
        let n = Normalizer::new(&NormalizeConfig::default());
        let mut out = NormBuf::default();
        n.normalize_str(s, &mut out);
        for (i, _) in out.text.char_indices() {
            let (a, b) = (out.orig_start(i), out.orig_end(i));
            assert!(a < b && b <= s.len(), "{i}: {a}..{b}");
            assert!(s.is_char_boundary(a) && s.is_char_boundary(b));
        }
        // "a" comes from "Ａ" (3 bytes at 0).
        assert_eq!((out.orig_start(0), out.orig_end(0)), (0, 3));
        let zha = out.text.find('炸').unwrap_or(0);
        assert_eq!(&s[out.orig_start(zha)..out.orig_end(zha)], "炸");
        let dan = out.text.find('弹').unwrap_or(0);
        assert_eq!(&s[out.orig_start(dan)..out.orig_end(dan)], "彈");
        assert!(out.text.contains("炸弹"));
    }

    #[test]
    fn streamed_equals_whole() {
        let n = Normalizer::new(&NormalizeConfig::default());
        let s = "a b c 炸 弹 forbidden  word f.o.r Ｘ";
        let mut whole = NormBuf::default();
        n.normalize_str(s, &mut whole);
        for cut in 0..=s.len() {
            if !s.is_char_boundary(cut) {
                continue;
            }
            let mut st = NormState::default();
            let mut out = NormBuf::default();
            n.feed(&mut st, &s[..cut], 0, &mut out);
            n.feed(&mut st, &s[cut..], cut, &mut out);
            n.finish(&mut st, &mut out);
            assert_eq!(out.text, whole.text, "cut at {cut}");
            assert_eq!(out.omap, whole.omap);
        }
    }

    #[test]
    fn non_bmp_chars() {
        assert_eq!(norm("𝐀𝐁"), "ab");
        assert_eq!(norm("𠀀"), "𠀀");
    }

    #[test]
    fn trim_rebases() {
        let n = Normalizer::new(&NormalizeConfig::default());
        let mut st = NormState::default();
        let mut out = NormBuf::default();
        n.feed(&mut st, "abc炸弹", 0, &mut out);
        out.trim_front(3, 9);
        assert_eq!(out.text, "炸弹");
        assert_eq!(out.orig_start(0), 3);
        assert_eq!(out.orig_end(3), 9);
    }

    use proptest::prelude::*;

    /// Every combination of the normalization steps.
    pub(crate) fn flags_strategy() -> impl Strategy<Value = NormalizeConfig> {
        prop::array::uniform7(any::<bool>()).prop_map(|b| NormalizeConfig {
            width: b[0],
            case: b[1],
            zero_width: b[2],
            separators: b[3],
            traditional: b[4],
            confusables: b[5],
            joined_words: b[6],
        })
    }

    fn text_strategy() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop::sample::select(vec![
                "a", "B", "z", "0", "9", "word", "Forbid", " ", "  ", ".", "_", "-", "\n", "炸",
                "彈", "，", "Ｂ", "ο", "é", "\u{200B}", "ﬁ", "😀", "𝐀", "x1",
            ]),
            0..40,
        )
        .prop_map(|v| v.concat())
    }

    /// `text` cut at `cuts` (those on character boundaries), normalized piece by piece with the
    /// fast paths on and off.
    fn fast_and_slow(flags: &NormalizeConfig, text: &str, cuts: Vec<usize>) -> [NormBuf; 2] {
        let fast = Normalizer::new(flags);
        let slow = Normalizer {
            ascii_fast: false,
            ..fast.clone()
        };
        let mut points: Vec<usize> = cuts
            .into_iter()
            .filter(|&c| c <= text.len() && text.is_char_boundary(c))
            .collect();
        points.push(0);
        points.push(text.len());
        points.sort_unstable();
        points.dedup();
        [&fast, &slow].map(|n| {
            let mut st = NormState::default();
            let mut out = NormBuf::default();
            for w in points.windows(2) {
                n.feed(&mut st, &text[w[0]..w[1]], w[0], &mut out);
            }
            n.finish(&mut st, &mut out);
            out
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// The ASCII-word fast path gives the same text and offsets as the per-character path,
        /// under every flag set and any cuts.
        #[test]
        fn ascii_fast_path_equals_slow_path(
            flags in flags_strategy(),
            text in text_strategy(),
            cuts in prop::collection::vec(0usize..200, 0..6),
        ) {
            let outs = fast_and_slow(&flags, &text, cuts);
            prop_assert_eq!(&outs[0].text, &outs[1].text);
            prop_assert_eq!(&outs[0].omap, &outs[1].omap);
        }

        /// The CJK-run fast path gives the same text and offsets as the per-character path on
        /// CJK-heavy text (traditional forms, CJK punctuation, held single letters, emoji).
        #[test]
        fn cjk_fast_path_equals_slow_path(
            flags in flags_strategy(),
            parts in prop::collection::vec(prop::sample::select(vec![
                "炸弹", "制造", "彈", "製", "，", "。", "　", "ｶ", "ア", "한", "a", " ", "b c", "\u{200B}",
                "\u{FE0F}", "😀", "𠀀", "ﬁ", "丐丑", "〇", "x1",
            ]), 0..30),
            cuts in prop::collection::vec(0usize..200, 0..6),
        ) {
            let text = parts.concat();
            let outs = fast_and_slow(&flags, &text, cuts);
            prop_assert_eq!(&outs[0].text, &outs[1].text);
            prop_assert_eq!(&outs[0].omap, &outs[1].omap);
            prop_assert_eq!(&outs[0].dense, &outs[1].dense);
        }

        /// The anchors give every normalized byte the original range of the character that
        /// produced it, as a per-byte map would, before and after trimming the front.
        #[test]
        fn anchors_equal_per_byte_map(
            flags in flags_strategy(),
            text in text_strategy(),
            cuts in prop::collection::vec(0usize..200, 0..6),
            trims in prop::collection::vec(0usize..40, 0..4),
        ) {
            let n = Normalizer::new(&flags);
            let mut points: Vec<usize> = cuts.into_iter().filter(|&c| c <= text.len() && text.is_char_boundary(c)).collect();
            points.push(0);
            points.push(text.len());
            points.sort_unstable();
            points.dedup();
            let mut st = NormState::default();
            let mut out = NormBuf::default();
            let check = |out: &NormBuf| -> Result<(), TestCaseError> {
                prop_assert_eq!(out.dense.len(), out.text.len());
                for (i, &(s, e)) in out.dense.iter().enumerate() {
                    prop_assert_eq!((out.orig_start(i), out.orig_end(i)), (s, e), "byte {}", i);
                }
                Ok(())
            };
            for (k, w) in points.windows(2).enumerate() {
                n.feed(&mut st, &text[w[0]..w[1]], w[0], &mut out);
                check(&out)?;
                if let Some(&t) = trims.get(k) {
                    let mut t = t.min(out.len());
                    while !out.text.is_char_boundary(t) {
                        t -= 1;
                    }
                    let floor = st.min_future_origin().map_or(w[1], |o| o.min(w[1]));
                    out.trim_front(t, floor);
                    check(&out)?;
                }
            }
            n.finish(&mut st, &mut out);
            check(&out)?;
        }
    }
}
