//! Turning a `PolicyConfig` into a `Policy`: categories, keyword libraries, allow list,
//! detectors, and the version hash. Reports every problem at once.
//!
//! A term listed in several categories is reported under the strictest one that applies to the
//! direction scanned: highest action (block > redact > flag), then highest severity, then the
//! category configured first (built-ins first, in table order).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use sha2::{Digest, Sha256};

use super::categories::{
    builtin, default_category, group_defaults, group_refusal, valid_custom_id, AppliesTo, Category,
    Evidence, BUILTINS, GROUP_CUSTOM,
};
use super::config::{PolicyConfig, DEFAULT_MAX_MATCH_LEN};
use super::detect::{DetKind, PatternDetector};
use super::keywords::{AllowSet, KeywordSet, TermMeta, MAX_TERM_BYTES};
use super::lists::{read_list, resolve, ListFile};
use super::normalize::{NormBuf, Normalizer};
use super::pii::PiiKind;
use super::stats::tc260_warnings;
use super::{Compiled, Direction, Policy, PolicyError, TermStore};

/// At most this many messages are listed; the rest are counted.
const MAX_MESSAGES: usize = 200;
/// Largest accepted `max_match_len`: bounds what a stream may hold back for a pattern.
const MAX_MATCH_LEN_LIMIT: usize = 64 * 1024;

#[derive(Default)]
struct Report {
    strict: bool,
    errors: Vec<String>,
    warnings: Vec<String>,
    dropped_errors: usize,
    dropped_warnings: usize,
}

impl Report {
    fn error(&mut self, msg: String) {
        if self.errors.len() < MAX_MESSAGES {
            self.errors.push(msg);
        } else {
            self.dropped_errors += 1;
        }
    }

    fn warn(&mut self, msg: String) {
        if self.warnings.len() < MAX_MESSAGES {
            self.warnings.push(msg);
        } else {
            self.dropped_warnings += 1;
        }
    }

    /// A bad list entry: an error when strict, otherwise skipped with a warning.
    fn bad(&mut self, msg: String) {
        if self.strict {
            self.error(msg);
        } else {
            self.warn(format!("{msg}; skipped"));
        }
    }

    fn finish(mut self) -> Result<Vec<String>, PolicyError> {
        if self.dropped_errors > 0 {
            self.errors
                .push(format!("and {} more errors", self.dropped_errors));
        }
        if self.dropped_warnings > 0 {
            self.warnings
                .push(format!("and {} more warnings", self.dropped_warnings));
        }
        if self.errors.is_empty() {
            Ok(self.warnings)
        } else {
            Err(PolicyError::Invalid(self.errors))
        }
    }
}

/// Where a term came from, for messages.
struct Sources {
    names: Vec<(String, bool)>,
}

impl Sources {
    fn add(&mut self, name: String, is_file: bool) -> u32 {
        self.names.push((name, is_file));
        u32::try_from(self.names.len() - 1).unwrap_or(u32::MAX)
    }

    fn loc(&self, src: u32, line: u32) -> String {
        match self.names.get(src as usize) {
            Some((name, true)) => format!("{name}:{line}"),
            Some((name, false)) => format!("{name}[{}]", line.saturating_sub(1)),
            None => "?".to_owned(),
        }
    }
}

struct Entry {
    norm: Box<str>,
    cat: u16,
    term_id: u32,
    /// A term's joined-words form (`policy.normalize.joined_words`), not a listed term.
    joined: bool,
}

struct TermBuilder<'a> {
    normalizer: &'a Normalizer,
    buf: NormBuf,
    store: TermStore,
    locs: Vec<(u32, u32)>,
    entries: Vec<Entry>,
}

impl TermBuilder<'_> {
    fn add(
        &mut self,
        r: &mut Report,
        sources: &Sources,
        term: &str,
        cat: u16,
        src: u32,
        line: u32,
    ) {
        self.normalizer.normalize_str(term, &mut self.buf);
        let t = self.buf.text.as_str();
        if t.is_empty() {
            r.bad(format!(
                "{}: term `{term}` normalizes to nothing",
                sources.loc(src, line)
            ));
            return;
        }
        if t.len() == 1 {
            r.bad(format!(
                "{}: term `{term}` normalizes to the single character `{t}`",
                sources.loc(src, line)
            ));
            return;
        }
        if t.len() > MAX_TERM_BYTES {
            r.bad(format!(
                "{}: term of {} bytes after normalization; the limit is {MAX_TERM_BYTES}",
                sources.loc(src, line),
                t.len()
            ));
            return;
        }
        let Some(id) = self.store.push(term) else {
            r.error("keyword library exceeds 4 GiB of term text".to_owned());
            return;
        };
        self.locs.push((src, line));
        self.entries.push(Entry {
            norm: t.into(),
            cat,
            term_id: id,
            joined: false,
        });
    }
}

