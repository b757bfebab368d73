//! `shenhe check` on good and bad configs.

use std::process::Command;

fn check(path: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_shenhe"))
        .args(["check", "--config"])
        .arg(path)
        .output()
        .unwrap()
}

/// `shenhe check` on a config file holding `yaml`.
fn check_yaml(yaml: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("config.yaml");
    std::fs::write(&p, yaml).unwrap();
    check(&p)
}

#[test]
fn the_shipped_configs_are_valid() {
    for name in ["config/shenhe.yaml", "config/demo.yaml"] {
        let out = check(std::path::Path::new(name));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("/v1/chat/completions"), "{stdout}");
        assert!(stdout.contains("listen"), "{stdout}");
    }
}

#[test]
fn a_bad_config_names_every_problem_with_its_path() {
    let out = check_yaml(
        "upstream:\n  base_url: \"ftp://nope\"\n  timeouts: { idle: \"0\" }\nserver:\n  body_limit: 0\n",
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("upstream.base_url"), "{err}");
    assert!(err.contains("upstream.timeouts.idle"), "{err}");
    assert!(err.contains("server.body_limit"), "{err}");

    let out = check_yaml("upstream:\n  timeouts:\n    conect: 5s\n");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("upstream.timeouts") && err.contains("conect"),
        "{err}"
    );
}

#[test]
fn the_summary_marks_whole_word_categories() {
    let out = check_yaml(
        "labels: { implicit: { enabled: false } }\npolicy:\n  categories:\n    - { id: A2a, action: block, whole_words: true, keywords: [\"ass\"] }\n    - { id: A1d, action: block, keywords: [\"bomb\"] }\n",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = |id: &str| {
        stdout
            .lines()
            .find(|l| l.trim_start().starts_with(id))
            .unwrap_or_default()
            .to_owned()
    };
    assert!(line("A2a").ends_with("(whole words)"), "{stdout}");
    assert!(!line("A1d").contains("whole words"), "{stdout}");

    let out = check_yaml("policy:\n  categories:\n    - { id: A2a, whole_words: yes please }\n");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("whole_words"), "{err}");
}

#[test]
fn version_flag_prints_the_version() {
    let out = Command::new(env!("CARGO_BIN_EXE_shenhe"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
}
