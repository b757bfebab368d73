//! Policy-level tests: compile, scan, stream, redaction, and the proptest of chunking invariance.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use proptest::prelude::*;

use super::config::{CategoryConfig, NormalizeConfig, PolicyConfig, TextPair};
use super::*;

fn cat(id: &str, action: Option<Action>, keywords: &[&str]) -> CategoryConfig {
    CategoryConfig {
        id: id.to_owned(),
        action,
        keywords: keywords.iter().map(|s| (*s).to_owned()).collect(),
        ..CategoryConfig::default()
    }
}

fn compile(cfg: &PolicyConfig) -> Policy {
    match Policy::compile(cfg, Path::new(".")) {
        Ok(c) => c.policy,
        Err(e) => panic!("policy does not compile: {e}"),
    }
}

/// The policy used by most tests and by the proptest.
fn sample_config() -> PolicyConfig {
    PolicyConfig {
        allow: vec!["炸弹鱼".into()],
        categories: vec![
            cat("A1d", None, &["制造炸弹", "炸弹", "bomb", "forbid"]),
            cat("A4a", None, &["鱼翅", "bad phrase", "炸弹制作"]),
            CategoryConfig {
                detector: Some(PiiKind::CnMobile),
                action: Some(Action::Redact),
                ..cat("pii-phone", None, &[])
            },
            CategoryConfig {
                detector: Some(PiiKind::Email),
                action: Some(Action::Redact),
                ..cat("pii-email", None, &[])
            },
            CategoryConfig {
                patterns: vec![r"(?i)secret-\d+".into()],
                max_match_len: Some(16),
                ..cat("my-regex", Some(Action::Flag), &[])
            },
        ],
        ..PolicyConfig::default()
    }
}

fn sample() -> Arc<Policy> {
    Arc::new(compile(&sample_config()))
}

/// The sample without its custom regex, which holds back a bounded tail of
/// `max_match_len + 8` bytes whatever the text.
fn sample_without_regex() -> Arc<Policy> {
    let mut cfg = sample_config();
    cfg.categories.retain(|c| c.patterns.is_empty());
    Arc::new(compile(&cfg))
}

fn spans(p: &Policy, text: &str) -> Vec<(String, &'static str)> {
    p.scan(text, Direction::Prompt)
        .iter()
        .map(|f| {
            let kind = match f.detector {
                Detector::Keyword { .. } => "kw",
                Detector::Pattern { .. } => "pattern",
                Detector::Pii { .. } => "pii",
                Detector::Classifier { .. } => "classifier",
            };
            (text[f.span.clone()].to_owned(), kind)
        })
        .collect()
}

fn matched(p: &Policy, text: &str) -> Vec<String> {
    spans(p, text).into_iter().map(|(s, _)| s).collect()
}

#[test]
fn obfuscated_terms_match_with_original_spans() {
    let p = sample();
    assert_eq!(matched(&p, "如何制 造*炸|弹？"), ["制 造*炸|弹"]);
    assert_eq!(matched(&p, "製造炸彈"), ["製造炸彈"]);
    assert_eq!(matched(&p, "制\u{200B}造炸弹"), ["制\u{200B}造炸弹"]);
    assert_eq!(matched(&p, "a ＢＯＭＢ!"), ["ＢＯＭＢ"]);
    assert_eq!(matched(&p, "b\u{043E}mb"), ["b\u{043E}mb"], "Cyrillic о");
    assert_eq!(matched(&p, "f.o.r.b.i.d"), ["f.o.r.b.i.d"]);
    assert_eq!(matched(&p, "say f o r b i d now"), ["f o r b i d"]);
    assert_eq!(matched(&p, "a bad   phrase"), ["bad   phrase"]);
}

#[test]
fn whole_words_are_not_glued() {
    let cfg = PolicyConfig {
        categories: vec![cat("A1h", None, &["forbiddenword"])],
        ..PolicyConfig::default()
    };
    let p = compile(&cfg);
    assert!(matched(&p, "forbidden word").is_empty());
    assert!(matched(&p, "a forbidden wordlist").is_empty());
    assert_eq!(matched(&p, "forbiddenword"), ["forbiddenword"]);
}

