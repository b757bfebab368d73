//! The official Python SDKs (`openai`, `anthropic`) against shenhe: stopped streams, labels,
//! blocked answers and refused prompts must parse without exceptions and mean what they say.
//!
//! The SDKs are installed into `target/sdk-venv` (created on first run from
//! `tests/sdk/requirements.txt`; reused while the pins match). If the venv cannot be made, the
//! tests fail: they are never skipped.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use serde_json::json;
use support::*;

const POLICY: &str =
    "policy:\n  categories:\n    - { id: A1d, action: block, keywords: [\"炸弹\", \"forbiddenword\"] }\n";

static VENV: Mutex<Option<PathBuf>> = Mutex::new(None);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The venv's python, creating the venv and installing the pinned SDKs when needed.
fn python() -> PathBuf {
    let mut guard = VENV.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = guard.as_ref() {
        return p.clone();
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    let venv = target.join("sdk-venv");
    let py = venv.join("bin").join("python");
    let reqs = root().join("tests/sdk/requirements.txt");
    let pins = std::fs::read_to_string(&reqs).expect("tests/sdk/requirements.txt");
    let stamp = venv.join("shenhe-requirements.txt");
    let fresh =
        std::fs::read_to_string(&stamp).ok().as_deref() == Some(pins.as_str()) && py.exists();
    if !fresh {
        if !py.exists() {
            run(
                Command::new("python3").args(["-m", "venv"]).arg(&venv),
                "python3 -m venv target/sdk-venv",
            );
        }
        run(
            Command::new(&py)
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    "-r",
                ])
                .arg(&reqs),
            "pip install -r tests/sdk/requirements.txt",
        );
        std::fs::write(&stamp, &pins).expect("write the venv stamp");
    }
    *guard = Some(py.clone());
    py
}

/// Run `tests/sdk/<script>` `scenario` against the proxy; the scenario must exit 0.
fn scenario(script: &str, base: &str, name: &str) {
    let py = python();
    let path: &Path = &root().join("tests/sdk").join(script);
    let out = Command::new(py)
        .arg(path)
        .arg(base)
        .arg(name)
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "{script} {name} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{}", String::from_utf8_lossy(&out.stdout).trim());
}

/// Start the upstream and shenhe, run the scenario off the async runtime.
async fn check(script: Script, extra_yaml: &str, file: &'static str, name: &'static str) {
    let up = Upstream::fixed(script).await;
    let p = proxy(&up.base_url(), &format!("{POLICY}{extra_yaml}")).await;
    let base = format!("http://{}", p.running.public_addr);
    tokio::task::spawn_blocking(move || scenario(file, &base, name))
        .await
        .unwrap();
}

fn labels() -> String {
    let dir = tempfile::tempdir().unwrap();
    let y = labels_yaml(dir.path());
    std::mem::forget(dir);
    y
}

