//! The policy engine: compiled keyword libraries, PII and pattern detectors, and categories,
//! scanning text one-shot or as a stream. Pure library: no HTTP, no I/O after `compile`.
//!
//! Flow: [`Policy::compile`] reads the lists and builds an immutable [`Policy`] (shared as
//! `Arc<Policy>`, swapped whole on reload through [`PolicyHandle`]). [`Policy::scan`] checks one
//! text; [`Policy::scanner`] gives a [`StreamScanner`] that checks a text arriving in pieces and
//! says how much of it is final (`released`). Both give the same findings for the same text.
//!
//! Files, in the order text meets them: `config.rs` (YAML shape), `lists.rs` (list files),
//! `categories.rs` (the 31 TC260-003 types), `compile.rs`, `normalize.rs`, `keywords.rs`
//! (term trie, allow list, the streaming machine), `ascii_dfa.rs` and `cjk_da.rs` (the
//! automaton's steps over English and over CJK runs as tables; `state_map.rs` finds a state's
//! place in them), `onepass.rs` (normalization and matching in one pass: whole texts and
//! streams), `pii.rs` and `detect.rs` (regex detectors), `scanner.rs` (streaming),
//! `finding.rs`, `stats.rs`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;

mod ascii_dfa;
mod categories;
mod cjk_da;
mod compile;
pub mod config;
mod detect;
mod finding;
mod keywords;
mod lists;
mod normalize;
mod onepass;
mod pii;
mod prefix;
mod scanner;
mod state_map;
mod stats;
#[cfg(test)]
mod tests;

pub use categories::{Action, AppliesTo, Category, Evidence};
pub use config::PolicyConfig;
pub use finding::{Detector, Direction, Finding, ReportLine};
pub use pii::PiiKind;
pub use prefix::JoinedScan;
pub use scanner::{ScanStep, StreamScanner};
pub use stats::PolicyStats;

use detect::PatternDetector;
use keywords::{AllowSet, KeywordSet};
use normalize::{NormBuf, Normalizer};

/// Why a policy did not compile. Lists every problem found, each naming its YAML path or
/// `file:line`.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("invalid policy: {}", .0.join("; "))]
    Invalid(Vec<String>),
}

/// A compiled policy and the warnings met on the way (skipped list lines, TC260-003 §8.1
/// shortfalls).
#[derive(Debug)]
pub struct Compiled {
    pub policy: Policy,
    pub warnings: Vec<String>,
}

/// Original term texts, by term id, in one allocation.
#[derive(Debug, Default)]
pub(crate) struct TermStore {
    text: String,
    ends: Vec<u32>,
}

impl TermStore {
    fn push(&mut self, t: &str) -> Option<u32> {
        let id = u32::try_from(self.ends.len()).ok()?;
        let end = u32::try_from(self.text.len() + t.len()).ok()?;
        self.text.push_str(t);
        self.ends.push(end);
        Some(id)
    }

    fn get(&self, id: u32) -> Option<&str> {
        let i = id as usize;
        let end = *self.ends.get(i)? as usize;
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        self.text.get(start..end)
    }

    fn memory_usage(&self) -> usize {
        self.text.capacity() + self.ends.capacity() * 4
    }
}

/// A compiled, immutable policy. `Send + Sync`; share it as `Arc<Policy>`.
pub struct Policy {
    version: String,
    normalizer: Normalizer,
    categories: Vec<Category>,
    index: HashMap<String, usize>,
    kw_prompt: Arc<KeywordSet>,
    kw_completion: Arc<KeywordSet>,
    allow: AllowSet,
    det_prompt: Vec<PatternDetector>,
    det_completion: Vec<PatternDetector>,
    /// The built-in PII detectors of every category, whichever direction it applies to: what
    /// masks excerpts kept in audit records.
    det_pii: Vec<PatternDetector>,
    /// The built-in PII kinds no category names, each masked by its own rule in excerpts kept
    /// in records all the same (Art. 11): a record never keeps a phone number because the
    /// policy does not act on phone numbers.
    det_pii_unlisted: Vec<PatternDetector>,
    pattern_detectors: usize,
    terms: TermStore,
    keyword_mask: String,
    terms_per_cat: Vec<usize>,
    total_terms: usize,
    oldest_list_mtime: Option<SystemTime>,
    list_files: usize,
    library: config::LibraryConfig,
    /// Scanner states at the ends of prompt texts scanned before (`prefix.rs`); `None`: off.
    prefixes: Option<prefix::PrefixCache>,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("version", &self.version)
            .field("terms", &self.total_terms)
            .field("allow", &self.allow.len())
            .field("detectors", &self.pattern_detectors)
            .finish_non_exhaustive()
    }
}