fn read_file(
    r: &mut Report,
    base_dir: &Path,
    p: &Path,
    with_category: bool,
    oldest: &mut Option<SystemTime>,
    files: &mut usize,
) -> Option<ListFile> {
    let display = p.display().to_string();
    match read_list(&resolve(base_dir, p), &display, with_category) {
        Ok(f) => {
            *files += 1;
            if let Some(m) = f.modified {
                *oldest = Some(oldest.map_or(m, |o| o.min(m)));
            }
            for issue in &f.issues {
                r.bad(issue.clone());
            }
            Some(f)
        }
        Err(e) => {
            r.error(format!("{display}: cannot read list file: {e}"));
            None
        }
    }
}

/// Build the category table from the built-ins and `policy.categories`.
fn build_categories(cfg: &PolicyConfig, r: &mut Report) -> (Vec<Category>, Vec<Option<u16>>) {
    let mut cats: Vec<Category> = BUILTINS.iter().map(default_category).collect();
    let mut seen = HashSet::new();
    let mut of_cfg = Vec::with_capacity(cfg.categories.len());
    for (i, cc) in cfg.categories.iter().enumerate() {
        let at = format!("policy.categories[{i}]");
        if !seen.insert(cc.id.as_str()) {
            r.error(format!("{at}.id: category `{}` is configured twice", cc.id));
            of_cfg.push(None);
            continue;
        }
        let idx = if let Some(b) = builtin(&cc.id) {
            if cc.name.is_some() {
                r.warn(format!(
                    "{at}.name: built-in category {} keeps its standard name",
                    b.id
                ));
            }
            BUILTINS.iter().position(|x| x.id == b.id).unwrap_or(0)
        } else if !valid_custom_id(&cc.id) {
            r.error(format!(
                "{at}.id: `{}` is not a valid category id (A1a…A5b or [A-Za-z0-9_-]{{1,64}})",
                cc.id
            ));
            of_cfg.push(None);
            continue;
        } else if BUILTINS.iter().any(|b| b.id.eq_ignore_ascii_case(&cc.id)) {
            r.error(format!(
                "{at}.id: `{}` collides with a built-in category id",
                cc.id
            ));
            of_cfg.push(None);
            continue;
        } else {
            let (action, severity) = group_defaults(GROUP_CUSTOM);
            let (rz, re) = group_refusal(GROUP_CUSTOM);
            let (name_zh, name_en) = cc
                .name
                .as_ref()
                .map_or((cc.id.clone(), cc.id.clone()), |n| {
                    (n.zh.clone(), n.en.clone())
                });
            cats.push(Category {
                id: Arc::from(cc.id.as_str()),
                name_zh,
                name_en,
                group: GROUP_CUSTOM.to_owned(),
                action,
                severity,
                applies_to: AppliesTo::Both,
                refusal_zh: rz.to_owned(),
                refusal_en: re.to_owned(),
                evidence: Evidence::Excerpt,
                mask: None,
                whole_words: false,
                minors: None,
            });
            cats.len() - 1
        };
        let Ok(idx16) = u16::try_from(idx) else {
            r.error(format!("{at}: too many categories"));
            of_cfg.push(None);
            continue;
        };
        let c = &mut cats[idx];
        if let Some(a) = cc.action {
            c.action = a;
        }
        if let Some(s) = cc.severity {
            if (1..=5).contains(&s) {
                c.severity = s;
            } else {
                r.error(format!("{at}.severity: {s} is outside 1-5"));
            }
        }
        if let Some(a) = cc.applies_to {
            c.applies_to = a;
        }
        if let Some(t) = &cc.refusal {
            c.refusal_zh = t.zh.clone();
            c.refusal_en = t.en.clone();
        }
        if let Some(e) = cc.evidence {
            c.evidence = e;
        }
        c.mask = cc.mask.clone();
        if let Some(w) = cc.whole_words {
            c.whole_words = w;
        }
        if cc.minors.is_some() {
            c.minors = cc.minors.filter(|&a| a != c.action);
        }
        of_cfg.push(Some(idx16));
    }
    (cats, of_cfg)
}