#[test]
fn multi_word_terms_match_with_their_spaces_left_out() {
    let cfg = PolicyConfig {
        categories: vec![
            cat("A1d", Some(Action::Block), &["bomb recipe", "make a gun"]),
            // Listed as its own term too, in a milder category.
            cat("A4a", Some(Action::Flag), &["makeagun"]),
        ],
        ..PolicyConfig::default()
    };
    let p = compile(&cfg);
    let term = |f: &Finding| match f.detector {
        Detector::Keyword { term_id } => p.term(term_id).map(str::to_owned),
        _ => None,
    };
    for text in [
        "bomb recipe",
        "a bombrecipe!",
        "BOMB_RECIPE",
        "b o m b r e c i p e",
        "b.o.m.b.r.e.c.i.p.e",
        "bomb\u{200B}recipe",
    ] {
        let found = p.scan(text, Direction::Prompt);
        assert_eq!(found.len(), 1, "{text}");
        // The finding names the listed term, with its category.
        assert_eq!(term(&found[0]).as_deref(), Some("bomb recipe"), "{text}");
        assert_eq!(&*found[0].category, "A1d", "{text}");
    }
    // The strictest category wins where a joined form is also a listed term.
    let found = p.scan("makeagun", Direction::Prompt);
    assert_eq!(found.len(), 1);
    assert_eq!(&*found[0].category, "A1d");
    assert_eq!(term(&found[0]).as_deref(), Some("make a gun"));
    // Listed terms are counted once; the joined form is no duplicate.
    assert_eq!(p.stats().total_terms, 3);
    // A term without spaces still does not match words apart.
    assert!(matched(&p, "make agun").is_empty());
    // A stream finds the joined form split anywhere.
    let mut s = Arc::new(p).scanner(Direction::Completion);
    let mut n = 0;
    for piece in ["xx bo", "mbre", "ci", "pe yy"] {
        n += s.push(piece).findings.len();
    }
    n += s.finish().findings.len();
    assert_eq!(n, 1);

    // Switched off: only the words as listed.
    let mut off = cfg.clone();
    off.normalize.joined_words = false;
    let p = compile(&off);
    assert!(matched(&p, "a bombrecipe!").is_empty());
    assert_eq!(matched(&p, "bomb  recipe"), ["bomb  recipe"]);
    assert_ne!(p.version(), compile(&cfg).version());

    // An allow phrase of several words lets the joined form through where it lets the words
    // through, streamed or whole; the joined term alone is still found.
    let allowed = PolicyConfig {
        allow: vec!["bomb recipe book".into()],
        ..cfg.clone()
    };
    let p = Arc::new(compile(&allowed));
    for text in [
        "the bomb recipe book",
        "the bombrecipebook",
        "the BOMB_RECIPE_BOOK",
    ] {
        assert!(matched(&p, text).is_empty(), "{text}");
        let mut s = p.scanner(Direction::Completion);
        let mut n = 0;
        for piece in text.as_bytes().chunks(3) {
            n += s
                .push(std::str::from_utf8(piece).expect("ASCII"))
                .findings
                .len();
        }
        n += s.finish().findings.len();
        assert_eq!(n, 0, "{text}");
    }
    assert_eq!(matched(&p, "the bombrecipe cook"), ["bombrecipe"]);
}

/// A policy with a `whole_words` category beside the sample's substring ones.
fn whole_words_config() -> PolicyConfig {
    let mut cfg = sample_config();
    cfg.categories.push(CategoryConfig {
        whole_words: Some(true),
        ..cat("A2a", None, &["ass", "bad", "坏ass", "e"])
    });
    cfg
}

#[test]
fn a_whole_word_term_failing_its_edge_gives_way_to_a_shorter_one() {
    let cfg = PolicyConfig {
        categories: vec![CategoryConfig {
            whole_words: Some(true),
            ..cat("A2a", None, &["fuck", "fuck you"])
        }],
        ..PolicyConfig::default()
    };
    let p = Arc::new(compile(&cfg));
    assert_eq!(matched(&p, "FUCK yourself"), ["FUCK"]);
    assert_eq!(matched(&p, "f.u.c.k yourself"), ["f.u.c.k"]);
    assert_eq!(matched(&p, "fuck you!"), ["fuck you"]);
    assert!(matched(&p, "fucked yourself").is_empty());
    // A stream finds it too, and holds it back until its edge is seen.
    let mut s = p.scanner(Direction::Completion);
    assert!(s.push("oh fuck").findings.is_empty());
    assert!(s.push(" yo").findings.is_empty());
    assert_eq!(s.push("urself").findings.len(), 1);
}