/// Apply a mask spec: one character is repeated per character of `matched`, anything else
/// replaces the match verbatim.
fn apply_mask(spec: &str, matched: &str) -> String {
    let mut it = spec.chars();
    match (it.next(), it.next()) {
        (Some(c), None) => std::iter::repeat_n(c, matched.chars().count()).collect(),
        _ => spec.to_owned(),
    }
}

impl Policy {
    /// Compile `cfg`; relative list paths resolve against `base_dir` (the config file's folder).
    pub fn compile(cfg: &PolicyConfig, base_dir: &Path) -> Result<Compiled, PolicyError> {
        compile::compile(cfg, base_dir)
    }

    /// `"p-"` + 16 hex digits of the SHA-256 of the compiled content (terms with their
    /// categories, allow phrases, detectors, category settings, normalization). Same input →
    /// same version.
    pub fn version(&self) -> &str {
        &self.version
    }

    pub(crate) fn keywords_for(&self, dir: Direction) -> &KeywordSet {
        match dir {
            Direction::Prompt => &self.kw_prompt,
            Direction::Completion => &self.kw_completion,
        }
    }

    pub(crate) fn detectors_for(&self, dir: Direction) -> &[PatternDetector] {
        match dir {
            Direction::Prompt => &self.det_prompt,
            Direction::Completion => &self.det_completion,
        }
    }

    /// Every finding in `text` for categories that apply to `dir`, in span order.
    ///
    /// Keywords go through the one-pass scan (`onepass.rs`) unless it declines (a term too
    /// long for its ring); then the whole scan is the streaming machine fed once. Detectors
    /// read the original text.
    pub fn scan(&self, text: &str, dir: Direction) -> Vec<Finding> {
        let kws = self.keywords_for(dir);
        let hits = if kws.is_empty() {
            Some(Vec::new())
        } else {
            onepass::keyword_hits(&self.normalizer, kws, &self.allow, text)
        };
        let mut out = Vec::new();
        let Some(hits) = hits else {
            let mut core = scanner::ScanCore::new(self, dir);
            core.push(self, dir, text, &mut out);
            core.finish(self, dir, &mut out);
            out.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
            return out;
        };
        out.extend(
            hits.iter()
                .map(|h| self.keyword_finding(h.meta, h.start..h.end)),
        );
        self.detect_whole(self.detectors_for(dir), text, &mut out);
        out.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
        out
    }

    /// The findings of `dets` over the whole of `text`, appended to `out`.
    fn detect_whole(&self, dets: &[PatternDetector], text: &str, out: &mut Vec<Finding>) {
        let mut spans = Vec::new();
        for det in dets {
            let mut cursor = 0;
            spans.clear();
            det.step(text, 0, &mut cursor, true, &mut spans);
            out.extend(spans.iter().map(|&(s, e)| self.detector_finding(det, s..e)));
        }
    }

    /// The finding of a match of keyword `meta` at original `span`.
    pub(crate) fn keyword_finding(
        &self,
        meta: keywords::TermMeta,
        span: std::ops::Range<usize>,
    ) -> Finding {
        let detector = Detector::Keyword {
            term_id: meta.term_id,
        };
        self.finding(meta.cat, detector, span)
    }

    /// The finding of detector `det` at original `span`.
    pub(crate) fn detector_finding(
        &self,
        det: &PatternDetector,
        span: std::ops::Range<usize>,
    ) -> Finding {
        self.finding(det.cat, det.finding_detector(), span)
    }

    fn finding(&self, cat: u16, detector: Detector, span: std::ops::Range<usize>) -> Finding {
        let cat = &self.categories[usize::from(cat)];
        Finding {
            category: Arc::clone(&cat.id),
            action: cat.action,
            severity: cat.severity,
            detector,
            span,
        }
    }

