//! The optional visible image label (GB 45438 §5.2): text burned into the pixels at the bottom-right corner.
//!
//! White text on a semi-transparent dark band, inset from the corner by 1 % of the shortest side. The
//! text's ink height (top of the tallest glyph to the bottom of the lowest) is 5.5 % of the shortest
//! side (5 % required, plus a margin so anti-aliased edge rows still count), and at least 10 px. The
//! image is decoded and re-encoded in its own format (PNG: fast deflate; JPEG: quality 90; WebP:
//! lossless), so the caller must write the `AIGC` XMP block afterwards (`label_image` does). The font
//! is a subset of Noto Sans CJK SC Bold (SIL OFL 1.1) embedded from `fonts/`; a label character outside
//! the subset is refused when the config is validated.

use std::io::Cursor;

use ab_glyph::{point, Font, FontRef, GlyphId, PxScale, ScaleFont};
use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::codecs::webp::WebPEncoder;
use image::{ExtendedColorType, ImageEncoder, ImageReader, Limits, RgbaImage};

use super::image::ImageFormat;

/// Minimum text height as a share of the image's shortest side (GB 45438 5.2).
pub const MIN_TEXT_HEIGHT_RATIO: f32 = 0.05;
/// Height actually drawn: 10 % over the minimum so edge rows with faint coverage are not needed.
const DRAWN_TEXT_HEIGHT_RATIO: f32 = 0.055;
/// Smallest ink height in pixels: below this CJK glyphs are not legible.
const MIN_TEXT_PX: f32 = 10.0;
/// Band padding around the text, as a share of the text height.
const PADDING_RATIO: f32 = 0.25;
/// Band opacity over the image (0–1).
const BAND_ALPHA: f32 = 0.6;
/// Largest width or height decoded, in pixels.
const MAX_DIMENSION: u32 = 16_384;
/// Largest decoder allocation, in bytes (an 8192² RGBA image is 256 MiB).
const MAX_DECODE_ALLOC: u64 = 256 * 1024 * 1024;
/// JPEG re-encoding quality (1–100).
const JPEG_QUALITY: u8 = 90;

static FONT_BYTES: &[u8] = include_bytes!("fonts/label-subset.otf");

/// Why the visible label could not be drawn.
#[derive(Debug, thiserror::Error)]
pub enum VisibleError {
    #[error("embedded font could not be loaded")]
    Font,
    #[error("the label font has no glyph for {0:?}")]
    MissingGlyph(char),
    #[error("label text is empty")]
    Empty,
    #[error("could not decode image: {0}")]
    Decode(String),
    #[error("could not encode image: {0}")]
    Encode(String),
    #[error("image of {width}x{height} is too small for a legible label")]
    TooSmall { width: u32, height: u32 },
}

/// Where the label went, in pixels (for tests and the labeling report).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LabelBox {
    /// Band rectangle: left, top, width, height.
    pub band: (u32, u32, u32, u32),
    /// Ink height of the text in pixels.
    pub text_height: u32,
}

fn font() -> Result<FontRef<'static>, VisibleError> {
    FontRef::try_from_slice(FONT_BYTES).map_err(|_| VisibleError::Font)
}

/// Check that every character of `text` has a glyph in the embedded font.
pub fn check_text_renderable(text: &str) -> Result<(), VisibleError> {
    let f = font()?;
    if text.trim().is_empty() {
        return Err(VisibleError::Empty);
    }
    for c in text.chars() {
        if !c.is_whitespace() && f.glyph_id(c) == GlyphId(0) {
            return Err(VisibleError::MissingGlyph(c));
        }
    }
    Ok(())
}