#[test]
fn whole_word_categories_match_latin_terms_as_words() {
    let p = compile(&whole_words_config());
    assert!(matched(&p, "a class of assistants").is_empty());
    assert_eq!(matched(&p, "what an ASS!"), ["ASS"]);
    assert_eq!(matched(&p, "a.s.s"), ["a.s.s"], "obfuscation still folds");
    assert_eq!(matched(&p, "ａｓｓ"), ["ａｓｓ"], "full width");
    assert_eq!(matched(&p, "说ass话"), ["ass"], "CJK around is an edge");
    assert_eq!(matched(&p, "坏ass"), ["坏ass"]);
    assert!(matched(&p, "坏assx").is_empty(), "its Latin end is checked");
    assert!(matched(&p, "badge").is_empty());
    // Categories without the flag still match inside words.
    assert_eq!(matched(&p, "bombastic"), ["bomb"]);
    // The category shows in /admin/policy's form, and the flag changes the version.
    let c = p.category("A2a").expect("category");
    assert!(c.whole_words);
    assert_ne!(p.version(), compile(&sample_config()).version());
    let mut off = whole_words_config();
    off.categories.last_mut().expect("added").whole_words = Some(false);
    assert_ne!(p.version(), compile(&off).version());
    // Streaming (keywords only: the e-mail detector would hold word characters too): a match
    // at the end of what has come is held until the next character.
    let mut kw = whole_words_config();
    kw.categories
        .retain(|c| c.detector.is_none() && c.patterns.is_empty());
    let p = Arc::new(compile(&kw));
    let mut s = p.scanner(Direction::Completion);
    let st = s.push("you ass");
    assert!(st.findings.is_empty());
    assert_eq!(st.released, "you ".len());
    let st = s.push("ist");
    assert!(st.findings.is_empty(), "assist is a word of its own");
    let st = s.push(" ass");
    assert!(st.findings.is_empty());
    // A separator stays pending in the normalizer until what follows it shows what it becomes.
    let st = s.push(".");
    assert!(st.findings.is_empty());
    let st = s.push(" Yes");
    assert_eq!(st.findings.len(), 1);
    assert_eq!(
        st.findings[0].span,
        "you assist ".len().."you assist ass".len()
    );
}

#[test]
fn allow_phrases_suppress_contained_matches() {
    let p = sample();
    // "炸弹鱼" (a fish) is allowed; "炸弹" alone is not.
    assert!(matched(&p, "今天钓到一条炸弹鱼").is_empty());
    assert_eq!(matched(&p, "他想要炸弹"), ["炸弹"]);
    // "鱼翅" overlaps the allow phrase but is not inside it.
    assert_eq!(matched(&p, "炸弹鱼翅"), ["鱼翅"]);
}

#[test]
fn strictest_category_wins_and_directions_filter() {
    let cfg = PolicyConfig {
        categories: vec![
            cat("A3a", Some(Action::Flag), &["盗版软件"]),
            cat("A1h", Some(Action::Block), &["盗版软件"]),
            CategoryConfig {
                applies_to: Some(AppliesTo::Completion),
                ..cat("A5a", Some(Action::Redact), &["地球是平的"])
            },
        ],
        ..PolicyConfig::default()
    };
    let p = compile(&cfg);
    let f = p.scan("下载盗版软件", Direction::Prompt);
    assert_eq!(f.len(), 1);
    assert_eq!(
        (&*f[0].category, f[0].action, f[0].severity),
        ("A1h", Action::Block, 5)
    );
    assert!(p.scan("地球是平的", Direction::Prompt).is_empty());
    let f = p.scan("地球是平的", Direction::Completion);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].action, Action::Redact);
    assert_eq!(
        p.term(match f[0].detector {
            Detector::Keyword { term_id } => term_id,
            _ => u32::MAX,
        }),
        Some("地球是平的")
    );
}

