//! Criterion benches for `shenhe::label`: text signing, XMP-only image labeling, visible image labels.

use std::io::Cursor;
use std::sync::Arc;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use shenhe::label::{label_image, new_produce_id, Labeler, LabelsConfig, Signer};

fn labeler(visible: bool) -> Labeler {
    let mut c = LabelsConfig::default();
    c.implicit.producer = "SHENHE-BENCH-001".into();
    c.implicit.signing_key_file = Some("/unused".into());
    c.images.visible = visible;
    let v = c.validate().expect("valid config");
    Labeler::with_signer(&v, Some(Arc::new(Signer::generate())))
}

/// A 1024×1024 RGB PNG with a noisy gradient, encoded by the `image` crate (default compression):
/// about what an image model returns.
fn png_1024() -> Vec<u8> {
    let img = image::RgbImage::from_fn(1024, 1024, |x, y| {
        let n = (x.wrapping_mul(2_654_435_761) ^ y.wrapping_mul(40_503)) % 23;
        image::Rgb([
            (x / 4) as u8,
            (y / 4) as u8,
            (((x + y) / 8) as u8).wrapping_add(n as u8),
        ])
    });
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .expect("encode");
    out.into_inner()
}

fn jpeg_1024() -> Vec<u8> {
    let img = image::RgbImage::from_fn(1024, 1024, |x, y| {
        image::Rgb([(x / 4) as u8, (y / 4) as u8, ((x ^ y) / 8) as u8])
    });
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Jpeg)
        .expect("encode");
    out.into_inner()
}

fn bench(c: &mut Criterion) {
    let l = labeler(false);
    let text = l.label_text(&"生成式人工智能服务的回答文本。".repeat(60)); // ~2.7 KB
    c.bench_function("text: sign one response (sha256 + ed25519)", |b| {
        b.iter(|| {
            let id = new_produce_id();
            black_box(l.implicit_for_text(&id, black_box(&text)))
        })
    });
    let png = png_1024();
    eprintln!("png_1024: {} bytes", png.len());
    c.bench_function("image: label 1024x1024 png, xmp only", |b| {
        b.iter(|| black_box(label_image(black_box(&png), &l, "shenhe-bench").expect("labeled")))
    });
    let jpg = jpeg_1024();
    eprintln!("jpeg_1024: {} bytes", jpg.len());
    c.bench_function("image: label 1024x1024 jpeg, xmp only", |b| {
        b.iter(|| black_box(label_image(black_box(&jpg), &l, "shenhe-bench").expect("labeled")))
    });
    let lv = labeler(true);
    let mut g = c.benchmark_group("visible");
    g.sample_size(20);
    g.bench_function("image: label 1024x1024 png, visible + xmp", |b| {
        b.iter(|| black_box(label_image(black_box(&png), &lv, "shenhe-bench").expect("labeled")))
    });
    g.bench_function("image: label 1024x1024 jpeg, visible + xmp", |b| {
        b.iter(|| black_box(label_image(black_box(&jpg), &lv, "shenhe-bench").expect("labeled")))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