#[tokio::test(flavor = "multi_thread")]
async fn openai_chat_stream_stopped_by_the_guard() {
    let s = Script::sse_writes(vec![
        chat_chunk("你好，"),
        chat_chunk("炸"),
        chat_chunk("弹后面"),
        chat_finish(),
    ]);
    check(s, "", "openai_sdk.py", "chat_stream_stop").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn openai_chat_stream_with_labels() {
    let s = Script::sse_writes(vec![chat_chunk("你好"), chat_finish()]);
    check(s, &labels(), "openai_sdk.py", "chat_stream_labels").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn openai_chat_whole_answer_blocked() {
    let body = json!({"id": "x", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "这是炸弹"}, "finish_reason": "stop"}]});
    check(
        Script::json(&body.to_string()),
        "",
        "openai_sdk.py",
        "chat_nonstream_block",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn openai_prompt_refusal_is_a_bad_request_error() {
    check(
        Script::json("{}"),
        "",
        "openai_sdk.py",
        "chat_prompt_refusal",
    )
    .await;
    check(
        Script::json("{}"),
        "",
        "openai_sdk.py",
        "responses_prompt_refusal",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn openai_responses_stream_with_labels() {
    let s = Script::sse_writes(responses_text_stream(&["天气", "很好。"]));
    check(s, &labels(), "openai_sdk.py", "responses_stream_labels").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn openai_responses_stream_stopped_by_the_guard() {
    let s = Script::sse_writes(responses_text_stream(&[
        "safe start ",
        "forb",
        "iddenword",
        " tail",
    ]));
    check(s, "", "openai_sdk.py", "responses_stream_stop").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn anthropic_stream_stopped_by_the_guard() {
    let s = Script::sse_writes(anthropic_text_stream(&["safe start ", "炸", "弹", " tail"]));
    check(s, "", "anthropic_sdk.py", "stream_stop").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn anthropic_stream_with_labels() {
    let s = Script::sse_writes(anthropic_text_stream(&["你好", "世界"]));
    check(s, &labels(), "anthropic_sdk.py", "stream_labels").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn anthropic_whole_answer_blocked_and_prompt_refused() {
    let body = json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-test",
        "content": [{"type": "text", "text": "这是炸弹"}], "stop_reason": "end_turn", "stop_sequence": null,
        "usage": {"input_tokens": 1, "output_tokens": 2}});
    check(
        Script::json(&body.to_string()),
        "",
        "anthropic_sdk.py",
        "nonstream_block",
    )
    .await;
    check(Script::json("{}"), "", "anthropic_sdk.py", "prompt_refusal").await;
}

/// The scripted model (`shenhe::demo`, the bench's load source) behind shenhe: the SDKs read its
/// chat, Responses and Messages answers, streamed and whole.
#[tokio::test(flavor = "multi_thread")]
async fn sdks_read_the_scripted_model_through_shenhe() {
    let script = shenhe::demo::DemoScript {
        delay: std::time::Duration::ZERO,
        ..Default::default()
    };
    let (addr, _model) = shenhe::demo::spawn("127.0.0.1:0".parse().unwrap(), script)
        .await
        .unwrap();
    let p = proxy(&format!("http://{addr}"), POLICY).await;
    let base = format!("http://{}", p.running.public_addr);
    tokio::task::spawn_blocking(move || {
        scenario("openai_sdk.py", &base, "demo_text");
        scenario("anthropic_sdk.py", &base, "demo_text");
    })
    .await
    .unwrap();
}

/// Pillow, an independent reader, finds exactly one TC260 AIGC block in every image format shenhe
/// labels, also after re-labeling (`tools/check_xmp.py`).
#[test]
fn pillow_reads_image_labels() {
    use image::{ImageFormat, RgbImage};
    let cfg: shenhe::label::LabelsConfig = serde_yaml_ng::from_str(
        "implicit: { enabled: true, producer: \"test-producer\", signing_key_file: \"unused.pem\" }",
    )
    .unwrap();
    let valid = cfg.validate().unwrap();
    let signer = std::sync::Arc::new(shenhe::label::Signer::generate());
    let labeler = shenhe::label::Labeler::with_signer(&valid, Some(signer));
    let img = RgbImage::from_fn(40, 30, |x, y| {
        image::Rgb([(x * 6) as u8, (y * 8) as u8, 128])
    });
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (name, fmt) in [
        ("a.png", ImageFormat::Png),
        ("b.jpg", ImageFormat::Jpeg),
        ("c.webp", ImageFormat::WebP),
    ] {
        let mut bytes = std::io::Cursor::new(Vec::new());
        img.write_to(&mut bytes, fmt).unwrap();
        let once = shenhe::label::label_image(bytes.get_ref(), &labeler, "shenhe-py1").unwrap();
        let twice = shenhe::label::label_image(&once, &labeler, "shenhe-py2").unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, twice).unwrap();
        files.push(path);
    }
    let out = Command::new(python())
        .arg(root().join("tools/check_xmp.py"))
        .args(&files)
        .output()
        .expect("run check_xmp.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "check_xmp.py failed:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.matches("shenhe-py2").count(), 3, "{stdout}");
    assert!(
        !stdout.contains("shenhe-py1"),
        "re-labeling must replace the block: {stdout}"
    );
}