#[test]
fn pii_and_patterns_are_found_and_masked() {
    let p = sample();
    let text = "电话 138 0013 8000，邮箱 zhang@example.com，SECRET-123";
    assert_eq!(
        spans(&p, text),
        [
            ("138 0013 8000".to_owned(), "pii"),
            ("zhang@example.com".to_owned(), "pii"),
            ("SECRET-123".to_owned(), "pattern"),
        ]
    );
    let f = p.scan(text, Direction::Completion);
    assert_eq!(
        p.redact(text, &f),
        "电话 138 **** 8000，邮箱 z***@example.com，SECRET-123"
    );
    // A wrong id-card checksum never matches.
    let cfg = PolicyConfig {
        categories: vec![CategoryConfig {
            detector: Some(PiiKind::CnIdCard),
            ..cat("pii-id", Some(Action::Redact), &[])
        }],
        ..PolicyConfig::default()
    };
    let q = compile(&cfg);
    assert_eq!(
        matched(&q, "身份证11010519491231002X"),
        ["11010519491231002X"]
    );
    assert!(matched(&q, "身份证110105194912310021").is_empty());
}

#[test]
fn excerpts_are_masked_by_pii_detectors_of_either_direction() {
    let mut cfg = sample_config();
    // A flagged, prompt-only phone category still masks numbers in any excerpt.
    cfg.categories[2].action = Some(Action::Flag);
    cfg.categories[2].applies_to = Some(AppliesTo::Prompt);
    let p = compile(&cfg);
    let text = "做炸弹 电话 138 0013 8000，邮箱 zhang@example.com，SECRET-123";
    // Keywords and custom patterns stay: the excerpt shows what was decided.
    assert_eq!(
        p.mask_pii(text),
        "做炸弹 电话 138 **** 8000，邮箱 z***@example.com，SECRET-123"
    );
    assert_eq!(
        p.mask_pii("做炸弹 and nothing personal"),
        "做炸弹 and nothing personal"
    );
    // A category's own mask wins over the detector's rule.
    cfg.categories[3].mask = Some("#".into());
    let p = compile(&cfg);
    assert_eq!(p.mask_pii("邮箱 a@b.cn"), "邮箱 ######");
}

#[test]
fn excerpts_are_masked_even_for_pii_no_category_names() {
    // Keywords only: no category acts on personal information, and records still keep none.
    let cfg = PolicyConfig {
        categories: vec![cat("A1d", Some(Action::Flag), &["炸弹"])],
        ..PolicyConfig::default()
    };
    let p = compile(&cfg);
    assert!(p.scan("电话 13800138000", Direction::Prompt).is_empty());
    assert_eq!(
        p.mask_pii("炸弹 电话 13800138000，身份证 11010519491231002X，邮箱 zhang@example.com"),
        "炸弹 电话 138****8000，身份证 **************002X，邮箱 z***@example.com"
    );
    assert_eq!(p.mask_pii("炸弹 nothing personal"), "炸弹 nothing personal");
}

#[test]
fn keyword_masks() {
    let mut cfg = sample_config();
    cfg.categories[0].action = Some(Action::Redact);
    let p = compile(&cfg);
    let text = "做炸弹";
    let f = p.scan(text, Direction::Prompt);
    assert_eq!(p.redact(text, &f), "做**");
    cfg.redaction.keyword_mask = "[已屏蔽]".into();
    let p = compile(&cfg);
    assert_eq!(
        p.redact(text, &p.scan(text, Direction::Prompt)),
        "做[已屏蔽]"
    );
    cfg.categories[0].mask = Some("#".into());
    let p = compile(&cfg);
    assert_eq!(p.redact(text, &p.scan(text, Direction::Prompt)), "做##");
}

#[test]
fn categories_have_defaults_and_overrides() {
    let cfg = PolicyConfig {
        categories: vec![
            CategoryConfig {
                severity: Some(2),
                refusal: Some(TextPair {
                    zh: "不行".into(),
                    en: "No".into(),
                }),
                ..cat("A3b", Some(Action::Block), &[])
            },
            CategoryConfig {
                name: Some(TextPair {
                    zh: "自定义".into(),
                    en: "Custom".into(),
                }),
                ..cat("my_cat", None, &["custom term"])
            },
        ],
        ..PolicyConfig::default()
    };
    let p = compile(&cfg);
    assert_eq!(p.categories().count(), 32);
    let a1a = p.category("A1a").expect("built-in");
    assert_eq!(
        (a1a.group.as_str(), a1a.action, a1a.severity),
        ("A.1", Action::Block, 5)
    );
    assert!(a1a.refusal_zh.contains("违反法律法规"));
    let a5b = p.category("A5b").expect("built-in");
    assert_eq!((a5b.action, a5b.severity), (Action::Flag, 2));
    let a3b = p.category("A3b").expect("built-in");
    assert_eq!(
        (a3b.action, a3b.severity, a3b.refusal_en.as_str()),
        (Action::Block, 2, "No")
    );
    let c = p.category("my_cat").expect("custom");
    assert_eq!(
        (c.group.as_str(), c.name_en.as_str(), c.action),
        ("custom", "Custom", Action::Flag)
    );
    assert!(!c.is_builtin() && a1a.is_builtin());
}