    /// A scanner for one text stream, holding this policy for its whole life.
    pub fn scanner(self: &Arc<Self>, dir: Direction) -> StreamScanner {
        StreamScanner::new(Arc::clone(self), dir)
    }

    /// Redaction text for finding `f` whose original text is `matched`: the category's `mask` if
    /// set, else the PII detector's rule (phone `138****8000`, cards and ids keep the last 4,
    /// e-mail `z***@domain`, IP last part `*`), else `redaction.keyword_mask`.
    pub fn mask(&self, f: &Finding, matched: &str) -> String {
        let cat_mask = self.category(&f.category).and_then(|c| c.mask.as_deref());
        match (cat_mask, &f.detector) {
            (Some(m), _) => apply_mask(m, matched),
            (None, Detector::Pii { kind }) => kind.mask(matched),
            (None, _) => apply_mask(&self.keyword_mask, matched),
        }
    }

    /// `text` with the personal information the policy's PII detectors find masked by their
    /// rules (or their category's `mask`), for excerpts kept in records. Every PII category
    /// counts, whichever direction it applies to and whatever its action; keywords and custom
    /// patterns are not looked for, so no keyword library is scanned for this.
    pub fn mask_pii(&self, text: &str) -> String {
        let mut findings = Vec::new();
        self.detect_whole(&self.det_pii, text, &mut findings);
        for f in &mut findings {
            f.action = Action::Redact;
        }
        let listed = if findings.is_empty() {
            std::borrow::Cow::Borrowed(text)
        } else {
            findings.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
            std::borrow::Cow::Owned(self.redact(text, &findings))
        };
        mask_unlisted_pii(&self.det_pii_unlisted, listed).into_owned()
    }

    /// `text` with every `Redact` finding replaced by its mask. Findings whose span does not fit
    /// `text` are ignored; where redactions overlap, the part already replaced is not replaced
    /// again and the rest gets the keyword mask.
    pub fn redact(&self, text: &str, findings: &[Finding]) -> String {
        let mut red: Vec<&Finding> = findings
            .iter()
            .filter(|f| f.action == Action::Redact && text.get(f.span.clone()).is_some())
            .collect();
        red.sort_by_key(|f| (f.span.start, std::cmp::Reverse(f.span.end)));
        let mut out = String::with_capacity(text.len());
        let mut pos = 0;
        for f in red {
            let (s, e) = (f.span.start, f.span.end);
            if e <= pos {
                continue;
            }
            if s >= pos {
                out.push_str(&text[pos..s]);
                out.push_str(&self.mask(f, &text[s..e]));
            } else {
                out.push_str(&apply_mask(&self.keyword_mask, &text[pos..e]));
            }
            pos = e;
        }
        out.push_str(&text[pos..]);
        out
    }

    pub fn category(&self, id: &str) -> Option<&Category> {
        self.index.get(id).map(|&i| &self.categories[i])
    }

    /// Findings as they act on a minor's request: each category's `minors` action where it has
    /// one (the scan itself is the same for everyone).
    pub fn for_minor(&self, findings: &mut [Finding]) {
        for f in findings {
            if let Some(c) = self.category(&f.category) {
                f.action = c.action_for(true);
            }
        }
    }

    /// The 31 built-in categories in TC260-003 order, then custom ones in config order.
    pub fn categories(&self) -> impl Iterator<Item = &Category> {
        self.categories.iter()
    }

    /// The original text of a keyword term, for audit records and `shenhe scan`. Never show it
    /// to clients.
    pub fn term(&self, term_id: u32) -> Option<&str> {
        self.terms.get(term_id)
    }

    /// The matching form of `text` under this policy's normalization (for `shenhe scan` and
    /// debugging lists).
    pub fn normalize(&self, text: &str) -> String {
        let mut buf = NormBuf::default();
        self.normalizer.normalize_str(text, &mut buf);
        buf.text
    }

