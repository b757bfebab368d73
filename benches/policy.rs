//! Policy engine benchmarks: scan throughput against bare aho-corasick, streaming on token-sized
//! pieces, compile time for 10k terms, and compile time and memory for 1M terms.
//!
//! Run with `cargo bench --bench policy`. Goals: scan ≥ 200 MB/s, streaming ≥ 50 MB/s,
//! 1M-term compile ≤ 5 s and ≤ 300 MB.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aho_corasick::{AhoCorasick, MatchKind};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shenhe::policy::config::{CategoryConfig, PolicyConfig};
use shenhe::policy::{Direction, PiiKind, Policy};

const CATEGORIES: [&str; 17] = [
    "A1a", "A1b", "A1c", "A1d", "A1e", "A1f", "A1g", "A1h", "A2a", "A2b", "A2c", "A2d", "A2e",
    "A2f", "A2g", "A2h", "A2i",
];

fn cjk(rng: &mut StdRng) -> char {
    // The 3 500 most common characters sit mostly in this range; a narrower pool makes terms
    // share prefixes with the text, as real libraries do.
    char::from_u32(rng.gen_range(0x4E00..0x4E00 + 3500)).unwrap_or('中')
}

fn word(rng: &mut StdRng) -> String {
    let n = rng.gen_range(3..10);
    (0..n)
        .map(|_| char::from(rng.gen_range(b'a'..=b'z')))
        .collect()
}

fn terms(n: usize, seed: u64) -> Vec<String> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            if rng.gen_bool(0.7) {
                let len = rng.gen_range(2..=8);
                (0..len).map(|_| cjk(&mut rng)).collect()
            } else {
                word(&mut rng)
            }
        })
        .collect()
}

fn text(bytes: usize, terms: &[String]) -> String {
    let mut rng = StdRng::seed_from_u64(7);
    let mut s = String::with_capacity(bytes + 64);
    while s.len() < bytes {
        match rng.gen_range(0..100) {
            0 => s.push_str(&terms[rng.gen_range(0..terms.len())]),
            1..=40 => {
                s.push_str(&word(&mut rng));
                s.push(if rng.gen_bool(0.1) { ',' } else { ' ' });
            }
            41..=45 => s.push('，'),
            46..=47 => s.push_str("。\n"),
            _ => s.push(cjk(&mut rng)),
        }
    }
    s
}

fn config(terms: &[String]) -> PolicyConfig {
    let mut cats: Vec<CategoryConfig> = CATEGORIES
        .iter()
        .map(|id| CategoryConfig {
            id: (*id).to_owned(),
            ..CategoryConfig::default()
        })
        .collect();
    for (i, t) in terms.iter().enumerate() {
        cats[i % CATEGORIES.len()].keywords.push(t.clone());
    }
    PolicyConfig {
        categories: cats,
        allow: vec!["中丐丑".into()],
        ..PolicyConfig::default()
    }
}

fn with_pii(mut cfg: PolicyConfig) -> PolicyConfig {
    for (id, kind) in [
        ("pii-phone", PiiKind::CnMobile),
        ("pii-email", PiiKind::Email),
        ("pii-id", PiiKind::CnIdCard),
    ] {
        cfg.categories.push(CategoryConfig {
            id: id.to_owned(),
            detector: Some(kind),
            ..CategoryConfig::default()
        });
    }
    cfg
}

fn compile(cfg: &PolicyConfig) -> Arc<Policy> {
    match Policy::compile(cfg, Path::new(".")) {
        Ok(c) => Arc::new(c.policy),
        Err(e) => panic!("bench policy does not compile: {e}"),
    }
}