/// The joined-words form of each normalized term that has spaces (`bomb recipe` →
/// `bombrecipe`), when `on`. A joined form keeps its term's id and category, so a finding names
/// the listed term; it is not a listed term, so it counts in no statistic and is never reported
/// as a duplicate.
fn joined_words(entries: &[Entry], on: bool) -> Vec<Entry> {
    entries
        .iter()
        .filter(|e| on && e.norm.contains(' '))
        .map(|e| Entry {
            norm: e.norm.replace(' ', "").into(),
            cat: e.cat,
            term_id: e.term_id,
            joined: true,
        })
        .collect()
}

/// `entries` and `joined` in the order [`keyword_set`] reads: by normalized term, then
/// category, a listed term before a joined form.
fn match_order<'a>(entries: &'a [Entry], joined: &'a [Entry]) -> Vec<&'a Entry> {
    let mut all: Vec<&Entry> = entries.iter().chain(joined).collect();
    if !joined.is_empty() {
        all.sort_unstable_by(|a, b| {
            (&a.norm, a.cat, a.joined, a.term_id).cmp(&(&b.norm, b.cat, b.joined, b.term_id))
        });
    }
    all
}

/// The strictest applicable category among entries sharing one normalized term.
fn keyword_set(
    entries: &[&Entry],
    cats: &[Category],
    allow: &AllowSet,
    dir: Direction,
    normalizer: &Normalizer,
) -> Result<KeywordSet, String> {
    let mut list: Vec<(&str, TermMeta)> = Vec::with_capacity(entries.len());
    let mut i = 0;
    while i < entries.len() {
        let mut j = i;
        let mut best: Option<&Entry> = None;
        while j < entries.len() && entries[j].norm == entries[i].norm {
            let e = entries[j];
            let c = &cats[e.cat as usize];
            if c.applies_to.includes(dir) {
                let better = best.is_none_or(|b| {
                    let bc = &cats[b.cat as usize];
                    (c.action, c.severity, std::cmp::Reverse(e.cat))
                        > (bc.action, bc.severity, std::cmp::Reverse(b.cat))
                });
                if better {
                    best = Some(e);
                }
            }
            j += 1;
        }
        if let Some(b) = best {
            list.push((
                &b.norm,
                TermMeta {
                    term_id: b.term_id,
                    cat: b.cat,
                    whole_words: cats[b.cat as usize].whole_words,
                },
            ));
        }
        i = j;
    }
    let mut set = KeywordSet::build(&list, allow)?;
    set.fold_runs(normalizer.table());
    Ok(set)
}