#[test]
fn config_errors_are_all_reported() {
    let cfg = PolicyConfig {
        categories: vec![
            cat("bad id!", None, &[]),
            cat("a1d", None, &[]),
            CategoryConfig {
                patterns: vec!["(unclosed".into()],
                ..cat("my-regex", None, &[])
            },
            CategoryConfig {
                severity: Some(9),
                ..cat("A1a", None, &[])
            },
            cat("A1a", None, &[]),
        ],
        ..PolicyConfig::default()
    };
    let err = Policy::compile(&cfg, Path::new("."))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    for needle in [
        "policy.categories[0].id: `bad id!` is not a valid category id",
        "`a1d` collides with a built-in",
        "category `my-regex`: pattern does not compile",
        "policy.categories[3].severity: 9 is outside 1-5",
        "category `A1a` is configured twice",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in {err}");
    }
    assert!(err.starts_with("invalid policy: "));
}

fn write(dir: &Path, name: &str, body: &[u8]) {
    let mut f = std::fs::File::create(dir.join(name)).expect("create list");
    f.write_all(body).expect("write list");
}

#[test]
fn list_files_warn_or_fail_naming_file_and_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut main = b"# shared list\n".to_vec();
    main.extend_from_slice("炸药\tA1d\n".as_bytes());
    main.extend_from_slice("没有分类\n".as_bytes());
    main.extend_from_slice("术语\tNOPE\n".as_bytes());
    main.extend_from_slice(b"\xff\xfe\tA1d\n");
    main.extend_from_slice("炸 药\tA1d\n".as_bytes());
    main.extend_from_slice(b"x\tA1d\n");
    main.extend_from_slice(format!("{}\tA1d\n", "长".repeat(22_000)).as_bytes());
    write(dir.path(), "main.txt", &main);
    write(
        dir.path(),
        "a2e.txt",
        "性别歧视词\n另一个词\tA2a\n".as_bytes(),
    );
    write(dir.path(), "allow.txt", "炸药包装工\n".as_bytes());
    let mut cfg = PolicyConfig {
        keyword_files: vec!["main.txt".into()],
        allow_files: vec!["allow.txt".into()],
        categories: vec![CategoryConfig {
            keyword_files: vec!["a2e.txt".into()],
            ..cat("A2e", None, &[])
        }],
        ..PolicyConfig::default()
    };
    let c = Policy::compile(&cfg, dir.path()).expect("non-strict compiles");
    let w = c.warnings.join("\n");
    for needle in [
        "main.txt:3: missing category",
        "main.txt:4: unknown category `NOPE`",
        "main.txt:5: line is not valid utf-8",
        "main.txt:6: duplicate term `炸 药` in category A1d (first at main.txt:2)",
        "main.txt:7: term `x` normalizes to the single character `x`",
        "main.txt:8: term of 66000 bytes after normalization; the limit is 65535",
        "keyword library has 3 terms, fewer than the 10000",
    ] {
        assert!(w.contains(needle), "missing {needle:?} in\n{w}");
    }
    let st = c.policy.stats();
    assert_eq!(st.total_terms, 3);
    assert_eq!(st.terms_per_category.get("A1d"), Some(&1));
    assert_eq!(st.terms_per_category.get("A2e"), Some(&1));
    assert_eq!(st.terms_per_category.get("A2a"), Some(&1));
    assert_eq!((st.allow_phrases, st.list_files), (1, 3));
    assert!(st.oldest_list_mtime.is_some());
    assert!(st
        .warnings
        .iter()
        .any(|w| w.contains("A.1 types with fewer than 200")));
    assert!(c.policy.scan("炸药包装工", Direction::Prompt).is_empty());
    assert_eq!(c.policy.scan("买炸药", Direction::Prompt).len(), 1);

    cfg.strict = true;
    let err = Policy::compile(&cfg, dir.path())
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("main.txt:3: missing category"), "{err}");
    assert!(!err.contains("skipped"));

    cfg.keyword_files.push("missing.txt".into());
    let err = Policy::compile(&cfg, dir.path())
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("missing.txt: cannot read list file"), "{err}");
}

