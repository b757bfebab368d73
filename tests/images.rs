//! Images and prompt-only routes: prompts judged, generated images labeled in place (XMP), URL
//! images recorded as unlabeled or refused, prompt-only answers passed untouched.

mod support;

use base64::Engine as _;
use serde_json::{json, Value};
use support::*;

const POLICY: &str =
    "policy:\n  categories:\n    - { id: A1d, action: block, keywords: [\"炸弹\"] }\n";

fn png() -> Vec<u8> {
    let img = image::RgbImage::from_pixel(64, 64, image::Rgb([200, 100, 50]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

async fn labeled(up: &Upstream, extra: &str) -> Proxy {
    let dir = tempfile::tempdir().unwrap();
    let p = proxy(
        &up.base_url(),
        &format!("{POLICY}{}{extra}", labels_yaml(dir.path())),
    )
    .await;
    std::mem::forget(dir);
    p
}

#[tokio::test]
async fn image_prompt_is_judged() {
    let up = Upstream::fixed(Script::json("{}")).await;
    let p = proxy(&up.base_url(), POLICY).await;
    let resp = post_json(
        &p,
        "/v1/images/generations",
        &json!({"model": "m", "prompt": "画一个炸弹"}),
    )
    .await;
    assert_eq!(resp.status(), 400);
    let v: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    assert_eq!(v["error"]["code"], "content_filter");
    assert!(up.requests().is_empty());
}

#[tokio::test]
async fn b64_images_get_the_signed_xmp_label() {
    let b64 = base64::engine::general_purpose::STANDARD.encode(png());
    let body = json!({"created": 1, "data": [{"b64_json": b64}]}).to_string();
    let up = Upstream::fixed(Script::json(&body)).await;
    let p = labeled(&up, "").await;
    let resp = post_json(
        &p,
        "/v1/images/generations",
        &json!({"model": "m", "prompt": "a cat", "response_format": "b64_json"}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let v: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(v["data"][0]["b64_json"].as_str().unwrap())
        .unwrap();
    let aigc = shenhe::label::read_aigc(&bytes)
        .unwrap()
        .expect("XMP AIGC block");
    assert_eq!(aigc.content_producer, "test-producer");
    let recs = p.records(1).await;
    let d = recs
        .iter()
        .find(|r| r["kind"] == "delivery")
        .expect("delivery record");
    assert_eq!(d["content_id"], aigc.produce_id.as_str());
}

#[tokio::test]
async fn url_images_are_recorded_unlabeled_or_refused() {
    let body = json!({"created": 1, "data": [{"url": "https://example.com/a.png"}]}).to_string();
    let up = Upstream::fixed(Script::json(&body)).await;
    let p = labeled(&up, "").await;
    let resp = post_json(
        &p,
        "/v1/images/generations",
        &json!({"model": "m", "prompt": "a cat"}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), body);
    let recs = p.records(1).await;
    assert!(
        recs.iter().any(|r| r["label"] == "unlabeled:url_image"),
        "{recs:?}"
    );
    let metrics = client()
        .get(p.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .contains("shenhe_unlabeled_deliveries_total{medium=\"image\",reason=\"url_image\"}"),
        "{metrics}"
    );

    let p = labeled(&up, "  images: { url_responses: reject }\n").await;
    let resp = post_json(
        &p,
        "/v1/images/generations",
        &json!({"model": "m", "prompt": "a cat"}),
    )
    .await;
    assert_eq!(resp.status(), 502);
}

#[tokio::test]
async fn prompt_only_route_judges_input_and_passes_the_answer() {
    let body = json!({"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}]}).to_string();
    let up = Upstream::fixed(Script::json(&body)).await;
    let p = proxy(
        &up.base_url(),
        &format!("{POLICY}routes:\n  paths:\n    \"/v1/embeddings\": prompt_only\n"),
    )
    .await;
    let resp = post_json(
        &p,
        "/v1/embeddings",
        &json!({"model": "e", "input": ["fine", "关于炸弹"]}),
    )
    .await;
    assert_eq!(resp.status(), 400);
    assert!(up.requests().is_empty());
    let resp = post_json(
        &p,
        "/v1/embeddings",
        &json!({"model": "e", "input": "fine"}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), body);
    let resp = post_json(
        &p,
        "/v1/embeddings",
        &json!({"model": "e", "input": [[1, 2, 3]]}),
    )
    .await;
    assert_eq!(resp.status(), 400, "token ids cannot be judged");
}
