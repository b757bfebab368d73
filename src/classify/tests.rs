use std::path::Path;

use super::*;
use crate::policy::{Action, PolicyConfig};

fn policy() -> Policy {
    let cfg: PolicyConfig = serde_yaml_ng::from_str(
        r#"
categories:
  - { id: A1d, action: block, keywords: ["炸弹制作"] }
  - { id: A2b, action: flag, minors: block, keywords: ["地域黑"] }
  - { id: A3a, action: block, applies_to: completion, keywords: ["x"] }
"#,
    )
    .unwrap();
    Policy::compile(&cfg, Path::new(".")).unwrap().policy
}

fn classifier(map: &[(&str, &str)]) -> Arc<Classifier> {
    let cfg = ClassifierConfig {
        enabled: true,
        url: "http://127.0.0.1:1/classify".into(),
        threshold: 0.8,
        categories: map
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..ClassifierConfig::default()
    };
    assert!(cfg.validate().is_empty());
    Classifier::new(&cfg, &policy()).unwrap().unwrap()
}

#[test]
fn both_answer_formats_are_read_and_bad_answers_say_why() {
    let s = parse_scores(
        Format::Shenhe,
        br#"{"categories":[{"id":"A1d","score":0.91},{"id":"A2b","score":0.1}]}"#,
    )
    .unwrap();
    assert_eq!(s, [("A1d".to_string(), 0.91), ("A2b".to_string(), 0.1)]);
    let s = parse_scores(
        Format::OpenaiModeration,
        br#"{"id":"m","results":[{"flagged":true,"categories":{"violence":true},"category_scores":{"violence":0.97}}]}"#,
    )
    .unwrap();
    assert_eq!(s, [("violence".to_string(), 0.97)]);
    assert!(parse_scores(Format::Shenhe, b"not json")
        .unwrap_err()
        .contains("not JSON"));
    assert!(
        parse_scores(Format::Shenhe, br#"{"categories":[{"id":"A1d"}]}"#)
            .unwrap_err()
            .contains("score")
    );
    assert!(parse_scores(Format::OpenaiModeration, br#"{"results":[]}"#).is_err());
}

#[test]
fn scores_become_findings_of_policy_categories() {
    let p = policy();
    let c = classifier(&[("violence", "A1d")]);
    let scores = [
        ("A2b".to_string(), 0.85),
        ("violence".to_string(), 0.95),
        // Below the threshold, a label of no category, a completion-only category, a repeat.
        ("A1d".to_string(), 0.5),
        ("weather".to_string(), 0.99),
        ("A3a".to_string(), 0.99),
        ("A1d".to_string(), 0.9),
    ];
    let f = c.findings(&p, Direction::Prompt, &scores, 42, false);
    let got: Vec<(&str, Action, &Detector)> = f
        .iter()
        .map(|f| (&*f.category, f.action, &f.detector))
        .collect();
    assert_eq!(
        got,
        [
            (
                "A1d",
                Action::Block,
                &Detector::Classifier {
                    score_permille: 950
                }
            ),
            (
                "A2b",
                Action::Flag,
                &Detector::Classifier {
                    score_permille: 850
                }
            ),
        ],
        "block first"
    );
    assert!(f.iter().all(|f| f.span == (0..42)));
    // The completion-only category counts for answers.
    let f = c.findings(&p, Direction::Completion, &scores, 1, false);
    assert!(f.iter().any(|f| &*f.category == "A3a"));
    // On a minor's request a category acts by its `minors` action.
    let f = c.findings(&p, Direction::Prompt, &scores, 42, true);
    let a2b = f.iter().find(|f| &*f.category == "A2b").unwrap();
    assert_eq!(a2b.action, Action::Block);
}

#[test]
fn a_mapping_to_no_category_is_refused_when_the_runtime_is_built() {
    let cfg = ClassifierConfig {
        enabled: true,
        url: "http://127.0.0.1:1/classify".into(),
        categories: [("violence".to_string(), "Z9".to_string())].into(),
        ..ClassifierConfig::default()
    };
    let e = Classifier::new(&cfg, &policy()).unwrap_err();
    assert!(e.contains("classifier.categories.violence"), "{e}");
}

#[test]
fn the_tail_of_a_long_prompt_is_sent() {
    assert_eq!(tail_chars("你好世界", 2), "世界");
    assert_eq!(tail_chars("abc", 10), "abc");
    assert_eq!(tail_chars("abc", 0), "");
}
