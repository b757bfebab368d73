//! Incremental scanning of one text stream; `Policy::scan` is the same machine fed once.
//!
//! Each push normalizes only the new piece (the normalizer carries its separator state), steps
//! the keyword automaton, carried from earlier pushes, over the new normalized characters only,
//! and steps the pattern detectors over the held original tail plus the new text. Keyword work
//! per push is proportional to the new piece; nothing already released is scanned again. Held
//! text is trimmed in batches (`TRIM_MIN`), not on every push.
//!
//! The keywords take one of two ways, chosen per stream. Normally the normalizer hands each
//! character straight to the automaton (`onepass.rs`): no normalized text is written out, and
//! the normalized text around a match that must be checked (an allow phrase, a whole-word edge)
//! is spelled again from a small ring. Where the longest term plus twice that context exceeds
//! the ring's bound, the normalized text and its map back to the original are kept in a
//! `NormBuf` for `KeywordSet::drain`. Both find the same matches and release as much after
//! every piece (tested).
//!
//! `released` contract: after a step returns `released = r`, every finding intersecting `[0, r)`
//! has been reported with its final span, and no later step reports a finding starting before
//! `r`. `r` is the minimum of: the original start of the first live keyword position (or of an
//! undecided match), the normalizer's held character, and each detector's cursor. `finish()`
//! releases everything. `r` is on a char boundary and never decreases.

use std::sync::Arc;

use super::keywords::DrainBufs;
use super::normalize::{NormBuf, NormState};
use super::onepass::{OnePass, Text};
use super::{Direction, Finding, Policy};

/// Largest piece handed to the normalizer at once, so normalized offsets fit in `u32`.
const MAX_SUBPIECE: usize = 1 << 30;
/// Held text is trimmed once this many bytes at its front are no longer needed.
const TRIM_MIN: usize = 512;

/// The result of one `push` or `finish`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScanStep {
    /// New findings, in span order.
    pub findings: Vec<Finding>,
    /// Absolute byte offset into the concatenated pieces up to which text is final.
    pub released: usize,
}

/// The per-stream state, independent of how the policy is held. A clone goes on from the same
/// place (`prefix.rs` keeps clones at the ends of prompt texts).
#[derive(Debug, Default, Clone)]
pub(crate) struct ScanCore {
    norm_state: NormState,
    /// The one-pass keyword walk, unless the direction's longest term plus its context is too
    /// long for the walk's ring; then the normalized text is written to `nbuf` for
    /// `KeywordSet::drain`. Boxed: a stream without terms keeps a word, not the walk's state.
    walk: Option<Box<OnePass>>,
    nbuf: NormBuf,
    /// Absolute normalized offset of `nbuf.text[0]`.
    nbase: usize,
    kw_cursor: usize,
    /// Original text kept for the detectors and the one-pass walk (which reads again from it
    /// after a decided match), starting at absolute offset `orig_base`.
    orig: String,
    orig_base: usize,
    det_cursors: Vec<usize>,
    total: usize,
    released: usize,
    kw_bufs: DrainBufs,
    spans: Vec<(usize, usize)>,
    /// Normalized bytes kept before the keyword cursor (`KeywordSet::context`).
    kw_context: usize,
}

impl ScanCore {
    pub fn new(policy: &Policy, dir: Direction) -> ScanCore {
        let kws = policy.keywords_for(dir);
        ScanCore {
            det_cursors: vec![0; policy.detectors_for(dir).len()],
            kw_context: kws.context(&policy.allow),
            walk: OnePass::new(kws, &policy.allow).map(Box::new),
            ..ScanCore::default()
        }
    }

    /// A core whose keywords always go through `KeywordSet::drain`, to compare the two ways.
    #[cfg(test)]
    pub fn new_drain(policy: &Policy, dir: Direction) -> ScanCore {
        ScanCore {
            walk: None,
            ..ScanCore::new(policy, dir)
        }
    }