/// Pieces of 1–4 characters, like model tokens.
fn pieces(text: &str) -> Vec<&str> {
    let mut rng = StdRng::seed_from_u64(11);
    let mut out = Vec::new();
    let mut it = text.char_indices().peekable();
    while let Some(&(start, _)) = it.peek() {
        let n = rng.gen_range(1..=4);
        let mut end = start;
        for _ in 0..n {
            if let Some((i, c)) = it.next() {
                end = i + c.len_utf8();
            }
        }
        out.push(&text[start..end]);
    }
    out
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn benches(c: &mut Criterion) {
    let t10k = terms(10_000, 1);
    let hay = text(1 << 20, &t10k);
    let cfg = config(&t10k);
    let policy = compile(&cfg);
    let policy_pii = compile(&with_pii(cfg.clone()));
    let found = policy.scan(&hay, Direction::Completion).len();
    println!("1 MiB text: {} bytes, {found} keyword findings", hay.len());

    let mut g = c.benchmark_group("scan_1mib");
    g.throughput(Throughput::Bytes(hay.len() as u64));
    g.bench_function("policy_scan_keywords", |b| {
        b.iter(|| black_box(policy.scan(black_box(&hay), Direction::Completion)).len())
    });
    g.bench_function("policy_scan_keywords_pii", |b| {
        b.iter(|| black_box(policy_pii.scan(black_box(&hay), Direction::Completion)).len())
    });
    let ac = AhoCorasick::builder()
        .match_kind(MatchKind::LeftmostLongest)
        .build(&t10k)
        .unwrap_or_else(|e| panic!("automaton: {e}"));
    g.bench_function("bare_aho_corasick", |b| {
        b.iter(|| ac.find_iter(black_box(hay.as_bytes())).count())
    });
    let dfa = AhoCorasick::builder()
        .match_kind(MatchKind::LeftmostLongest)
        .kind(Some(aho_corasick::AhoCorasickKind::DFA))
        .build(&t10k)
        .unwrap_or_else(|e| panic!("automaton: {e}"));
    println!("bare DFA memory: {} MiB", dfa.memory_usage() >> 20);
    g.bench_function("bare_aho_corasick_dfa", |b| {
        b.iter(|| dfa.find_iter(black_box(hay.as_bytes())).count())
    });
    let tokens = pieces(&hay);
    println!("streaming: {} pieces of 1-4 chars", tokens.len());
    g.bench_function("stream_1_4_char_pieces", |b| {
        b.iter(|| {
            let mut s = policy.scanner(Direction::Completion);
            let mut n = 0;
            for t in &tokens {
                n += s.push(t).findings.len();
            }
            n + s.finish().findings.len()
        })
    });
    g.bench_function("stream_1_4_char_pieces_pii", |b| {
        b.iter(|| {
            let mut s = policy_pii.scanner(Direction::Completion);
            let mut n = 0;
            for t in &tokens {
                n += s.push(t).findings.len();
            }
            n + s.finish().findings.len()
        })
    });
    g.finish();

    let mut g = c.benchmark_group("compile");
    g.sample_size(10);
    g.bench_function("10k_terms", |b| {
        b.iter(|| compile(black_box(&cfg)).version().len())
    });
    g.finish();

    // 1M terms: one run, timed outside criterion (skip with SHENHE_BENCH_SKIP_1M=1).
    if std::env::var_os("SHENHE_BENCH_SKIP_1M").is_some() {
        return;
    }
    let t1m = terms(1_000_000, 2);
    let cfg1m = config(&t1m);
    drop(t1m);
    let before = rss_kib();
    let start = Instant::now();
    let p = compile(&cfg1m);
    let took = start.elapsed();
    let after = rss_kib();
    drop(cfg1m);
    let after_cfg_drop = rss_kib();
    let st = p.stats();
    println!(
        "compile 1M terms: {:.2} s; {} distinct entries; RSS {} MiB before, {} MiB after compile, {} MiB after dropping the config (policy ≈ {} MiB by RSS, automaton {} MiB)",
        took.as_secs_f64(),
        st.total_terms,
        before / 1024,
        after / 1024,
        after_cfg_drop / 1024,
        after_cfg_drop.saturating_sub(before) / 1024,
        st.automaton_bytes >> 20,
    );
    let start = Instant::now();
    let n = p.scan(&hay, Direction::Completion).len();
    println!(
        "scan 1 MiB with 1M terms: {:.1} ms ({n} findings)",
        start.elapsed().as_secs_f64() * 1e3
    );
}

criterion_group! {
    name = policy;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .sample_size(20);
    targets = benches
}
criterion_main!(policy);