#[test]
fn versions_are_stable_and_content_addressed() {
    let a = compile(&sample_config());
    let b = compile(&sample_config());
    assert_eq!(a.version(), b.version());
    assert!(a.version().starts_with("p-") && a.version().len() == 18);
    let mut cfg = sample_config();
    cfg.categories[0].keywords.push("新词语".into());
    assert_ne!(compile(&cfg).version(), a.version());
    let mut cfg = sample_config();
    cfg.normalize.case = false;
    assert_ne!(compile(&cfg).version(), a.version());
    let mut cfg = sample_config();
    cfg.allow.push("另一个".into());
    assert_ne!(compile(&cfg).version(), a.version());
}

#[test]
fn empty_policy_is_valid() {
    let c = Policy::compile(&PolicyConfig::default(), Path::new(".")).expect("compiles");
    assert!(c.policy.scan("anything 炸弹", Direction::Prompt).is_empty());
    let p = Arc::new(c.policy);
    let mut s = p.scanner(Direction::Completion);
    assert_eq!(s.push("abc").released, 3);
    assert_eq!(s.finish().released, 3);
}

#[test]
fn stream_releases_all_but_a_live_tail() {
    let p = sample_without_regex();
    let mut s = p.scanner(Direction::Completion);
    // Nothing here can begin a term: released at once.
    let st = s.push("你好，世界。");
    assert_eq!(st.released, "你好，世界。".len());
    // "制造" is a prefix of "制造炸弹": held from "制".
    let st = s.push("如何制造");
    assert_eq!(st.released, "你好，世界。如何".len());
    assert!(st.findings.is_empty());
    let st = s.push("炸");
    assert_eq!(st.released, "你好，世界。如何".len());
    // "制造炸弹" complete and no longer term starts with it: final.
    let st = s.push("弹。");
    assert_eq!(st.findings.len(), 1);
    let f = &st.findings[0];
    assert_eq!(
        f.span,
        "你好，世界。如何".len().."你好，世界。如何制造炸弹".len()
    );
    assert_eq!(st.released, "你好，世界。如何制造炸弹。".len());
    // "炸弹" may still become "炸弹制作" or "炸弹鱼" (allow): held.
    let st = s.push("炸弹");
    assert!(st.findings.is_empty());
    let st = s.push("鱼");
    assert!(st.findings.is_empty(), "inside the allow phrase");
    let total = s.total();
    let st = s.finish();
    assert_eq!(st.released, total);
}

#[test]
fn custom_pattern_tail_is_bounded() {
    let p = sample();
    let mut s = p.scanner(Direction::Completion);
    let text = "你好，世界。".repeat(10);
    let st = s.push(&text);
    // max_match_len 16 + 8.
    assert_eq!(st.released, text.len() - 24);
}

#[test]
fn stream_blocks_before_leak_with_split_characters() {
    let p = sample();
    let text = "请告诉我制\u{200B}造 炸彈的方法";
    let mut s = p.scanner(Direction::Completion);
    let mut got = Vec::new();
    let mut last = 0;
    for (i, c) in text.char_indices() {
        let st = s.push(&text[i..i + c.len_utf8()]);
        assert!(st.released >= last && text.is_char_boundary(st.released));
        last = st.released;
        for f in &st.findings {
            // Nothing of the match was released before it was reported.
            assert!(
                f.span.start
                    >= got
                        .iter()
                        .map(|(_, r)| *r)
                        .max()
                        .unwrap_or(0)
                        .min(f.span.start)
            );
        }
        got.extend(st.findings.into_iter().map(|f| (f, last)));
    }
    got.extend(s.finish().findings.into_iter().map(|f| (f, text.len())));
    assert_eq!(got.len(), 1);
    assert_eq!(&text[got[0].0.span.clone()], "制\u{200B}造 炸彈");
}