    pub fn push(
        &mut self,
        policy: &Policy,
        dir: Direction,
        piece: &str,
        out: &mut Vec<Finding>,
    ) -> usize {
        let mut rest = piece;
        // Normalized offsets must fit in `u32`: a piece over `MAX_SUBPIECE` goes in parts. A
        // token is one part, with no cutting to pay for.
        while rest.len() > MAX_SUBPIECE {
            let mut cut = MAX_SUBPIECE;
            while !rest.is_char_boundary(cut) {
                cut -= 1;
            }
            let (sub, tail) = rest.split_at(cut);
            self.take(policy, dir, sub);
            self.run(policy, dir, false, out);
            rest = tail;
        }
        self.take(policy, dir, rest);
        self.run(policy, dir, false, out)
    }

    /// Read `sub` into the keyword walk (or normalize it onto the held text for `drain`), and
    /// keep the original for the detectors and the walk.
    #[inline(always)]
    fn take(&mut self, policy: &Policy, dir: Direction, sub: &str) {
        if self.walk.is_some() || !self.det_cursors.is_empty() {
            self.orig.push_str(sub);
        }
        let kws = policy.keywords_for(dir);
        if let Some(walk) = &mut self.walk {
            let on = Text::of(policy, dir, &self.orig, self.orig_base);
            walk.feed(&on, &mut self.norm_state, sub, self.total);
        } else if !kws.is_empty() {
            // Without terms the normalized text has no reader (detectors read the original).
            policy
                .normalizer
                .feed(&mut self.norm_state, sub, self.total, &mut self.nbuf);
        }
        self.total += sub.len();
    }

    /// Drop now what [`ScanCore::trim_from`] drops in batches after a piece: a state kept for
    /// later (`prefix.rs`) holds only what may be read again.
    pub fn compact(&mut self, policy: &Policy, dir: Direction) {
        let kws = policy.keywords_for(dir);
        let walk_held = self.walk.as_ref().map(|w| w.held_from(kws));
        self.trim_from(0, walk_held);
    }