fn hash_field(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

pub(crate) fn compile(cfg: &PolicyConfig, base_dir: &Path) -> Result<Compiled, PolicyError> {
    let mut r = Report {
        strict: cfg.strict,
        ..Report::default()
    };
    let (cats, of_cfg) = build_categories(cfg, &mut r);
    let index: HashMap<&str, u16> = cats
        .iter()
        .enumerate()
        .filter_map(|(i, c)| Some((c.id.as_ref(), u16::try_from(i).ok()?)))
        .collect();
    let normalizer = Normalizer::new(&cfg.normalize);
    let mut sources = Sources { names: Vec::new() };
    let mut oldest: Option<SystemTime> = None;
    let mut files = 0usize;
    let mut tb = TermBuilder {
        normalizer: &normalizer,
        buf: NormBuf::default(),
        store: TermStore::default(),
        locs: Vec::new(),
        entries: Vec::new(),
    };

    // Shared list files: the category column is required.
    for p in &cfg.keyword_files {
        let Some(f) = read_file(&mut r, base_dir, p, true, &mut oldest, &mut files) else {
            continue;
        };
        let src = sources.add(p.display().to_string(), true);
        for row in &f.rows {
            let loc = sources.loc(src, row.line);
            match row.category.as_deref() {
                None => r.bad(format!(
                    "{loc}: missing category (expected `term<TAB>category`)"
                )),
                Some(c) => match index.get(c) {
                    Some(&cat) => tb.add(&mut r, &sources, &row.term, cat, src, row.line),
                    None => r.bad(format!("{loc}: unknown category `{c}`")),
                },
            }
        }
    }
    // Per-category terms and files.
    for (i, (cc, idx)) in cfg.categories.iter().zip(&of_cfg).enumerate() {
        let Some(cat) = *idx else { continue };
        let src = sources.add(format!("policy.categories[{i}].keywords"), false);
        for (j, term) in cc.keywords.iter().enumerate() {
            let line = u32::try_from(j + 1).unwrap_or(u32::MAX);
            tb.add(&mut r, &sources, term, cat, src, line);
        }
        for p in &cc.keyword_files {
            let Some(f) = read_file(&mut r, base_dir, p, true, &mut oldest, &mut files) else {
                continue;
            };
            let src = sources.add(p.display().to_string(), true);
            for row in &f.rows {
                let c = match row.category.as_deref() {
                    None => Some(cat),
                    Some(c) => index.get(c).copied(),
                };
                match c {
                    Some(c) => tb.add(&mut r, &sources, &row.term, c, src, row.line),
                    None => r.bad(format!(
                        "{}: unknown category `{}`",
                        sources.loc(src, row.line),
                        row.category.as_deref().unwrap_or("")
                    )),
                }
            }
        }
    }

    // Duplicates: the same normalized term twice in one category.
    let TermBuilder {
        store,
        locs,
        mut entries,
        ..
    } = tb;
    entries.sort_unstable_by(|a, b| (&a.norm, a.cat, a.term_id).cmp(&(&b.norm, b.cat, b.term_id)));
    let mut keep = vec![true; entries.len()];
    for k in 1..entries.len() {
        let (a, b) = (&entries[k - 1], &entries[k]);
        if a.norm == b.norm && a.cat == b.cat {
            keep[k] = false;
            let (s1, l1) = locs[a.term_id as usize];
            let (s2, l2) = locs[b.term_id as usize];
            r.bad(format!(
                "{}: duplicate term `{}` in category {} (first at {})",
                sources.loc(s2, l2),
                store.get(b.term_id).unwrap_or(""),
                cats[b.cat as usize].id,
                sources.loc(s1, l1)
            ));
        }
    }
    let mut it = keep.iter();
    entries.retain(|_| it.next().copied().unwrap_or(false));
    drop(locs);

    // Allow list.
    let mut allow_norm = Vec::new();
    let mut buf = NormBuf::default();
    let mut add_allow = |r: &mut Report, phrase: &str, loc: String| {
        normalizer.normalize_str(phrase, &mut buf);
        if buf.text.is_empty() {
            r.bad(format!(
                "{loc}: allow phrase `{phrase}` normalizes to nothing"
            ));
        } else {
            allow_norm.push(buf.text.clone());
        }
    };
    for (j, phrase) in cfg.allow.iter().enumerate() {
        add_allow(&mut r, phrase, format!("policy.allow[{j}]"));
    }
    for p in &cfg.allow_files {
        if let Some(f) = read_file(&mut r, base_dir, p, false, &mut oldest, &mut files) {
            for row in &f.rows {
                add_allow(&mut r, &row.term, format!("{}:{}", p.display(), row.line));
            }
        }
    }
    // With `joined_words`, a phrase of several words is allowed with its spaces left out too,
    // as the terms it is there to let through are matched that way.
    if cfg.normalize.joined_words {
        let joined: Vec<String> = allow_norm
            .iter()
            .filter(|p| p.contains(' '))
            .map(|p| p.replace(' ', ""))
            .collect();
        allow_norm.extend(joined);
    }
    let allow = AllowSet::build(allow_norm)
        .map_err(|e| PolicyError::Invalid(vec![format!("allow list: {e}")]))?;

    // Detectors.
    let mut detectors: Vec<PatternDetector> = Vec::new();
    for (i, (cc, idx)) in cfg.categories.iter().zip(&of_cfg).enumerate() {
        let Some(cat) = *idx else { continue };
        let id = &cats[cat as usize].id;
        if let Some(kind) = cc.detector {
            match PatternDetector::pii(cat, kind) {
                Ok(d) => detectors.push(d),
                Err(e) => r.error(format!(
                    "policy.categories[{i}].detector: category `{id}`: {e}"
                )),
            }
        }
        let max_len = cc.max_match_len.unwrap_or(DEFAULT_MAX_MATCH_LEN);
        if !(1..=MAX_MATCH_LEN_LIMIT).contains(&max_len) {
            r.error(format!(
                "policy.categories[{i}].max_match_len: {max_len} is outside 1-{MAX_MATCH_LEN_LIMIT}"
            ));
            continue;
        }
        for (j, pat) in cc.patterns.iter().enumerate() {
            match regex::Regex::new(pat) {
                Ok(re) => detectors.push(PatternDetector::new(
                    cat,
                    DetKind::Pattern(Arc::from(format!("{id}#{j}"))),
                    re,
                    max_len,
                )),
                Err(e) => r.error(format!(
                    "policy.categories[{i}].patterns[{j}]: category `{id}`: pattern does not compile: {e}"
                )),
            }
        }
    }

    // Per-direction matchers; shared when no category is limited to one side. They match the
    // listed terms and, with `joined_words`, each multi-word term with its spaces left out.
    let joined = joined_words(&entries, cfg.normalize.joined_words);
    let matched = match_order(&entries, &joined);
    let one_sided = cats.iter().any(|c| c.applies_to != AppliesTo::Both);
    let build_err = |e: String| PolicyError::Invalid(vec![format!("keyword automaton: {e}")]);
    let set = |dir: Direction| keyword_set(&matched, &cats, &allow, dir, &normalizer);
    let kw_prompt = Arc::new(set(Direction::Prompt).map_err(build_err)?);
    let kw_completion = if one_sided {
        Arc::new(set(Direction::Completion).map_err(build_err)?)
    } else {
        Arc::clone(&kw_prompt)
    };
    let split = |dir: Direction| -> Vec<PatternDetector> {
        detectors
            .iter()
            .filter(|d| cats[d.cat as usize].applies_to.includes(dir))
            .cloned()
            .collect()
    };
    let (det_prompt, det_completion) = (split(Direction::Prompt), split(Direction::Completion));
    let det_pii: Vec<PatternDetector> = detectors
        .iter()
        .filter(|d| matches!(d.kind, DetKind::Pii(_)))
        .cloned()
        .collect();
    let det_pii_unlisted = PiiKind::ALL
        .into_iter()
        .filter(|k| {
            !det_pii
                .iter()
                .any(|d| matches!(d.kind, DetKind::Pii(x) if x == *k))
        })
        .map(|k| PatternDetector::pii(u16::MAX, k))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PolicyError::Invalid(vec![format!("built-in PII detector: {e}")]))?;

    let mut terms_per_cat = vec![0usize; cats.len()];
    for e in &entries {
        terms_per_cat[e.cat as usize] += 1;
    }

    // Version: a hash of everything that decides a verdict.
    let mut h = Sha256::new();
    hash_field(&mut h, b"shenhe-policy-v1");
    hash_field(
        &mut h,
        &serde_json::to_vec(&cfg.normalize).unwrap_or_default(),
    );
    hash_field(&mut h, cfg.redaction.keyword_mask.as_bytes());
    for c in &cats {
        hash_field(&mut h, &serde_json::to_vec(c).unwrap_or_default());
    }
    for e in &entries {
        hash_field(&mut h, e.norm.as_bytes());
        hash_field(&mut h, cats[e.cat as usize].id.as_bytes());
        hash_field(&mut h, store.get(e.term_id).unwrap_or("").as_bytes());
        h.update(e.term_id.to_le_bytes());
    }
    for d in &detectors {
        hash_field(&mut h, cats[d.cat as usize].id.as_bytes());
        hash_field(&mut h, d.pattern_source().as_bytes());
        h.update((d.max_len() as u64).to_le_bytes());
    }
    // Allow phrases in normalized, sorted form are what matters; the automaton has them.
    allow.hash_into(&mut h);
    let digest = h.finalize();
    let version = format!(
        "p-{}",
        digest[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );

    let counts: Vec<(&Category, usize)> = cats.iter().zip(terms_per_cat.iter().copied()).collect();
    for w in tc260_warnings(
        entries.len(),
        &counts,
        oldest,
        &cfg.library,
        SystemTime::now(),
    ) {
        r.warn(w);
    }
    let warnings = r.finish()?;
    let total_terms = entries.len();
    drop(entries);
    let index = cats
        .iter()
        .enumerate()
        .map(|(i, c)| (c.id.to_string(), i))
        .collect();
    Ok(Compiled {
        policy: Policy {
            version,
            normalizer,
            categories: cats,
            index,
            kw_prompt,
            kw_completion,
            allow,
            det_prompt,
            det_completion,
            det_pii,
            det_pii_unlisted,
            pattern_detectors: detectors.len(),
            terms: store,
            keyword_mask: cfg.redaction.keyword_mask.clone(),
            terms_per_cat,
            total_terms,
            oldest_list_mtime: oldest,
            list_files: files,
            library: cfg.library.clone(),
            prefixes: super::prefix::PrefixCache::new(cfg.prompt_prefix_cache.0.get()),
        },
        warnings,
    })
}
