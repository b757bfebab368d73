//! Hold-back lag of the stream guard on natural text with a generated 10,000-term library:
//! after each streamed token, how many tokens are still held. Prints a table; not a criterion
//! bench because the figure is a distribution, not a time. `cargo bench --bench holdback`.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shenhe::dialect::openai::{Extras, Flavor, OpenAiCodec};
use shenhe::policy::config::{CategoryConfig, PolicyConfig};
use shenhe::policy::Policy;
use shenhe::stream::guard::Guard;
use shenhe::stream::sse::RawEvent;

const ZH: &str = "人工智能正在改变我们的生活方式。从清晨的天气预报到夜晚的音乐推荐，算法无处不在。\
科学家们认为，技术的进步应当服务于人，而不是让人服务于技术。在教育领域，个性化学习帮助学生按照自己的节奏前进；\
在医疗领域，影像识别让医生更早发现疾病。与此同时，我们也需要思考数据安全、隐私保护和公平性等问题。\
历史告诉我们，每一次技术革命都伴随着社会结构的调整，只有不断学习，才能在变化中找到自己的位置。";

const EN: &str = "Artificial intelligence is changing the way we live. From the morning weather forecast \
to the evening playlist, algorithms are everywhere. Scientists argue that progress in technology should \
serve people rather than make people serve technology. In education, personalised learning lets students \
move at their own pace; in medicine, image recognition helps doctors find disease earlier. At the same \
time we need to think about data security, privacy and fairness.";

fn terms(n: usize, pool: &[char]) -> Vec<String> {
    let mut rng = StdRng::seed_from_u64(42);
    (0..n)
        .map(|_| {
            if rng.gen_bool(0.7) {
                let len = rng.gen_range(2..=8);
                (0..len)
                    .map(|_| pool[rng.gen_range(0..pool.len())])
                    .collect()
            } else {
                let len = rng.gen_range(4..10);
                (0..len)
                    .map(|_| char::from(rng.gen_range(b'a'..=b'z')))
                    .collect()
            }
        })
        .collect()
}

fn policy(terms: &[String]) -> Arc<Policy> {
    let cfg = PolicyConfig {
        categories: vec![CategoryConfig {
            id: "A1d".into(),
            keywords: terms.to_vec(),
            ..CategoryConfig::default()
        }],
        ..PolicyConfig::default()
    };
    Arc::new(
        Policy::compile(&cfg, Path::new("."))
            .expect("policy compiles")
            .policy,
    )
}

/// Token-sized pieces (1–4 characters), as LLM streams deliver them.
fn tokens(text: &str, seed: u64) -> Vec<String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let n = rng.gen_range(1..=4).min(chars.len() - i);
        out.push(chars[i..i + n].iter().collect());
        i += n;
    }
    out
}

fn chunk(piece: &str) -> RawEvent {
    let v = serde_json::json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
        "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": null}]});
    let data = v.to_string();
    RawEvent {
        raw: Bytes::from(format!("data: {data}\n\n")),
        data: Some(data),
        event: None,
    }
}

/// Held tokens after each token: (median, p90, max, share of tokens released at once).
fn lag(policy: &Arc<Policy>, text: &str) -> (usize, usize, usize, f64) {
    let mut held = Vec::new();
    for seed in 0..20 {
        let mut g = Guard::new(
            OpenAiCodec::new(Flavor::Chat, Extras::default()),
            policy.clone(),
            None,
        );
        let mut out = Vec::new();
        for t in tokens(text, seed) {
            g.on_event(chunk(&t), &mut out);
            held.push(g.held_events());
        }
        assert!(
            g.stopped().is_none(),
            "the natural text must not contain a library term"
        );
    }
    held.sort_unstable();
    let at = |q: f64| held[((held.len() - 1) as f64 * q) as usize];
    let zero = held.iter().filter(|h| **h == 0).count() as f64 / held.len() as f64;
    (at(0.5), at(0.9), *held.last().unwrap_or(&0), zero)
}

fn main() {
    // Worst case: terms drawn from the same characters the text uses, so almost every character
    // starts some term. Realistic: terms from the 3,500 common characters.
    let text_chars: Vec<char> = {
        let mut v: Vec<char> = ZH
            .chars()
            .filter(|c| ('\u{4e00}'..='\u{9fff}').contains(c))
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    let common: Vec<char> = (0x4E00..0x4E00 + 3500).filter_map(char::from_u32).collect();
    println!("| library (10,000 terms) | text | median held tokens | p90 | max | released in the same event |");
    println!("|---|---|---|---|---|---|");
    for (name, pool) in [
        (
            "terms from the text's own characters (worst case)",
            &text_chars,
        ),
        ("terms from 3,500 common characters", &common),
    ] {
        let mut t = terms(10_000, pool);
        // Keep the measurement about hold-back, not about stopping: drop terms the text contains
        // (after normalization, so ask the policy itself).
        let first = policy(&t);
        let found: std::collections::HashSet<String> = [ZH, EN]
            .iter()
            .flat_map(|x| first.scan(x, shenhe::policy::Direction::Completion))
            .filter_map(|f| match f.detector {
                shenhe::policy::Detector::Keyword { term_id } => {
                    first.term(term_id).map(str::to_string)
                }
                _ => None,
            })
            .collect();
        t.retain(|term| !found.contains(term));
        let p = policy(&t);
        for (label, text) in [("Chinese", ZH), ("English", EN)] {
            let (m, p90, max, zero) = lag(&p, text);
            println!(
                "| {name} | {label} | {m} | {p90} | {max} | {:.0} % |",
                zero * 100.0
            );
        }
    }
}