    /// Heap and inline bytes this state takes (what a clone of it allocates, about).
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of::<ScanCore>()
            + self.orig.len()
            + self.nbuf.memory_bytes()
            + self.walk.as_ref().map_or(0, |w| w.memory_bytes())
            + self.det_cursors.len() * std::mem::size_of::<usize>()
            + self.kw_bufs.hits.len() * std::mem::size_of::<super::keywords::Hit>()
            + self.spans.len() * std::mem::size_of::<(usize, usize)>()
    }

    pub fn finish(&mut self, policy: &Policy, dir: Direction, out: &mut Vec<Finding>) -> usize {
        match &mut self.walk {
            Some(walk) => {
                let on = Text::of(policy, dir, &self.orig, self.orig_base);
                walk.finish(&on, &mut self.norm_state);
            }
            None => policy
                .normalizer
                .finish(&mut self.norm_state, &mut self.nbuf),
        }
        self.run(policy, dir, true, out)
    }

    fn run(
        &mut self,
        policy: &Policy,
        dir: Direction,
        is_final: bool,
        out: &mut Vec<Finding>,
    ) -> usize {
        let first_new = out.len();
        let kws = policy.keywords_for(dir);
        // Where the walk's held text begins (normalized), asked once: the release and the
        // trim below both need it.
        let mut walk_held = None;
        let kw_hold = match &mut self.walk {
            Some(walk) => {
                let hits = walk.hits();
                // Most pieces of a stream find nothing: skip the extend's set-up.
                if !hits.is_empty() {
                    out.extend(
                        hits.iter()
                            .map(|h| policy.keyword_finding(h.meta, h.start..h.end)),
                    );
                    hits.clear();
                }
                let held = walk.held_from(kws);
                walk_held = Some(held);
                walk.hold(held)
            }
            None => {
                let hold = kws.drain(
                    &policy.allow,
                    &self.nbuf.text,
                    self.nbase,
                    &mut self.kw_cursor,
                    is_final,
                    &mut self.kw_bufs,
                );
                for h in &self.kw_bufs.hits {
                    out.push(policy.keyword_finding(
                        h.meta,
                        self.nbuf.orig_start(h.start - self.nbase)
                            ..self.nbuf.orig_end(h.end - 1 - self.nbase),
                    ));
                }
                hold.map(|h| self.nbuf.orig_start(h - self.nbase))
            }
        };
        let mut released = self.total;
        if !is_final {
            if let Some(h) = kw_hold {
                released = released.min(h);
            }
            if let Some(p) = self.norm_state.pending_origin() {
                released = released.min(p);
            }
        }
        let detectors = if self.det_cursors.is_empty() {
            &[]
        } else {
            policy.detectors_for(dir)
        };
        for (det, cursor) in detectors.iter().zip(self.det_cursors.iter_mut()) {
            self.spans.clear();
            det.step(
                &self.orig,
                self.orig_base,
                cursor,
                is_final,
                &mut self.spans,
            );
            out.extend(
                self.spans
                    .iter()
                    .map(|&(s, e)| policy.detector_finding(det, s..e)),
            );
            if !is_final {
                released = released.min(*cursor);
            }
        }
        debug_assert!(released >= self.released, "released went back");
        self.released = self.released.max(released);
        self.trim_from(TRIM_MIN, walk_held);
        if out.len() - first_new > 1 {
            out[first_new..].sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
        }
        self.released
    }

    /// Drop what no later step can need, once `min` bytes of it can go (held text is trimmed
    /// in batches): normalized text before the keyword cursor (less the context a held match
    /// is checked with) and original text before both the earliest detector cursor (less one
    /// char) and the context before what the one-pass walk holds (`walk_held`: where that
    /// begins, [`OnePass::held_from`]).
    fn trim_from(&mut self, min: usize, walk_held: Option<usize>) {
        self.trim_orig(min, walk_held);
        if self.walk.is_some() {
            return;
        }
        let keep_from = self
            .kw_cursor
            .saturating_sub(self.kw_context)
            .max(self.nbase);
        let mut k = (keep_from - self.nbase).min(self.nbuf.len());
        while !self.nbuf.text.is_char_boundary(k) {
            k -= 1;
        }
        // Trim when the whole buffer goes or enough has piled up: moving the kept tail on
        // every token-sized push costs more than keeping a little extra text.
        if k == self.nbuf.len() || k >= min {
            let floor = self
                .norm_state
                .min_future_origin()
                .map_or(self.total, |o| o.min(self.total));
            self.nbuf.trim_front(k, floor);
            self.nbase += k;
        }
    }

    fn trim_orig(&mut self, min: usize, walk_held: Option<usize>) {
        // Nothing to trim before `released` (and what is kept is a prefix of that): the
        // common case, which needs no look at the walk.
        if self.released - self.orig_base < min && self.released < self.total {
            return;
        }
        // The walk reads again only from the context before what it holds.
        let walk_keep = self
            .walk
            .as_ref()
            .zip(walk_held)
            .map(|(w, held)| w.keep_from(held, self.released));
        let det_keep = self.det_cursors.iter().min().map(|&c| c.saturating_sub(4));
        let Some(keep) = walk_keep.into_iter().chain(det_keep).min() else {
            return;
        };
        let mut k = (keep.max(self.orig_base) - self.orig_base).min(self.orig.len());
        while !self.orig.is_char_boundary(k) {
            k -= 1;
        }
        if k == self.orig.len() || k >= min {
            self.orig.drain(..k);
            self.orig_base += k;
        }
    }
}

/// Scans one text stream (e.g. choice 0 × `content`) as it arrives. Owns the policy it started
/// with, so a policy reload does not change a stream mid-way.
#[derive(Debug)]
pub struct StreamScanner {
    policy: Arc<Policy>,
    dir: Direction,
    core: ScanCore,
}

impl StreamScanner {
    pub(crate) fn new(policy: Arc<Policy>, dir: Direction) -> StreamScanner {
        let core = ScanCore::new(&policy, dir);
        StreamScanner { policy, dir, core }
    }

    /// Feed the next piece of the stream.
    pub fn push(&mut self, piece: &str) -> ScanStep {
        let mut findings = Vec::new();
        let released = self.core.push(&self.policy, self.dir, piece, &mut findings);
        ScanStep { findings, released }
    }

    /// End of stream: everything is final and released. Call once.
    pub fn finish(&mut self) -> ScanStep {
        let mut findings = Vec::new();
        let released = self.core.finish(&self.policy, self.dir, &mut findings);
        ScanStep { findings, released }
    }

    /// Bytes pushed so far.
    pub fn total(&self) -> usize {
        self.core.total
    }

    /// The policy this stream is scanned with.
    pub fn policy(&self) -> &Arc<Policy> {
        &self.policy
    }
}