/// Decode `bytes` (`format`), draw `text` at the bottom-right corner and re-encode in the same format.
/// Metadata is not carried over; `label_image` writes the `AIGC` block afterwards.
pub fn burn_visible_label(
    bytes: &[u8],
    format: ImageFormat,
    text: &str,
) -> Result<Vec<u8>, VisibleError> {
    let img_format = match format {
        ImageFormat::Png => image::ImageFormat::Png,
        ImageFormat::Jpeg => image::ImageFormat::Jpeg,
        ImageFormat::WebP => image::ImageFormat::WebP,
    };
    let mut reader = ImageReader::with_format(Cursor::new(bytes), img_format);
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_DIMENSION);
    limits.max_image_height = Some(MAX_DIMENSION);
    limits.max_alloc = Some(MAX_DECODE_ALLOC);
    reader.limits(limits);
    let decoded = reader
        .decode()
        .map_err(|e| VisibleError::Decode(e.to_string()))?;
    let has_alpha = decoded.color().has_alpha() && format != ImageFormat::Jpeg;
    let mut rgba = decoded.into_rgba8();
    draw_label(&mut rgba, text)?;
    let (w, h) = rgba.dimensions();
    let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 8);
    let enc_err = |e: image::ImageError| VisibleError::Encode(e.to_string());
    let (buf, color) = if has_alpha {
        (rgba.into_raw(), ExtendedColorType::Rgba8)
    } else {
        (
            image::DynamicImage::ImageRgba8(rgba).into_rgb8().into_raw(),
            ExtendedColorType::Rgb8,
        )
    };
    match format {
        ImageFormat::Png => {
            PngEncoder::new_with_quality(&mut out, CompressionType::Fast, FilterType::Adaptive)
                .write_image(&buf, w, h, color)
                .map_err(enc_err)?;
        }
        ImageFormat::Jpeg => {
            JpegEncoder::new_with_quality(&mut out, JPEG_QUALITY)
                .write_image(&buf, w, h, color)
                .map_err(enc_err)?;
        }
        ImageFormat::WebP => {
            WebPEncoder::new_lossless(&mut out)
                .write_image(&buf, w, h, color)
                .map_err(enc_err)?;
        }
    }
    Ok(out)
}