    pub fn stats(&self) -> PolicyStats {
        let counts: Vec<(&Category, usize)> = self
            .categories
            .iter()
            .zip(self.terms_per_cat.iter().copied())
            .collect();
        let warnings = stats::tc260_warnings(
            self.total_terms,
            &counts,
            self.oldest_list_mtime,
            &self.library,
            SystemTime::now(),
        );
        let automaton_bytes = self.kw_prompt.memory_usage()
            + if Arc::ptr_eq(&self.kw_prompt, &self.kw_completion) {
                0
            } else {
                self.kw_completion.memory_usage()
            }
            + self.allow.memory_usage()
            + self.terms.memory_usage();
        PolicyStats {
            version: self.version.clone(),
            total_terms: self.total_terms,
            terms_per_category: counts.iter().map(|(c, n)| (c.id.to_string(), *n)).collect(),
            allow_phrases: self.allow.len(),
            pattern_detectors: self.pattern_detectors,
            list_files: self.list_files,
            oldest_list_mtime: self.oldest_list_mtime,
            automaton_bytes,
            warnings,
        }
    }

    /// Set `shenhe_policy_terms{category}`, `shenhe_policy_age_seconds` and
    /// `shenhe_policy_info{version}` for this policy (call after it becomes active).
    pub fn publish_metrics(&self) {
        let m = crate::metrics::metrics();
        m.policy_terms.reset();
        for (c, n) in self.categories.iter().zip(&self.terms_per_cat) {
            m.policy_terms
                .with_label_values(&[c.id.as_ref()])
                .set(i64::try_from(*n).unwrap_or(i64::MAX));
        }
        let age = self
            .oldest_list_mtime
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        m.policy_age_seconds.set(age);
        m.policy_info.reset();
        m.policy_info
            .with_label_values(&[self.version.as_str()])
            .set(1);
    }
}

/// Findings of `text` as report lines for `shenhe scan` (operators only: includes terms).
pub fn scan_report(policy: &Policy, text: &str, dir: Direction) -> Vec<ReportLine> {
    policy
        .scan(text, dir)
        .into_iter()
        .map(|f| ReportLine {
            term: match f.detector {
                Detector::Keyword { term_id } => policy.term(term_id).map(str::to_owned),
                _ => None,
            },
            matched: text.get(f.span.clone()).unwrap_or("").to_owned(),
            category: f.category,
            action: f.action,
            severity: f.severity,
            detector: f.detector,
            span: f.span,
        })
        .collect()
}

/// The hot-reload seam: the active policy, swapped whole. Loading never blocks; a stream keeps
/// the `Arc<Policy>` it started with.
pub type SharedPolicy = ArcSwap<Policy>;

/// A small wrapper over [`SharedPolicy`].
#[derive(Debug)]
pub struct PolicyHandle {
    inner: ArcSwap<Policy>,
}

impl PolicyHandle {
    pub fn new(policy: Policy) -> PolicyHandle {
        PolicyHandle {
            inner: ArcSwap::from_pointee(policy),
        }
    }

    /// The active policy.
    pub fn load(&self) -> Arc<Policy> {
        self.inner.load_full()
    }

    /// Make `policy` active and return the previous one. Build the new policy first (that is
    /// the slow part); the swap itself is atomic and wait-free for readers.
    pub fn replace(&self, policy: Policy) -> Arc<Policy> {
        self.inner.swap(Arc::new(policy))
    }
}

/// `text` with what `dets` (built-in PII detectors of no category) find replaced by each kind's
/// own mask.
fn mask_unlisted_pii<'a>(
    dets: &[PatternDetector],
    text: std::borrow::Cow<'a, str>,
) -> std::borrow::Cow<'a, str> {
    let mut text = text;
    for det in dets {
        let detect::DetKind::Pii(kind) = det.kind else {
            continue;
        };
        let (mut spans, mut cursor) = (Vec::new(), 0);
        det.step(&text, 0, &mut cursor, true, &mut spans);
        if spans.is_empty() {
            continue;
        }
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for (s, e) in spans {
            if s < at || text.get(s..e).is_none() {
                continue;
            }
            out.push_str(&text[at..s]);
            out.push_str(&kind.mask(&text[s..e]));
            at = e;
        }
        out.push_str(&text[at..]);
        text = std::borrow::Cow::Owned(out);
    }
    text
}
