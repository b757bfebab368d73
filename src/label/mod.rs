//! Labeling of AI-generated content (GB 45438-2025): explicit text labels, signed implicit `AIGC` metadata, image XMP.
//!
//! The module is a pure library: no HTTP. The dialects call [`Labeler`] to get the explicit label text and
//! the signed [`Aigc`] record for a text response, and [`label_image`] for image bytes; `shenhe verify`
//! calls [`verify_bytes`]; `shenhe keygen` calls [`keygen`].
//!
//! Files, in the order data meets them:
//! - `config.rs`: the `labels:` YAML section and its validation.
//! - `aigc.rs`: the seven-field Appendix E record, its compact JSON and the content ID generator.
//! - `sign.rs`: Ed25519 keys, the signature in `ReservedCode1`, key generation.
//! - `text.rs`: the [`Labeler`] used by the dialects for text responses.
//! - `xmp.rs`: building and reading the XMP packet that carries `TC260:AIGC`.
//! - `image.rs`: PNG, JPEG and WebP containers: write, read, strip the XMP block.
//! - `visible.rs`: the optional visible label burned into image pixels.
//! - `verify.rs`: the report behind `shenhe verify`.

mod aigc;
mod config;
mod image;
mod sign;
mod text;
mod verify;
mod visible;
mod xmp;

pub use aigc::{
    is_appendix_e_charset, new_produce_id, Aigc, AigcError, LABEL_AI_GENERATED, PRODUCE_ID_PREFIX,
};
pub use config::{
    ExistingAigc, ExplicitConfig, ImagesConfig, ImplicitConfig, LabelsConfig, Lang, OptOutConfig,
    Position, UrlResponses, ValidExplicit, ValidImages, ValidImplicit, ValidLabels, DEFAULT_HEADER,
    DEFAULT_SIGNING_KEY_ENV, DEFAULT_TEXT_EN, DEFAULT_TEXT_ZH, DEFAULT_VISIBLE_TEXT,
};
pub use image::{
    canonical_bytes, detect_format, label_image, read_aigc, ImageFormat, LabelError,
    MAX_IMAGE_BYTES,
};
pub use sign::{
    keygen, load_public_key_file, public_key_from_pem, verify, verify_signature, KeyError,
    SignatureSlot, Signer, VerifyError, PRIVATE_KEY_FILE, PUBLIC_KEY_FILE,
};
pub use text::{apply_explicit, chat_delivered_text, explicit_affixes, Labeler, CHAT_AIGC_FIELD};
pub use verify::{verify_bytes, LabelStatus, SignatureStatus, VerifyReport};
pub use visible::{
    burn_visible_label, check_text_renderable, LabelBox, VisibleError, MIN_TEXT_HEIGHT_RATIO,
};
pub use xmp::{XmpError, MAX_XMP_BYTES, TC260_NS, TC260_PREFIX};

/// Count one labeling outcome in `shenhe_labels_applied_total`.
///
/// `medium` is `text` or `image`, `kind` is `explicit`, `implicit` or `visible`, `result` is `ok`,
/// `error` or `skipped`. Dialects that insert the explicit label into a stream themselves call this.
pub fn record(medium: &str, kind: &str, result: &str) {
    let m = crate::metrics::metrics();
    if (medium, kind, result) == ("text", "explicit", "ok") {
        m.text_labels_ok.inc();
        return;
    }
    m.labels_applied
        .with_label_values(&[medium, kind, result])
        .inc();
}