/// Draw the band and the text into `img`.
pub(crate) fn draw_label(img: &mut RgbaImage, text: &str) -> Result<LabelBox, VisibleError> {
    let f = font()?;
    check_text_renderable(text)?;
    let (w, h) = img.dimensions();
    let ids: Vec<GlyphId> = text.chars().map(|c| f.glyph_id(c)).collect();
    // Ink extent in font units, y up (ab_glyph stores outline bounds with min.y as the top edge,
    // so take both ends without assuming an order).
    let (mut top, mut bottom) = (f32::MIN, f32::MAX);
    for id in &ids {
        if let Some(o) = f.outline(*id) {
            top = top.max(o.bounds.min.y.max(o.bounds.max.y));
            bottom = bottom.min(o.bounds.min.y.min(o.bounds.max.y));
        }
    }
    let ink_units = top - bottom;
    if ink_units.is_nan() || ink_units <= 0.0 {
        return Err(VisibleError::Empty);
    }
    let min_side = w.min(h) as f32;
    let target = (min_side * DRAWN_TEXT_HEIGHT_RATIO).max(MIN_TEXT_PX).ceil();
    let scale = PxScale::from(target * f.height_unscaled() / ink_units);
    let sf = f.as_scaled(scale);
    let v = sf.v_scale_factor();
    let mut text_w = 0.0f32;
    for (i, id) in ids.iter().enumerate() {
        text_w += sf.h_advance(*id);
        if let Some(next) = ids.get(i + 1) {
            text_w += sf.kern(*id, *next);
        }
    }
    let pad = (target * PADDING_RATIO).ceil();
    let margin = (min_side * 0.01).ceil();
    let band_w = (text_w + 2.0 * pad).ceil();
    let band_h = (ink_units * v).ceil() + 2.0 * pad;
    if band_w + margin > w as f32 || band_h + margin > h as f32 {
        return Err(VisibleError::TooSmall {
            width: w,
            height: h,
        });
    }
    // Casts are in range: checked against the image size just above.
    let x0 = (w as f32 - margin - band_w) as u32;
    let y0 = (h as f32 - margin - band_h) as u32;
    let (bw, bh) = (band_w as u32, band_h as u32);
    for y in y0..(y0 + bh).min(h) {
        for x in x0..(x0 + bw).min(w) {
            let p = img.get_pixel_mut(x, y);
            for c in 0..3 {
                p.0[c] = (f32::from(p.0[c]) * (1.0 - BAND_ALPHA)) as u8;
            }
            p.0[3] = p.0[3].max((255.0 * BAND_ALPHA) as u8);
        }
    }
    let baseline = y0 as f32 + pad + top * v;
    let mut caret = x0 as f32 + pad;
    for (i, id) in ids.iter().enumerate() {
        let glyph = id.with_scale_and_position(scale, point(caret, baseline));
        if let Some(outlined) = f.outline_glyph(glyph) {
            let b = outlined.px_bounds();
            outlined.draw(|gx, gy, cov| {
                let px = b.min.x as i64 + i64::from(gx);
                let py = b.min.y as i64 + i64::from(gy);
                if px < 0 || py < 0 || px >= i64::from(w) || py >= i64::from(h) {
                    return;
                }
                let p = img.get_pixel_mut(px as u32, py as u32);
                let a = cov.clamp(0.0, 1.0);
                for c in 0..3 {
                    p.0[c] = (f32::from(p.0[c]) * (1.0 - a) + 255.0 * a) as u8;
                }
                p.0[3] = p.0[3].max((255.0 * a) as u8);
            });
        }
        caret += sf.h_advance(*id);
        if let Some(next) = ids.get(i + 1) {
            caret += sf.kern(*id, *next);
        }
    }
    Ok(LabelBox {
        band: (x0, y0, bw, bh),
        text_height: (ink_units * v).round() as u32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::label::config::LabelsConfig;
    use crate::label::image::label_image;
    use crate::label::text::Labeler;
    use crate::label::verify::verify_bytes;
    use crate::label::Signer;
    use std::sync::Arc;

    fn grey(w: u32, h: u32, format: image::ImageFormat) -> Vec<u8> {
        let img = image::RgbImage::from_pixel(w, h, image::Rgb([100, 100, 100]));
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, format).expect("encode");
        out.into_inner()
    }

    /// Rows (and their extent) holding text pixels: bright pixels on the dark band over grey.
    fn text_rows(bytes: &[u8]) -> (u32, u32, u32, u32) {
        let img = image::load_from_memory(bytes).expect("decode").into_rgb8();
        let (w, h) = img.dimensions();
        let (mut first, mut last, mut minx) = (u32::MAX, 0, u32::MAX);
        for (x, y, p) in img.enumerate_pixels() {
            if p.0[0] > 200 {
                first = first.min(y);
                last = last.max(y);
                minx = minx.min(x);
            }
        }
        assert!(first != u32::MAX, "no text pixels in {w}x{h}");
        (last - first + 1, minx, first, w.min(h))
    }

    fn visible_labeler() -> (Labeler, Arc<Signer>) {
        let mut c = LabelsConfig::default();
        c.implicit.producer = "SHENHE-TEST-001".into();
        c.implicit.signing_key_file = Some("/unused".into());
        c.images.visible = true;
        let s = Arc::new(Signer::generate());
        (
            Labeler::with_signer(&c.validate().expect("valid"), Some(s.clone())),
            s,
        )
    }

    #[test]
    fn text_height_is_at_least_five_percent_of_shortest_side() {
        for (w, h, fmt, ours) in [
            (400, 300, image::ImageFormat::Png, ImageFormat::Png),
            (300, 1000, image::ImageFormat::Png, ImageFormat::Png),
            (1024, 1024, image::ImageFormat::Jpeg, ImageFormat::Jpeg),
            (640, 480, image::ImageFormat::WebP, ImageFormat::WebP),
        ] {
            let src = grey(w, h, fmt);
            let out = burn_visible_label(&src, ours, "AI生成").expect("burned");
            let (rows, minx, top, min_side) = text_rows(&out);
            assert!(
                rows as f32 >= MIN_TEXT_HEIGHT_RATIO * min_side as f32,
                "{w}x{h}: text {rows} rows < 5% of {min_side}"
            );
            // Corner: in the right half and the bottom quarter.
            assert!(minx > w / 2 && top > h * 3 / 4, "{w}x{h}: at {minx},{top}");
        }
    }

    #[test]
    fn label_image_burns_then_signs() {
        let (l, s) = visible_labeler();
        let src = grey(320, 200, image::ImageFormat::Png);
        let out = label_image(&src, &l, "shenhe-vis").expect("labeled");
        let r = verify_bytes(&out, Some(&s.verifying_key()));
        assert!(r.ok(), "{r}");
        let (rows, ..) = text_rows(&out);
        assert!(rows >= 10);
    }

    #[test]
    fn unsupported_text_tiny_images_and_garbage() {
        assert!(matches!(
            check_text_renderable("AI生成🙂"),
            Err(VisibleError::MissingGlyph('🙂'))
        ));
        assert!(check_text_renderable(crate::label::DEFAULT_TEXT_ZH).is_ok());
        assert!(check_text_renderable(crate::label::DEFAULT_TEXT_EN).is_ok());
        let tiny = grey(12, 12, image::ImageFormat::Png);
        assert!(matches!(
            burn_visible_label(&tiny, ImageFormat::Png, "AI生成"),
            Err(VisibleError::TooSmall { .. })
        ));
        let png = grey(64, 64, image::ImageFormat::Png);
        assert!(burn_visible_label(&png[..png.len() / 2], ImageFormat::Png, "AI生成").is_err());
        // A header claiming a huge image is refused by the limits, not allocated.
        let mut huge = png.clone();
        huge[16..20].copy_from_slice(&60_000u32.to_be_bytes());
        huge[20..24].copy_from_slice(&60_000u32.to_be_bytes());
        assert!(burn_visible_label(&huge, ImageFormat::Png, "AI生成").is_err());
    }
}