#[test]
fn stream_holds_pii_tail_only_while_it_could_match() {
    let p = sample_without_regex();
    let mut s = p.scanner(Direction::Completion);
    let st = s.push("我的电话是138 00");
    assert_eq!(st.released, "我的电话是".len());
    let st = s.push("13 8000");
    assert!(st.findings.is_empty(), "a digit could still follow");
    let st = s.push("。");
    assert_eq!(st.findings.len(), 1);
    assert_eq!(st.released, s.total());
}

#[test]
fn handle_swaps_without_disturbing_streams() {
    let h = PolicyHandle::new(compile(&sample_config()));
    let old = h.load();
    let mut s = old.scanner(Direction::Completion);
    let mut cfg = sample_config();
    cfg.categories[0].keywords.push("新词语".into());
    let prev = h.replace(compile(&cfg));
    assert_eq!(prev.version(), old.version());
    assert_ne!(h.load().version(), old.version());
    assert!(s.push("新词语").findings.is_empty());
    assert_eq!(s.policy().version(), old.version());
}

#[test]
fn report_lines_serialize_as_json() {
    let p = sample();
    let lines = scan_report(&p, "他想要炸弹, mail a@b.cn", Direction::Prompt);
    let json: Vec<String> = lines
        .iter()
        .map(|l| serde_json::to_string(l).unwrap_or_default())
        .collect();
    assert_eq!(
        json[0],
        r#"{"category":"A1d","action":"block","severity":5,"detector":{"type":"keyword","term_id":1},"term":"炸弹","span":[9,15],"matched":"炸弹"}"#
            .replace("[9,15]", r#"{"start":9,"end":15}"#)
    );
    assert!(
        json[1].contains(r#""detector":{"type":"pii","kind":"email"}"#),
        "{}",
        json[1]
    );
}

#[test]
fn metrics_are_published() {
    let p = sample();
    p.publish_metrics();
    let text = crate::metrics::metrics().render();
    assert!(text.contains(&format!(
        "shenhe_policy_info{{version=\"{}\"}} 1",
        p.version()
    )));
    assert!(text.contains("shenhe_policy_terms{category=\"A1d\"} 4"));
    assert!(text.contains("shenhe_policy_age_seconds 0"));
}

#[test]
fn policy_is_send_sync() {
    fn check<T: Send + Sync>() {}
    check::<Policy>();
    fn send<T: Send>() {}
    send::<StreamScanner>();
}

/// Pieces of the proptest alphabet: term characters, separators, CJK, full-width, zero-width,
/// traditional forms, confusables, PII fragments.
const ALPHABET: &[&str] = &[
    "炸", "弹", "彈", "制", "造", "製", "鱼", "翅", "作", "f", "o", "r", "b", "i", "d", "m", "Ｂ",
    "ο", " ", "  ", ".", "*", "|", "，", "\u{200B}", "\u{FEFF}", "a", "bad", "phrase", "e", "😀",
    "138", "0013", "8000", "-", "@", "x.com", "secret-", "42", "\n", "é", "好",
];

fn text_strategy() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(ALPHABET), 0..48).prop_map(|v| v.concat())
}

fn key(f: &Finding) -> (usize, usize, String, String) {
    (
        f.span.start,
        f.span.end,
        f.category.to_string(),
        format!("{:?}", f.detector),
    )
}

/// For any cuts of `text`, the streamed findings equal the one-shot scan's, `released` never
/// goes back, and no finding is reported inside text already released.
fn chunking_invariant(
    p: &Arc<Policy>,
    text: &str,
    cuts: &[prop::sample::Index],
) -> Result<(), TestCaseError> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c.index(text.len() + 1)).collect();
    points.push(0);
    points.push(text.len());
    points.sort_unstable();
    points.dedup();
    let points: Vec<usize> = points
        .into_iter()
        .filter(|&i| text.is_char_boundary(i))
        .collect();

    let whole: Vec<_> = p
        .scan(text, Direction::Completion)
        .iter()
        .map(key)
        .collect();
    let mut s = p.scanner(Direction::Completion);
    let mut streamed = Vec::new();
    let mut released = 0;
    let mut steps = Vec::new();
    for w in points.windows(2) {
        let st = s.push(&text[w[0]..w[1]]);
        prop_assert!(st.released >= released, "released went back");
        prop_assert!(st.released <= w[1]);
        prop_assert!(text.is_char_boundary(st.released));
        released = st.released;
        steps.push((st.findings.iter().map(key).collect::<Vec<_>>(), st.released));
    }
    let st = s.finish();
    prop_assert_eq!(st.released, text.len());
    steps.push((st.findings.iter().map(key).collect(), st.released));
    // The released contract: a finding reported after a step releasing r starts at or after r.
    let mut r_prev = 0;
    for (findings, r) in &steps {
        for f in findings {
            prop_assert!(
                f.0 >= r_prev,
                "finding {:?} reported after {} was released",
                f,
                r_prev
            );
        }
        streamed.extend(findings.iter().cloned());
        r_prev = *r;
    }
    streamed.sort();
    let mut whole_sorted = whole.clone();
    whole_sorted.sort();
    prop_assert_eq!(streamed, whole_sorted);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn chunking_invariance(text in text_strategy(), cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12)) {
        chunking_invariant(&sample(), &text, &cuts)?;
    }

    #[test]
    fn chunking_invariance_with_whole_words(text in text_strategy(), cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12)) {
        chunking_invariant(&Arc::new(compile(&whole_words_config())), &text, &cuts)?;
    }

    #[test]
    fn spans_are_char_boundaries(text in text_strategy()) {
        let p = sample();
        for f in p.scan(&text, Direction::Prompt) {
            prop_assert!(f.span.start < f.span.end && f.span.end <= text.len());
            prop_assert!(text.is_char_boundary(f.span.start) && text.is_char_boundary(f.span.end));
        }
    }
}

/// A term of spaces alone, with separators kept: left out of its spaces it spells nothing, and
/// nothing else than its spaces matches it (a walk through the automaton's ASCII table once
/// read the empty spelling as a match at every character).
#[test]
fn a_term_of_spaces_matches_only_spaces() {
    let cfg = PolicyConfig {
        normalize: NormalizeConfig {
            separators: false,
            ..NormalizeConfig::default()
        },
        categories: vec![CategoryConfig {
            id: "A1a".into(),
            keywords: vec!["  ".into()],
            ..CategoryConfig::default()
        }],
        ..PolicyConfig::default()
    };
    let p = Arc::new(
        Policy::compile(&cfg, Path::new("."))
            .expect("compiles")
            .policy,
    );
    let spaces: Vec<std::ops::Range<usize>> = std::iter::once(1..3).collect();
    for (text, spans) in [(".", vec![]), ("ab.", vec![]), ("a  b", spaces)] {
        let found: Vec<_> = p
            .scan(text, Direction::Completion)
            .into_iter()
            .map(|f| f.span)
            .collect();
        assert_eq!(found, spans, "{text}");
        let mut s = p.scanner(Direction::Completion);
        let mut streamed: Vec<_> = text
            .char_indices()
            .flat_map(|(i, c)| s.push(&text[i..i + c.len_utf8()]).findings)
            .collect();
        streamed.extend(s.finish().findings);
        assert_eq!(
            streamed.into_iter().map(|f| f.span).collect::<Vec<_>>(),
            spans,
            "{text}"
        );
    }
}

#[test]
fn a_categorys_minors_action_applies_to_minors_findings_and_enters_the_version_only_when_set() {
    let with = |minors: Option<Action>| {
        let mut c = cat("A2b", Some(Action::Flag), &["地域黑"]);
        c.minors = minors;
        compile(&PolicyConfig {
            categories: vec![c],
            ..PolicyConfig::default()
        })
    };
    let (none, same, block) = (
        with(None),
        with(Some(Action::Flag)),
        with(Some(Action::Block)),
    );
    assert_eq!(
        none.version(),
        same.version(),
        "the same action is no change"
    );
    assert_ne!(none.version(), block.version());
    let mut f = block.scan("不要地域黑", Direction::Prompt);
    assert_eq!(f[0].action, Action::Flag);
    block.for_minor(&mut f);
    assert_eq!(f[0].action, Action::Block);
    let mut f = none.scan("不要地域黑", Direction::Prompt);
    none.for_minor(&mut f);
    assert_eq!(f[0].action, Action::Flag);
}
