//! The `labels:` section of the YAML config and its validation into [`ValidLabels`].
//!
//! ```yaml
//! labels:
//!   explicit: { enabled: true, text: "【本内容由人工智能生成】", position: end, lang: zh }
//!   implicit: { enabled: true, producer: "91110108MA01KP2T5U001", signing_key_file: "/etc/shenhe/signing-key.pem",
//!               signing_key_env: "SHENHE_SIGNING_KEY", header: "x-aigc-label", public_key_path: null }
//!   images: { xmp: true, visible: false, visible_text: "AI生成", url_responses: record, existing: propagate }
//! ```

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::aigc::is_appendix_e_charset;
use super::visible::check_text_renderable;

/// Chinese default label (GB 45438 5.1 example wording; has both the AI and the generation element).
pub const DEFAULT_TEXT_ZH: &str = "【本内容由人工智能生成】";
/// English default label, used with `lang: en`.
pub const DEFAULT_TEXT_EN: &str = "[AI-generated content]";
/// Default visible image label: the shortest wording with both elements (GB 45438 5.2).
pub const DEFAULT_VISIBLE_TEXT: &str = "AI生成";
/// Environment variable read for the signing key when no file is configured (or in addition).
pub const DEFAULT_SIGNING_KEY_ENV: &str = "SHENHE_SIGNING_KEY";
/// Response header carrying the signed `AIGC` JSON for text responses.
pub const DEFAULT_HEADER: &str = "x-aigc-label";
/// Longest accepted `ContentProducer` code, in bytes. The TC260 coding rule is unverified
/// (STANDARDS R4.9); known codes are ~25 characters, 128 leaves room without inviting abuse.
const MAX_PRODUCER_LEN: usize = 128;
/// Longest accepted explicit or visible label text, in bytes.
const MAX_LABEL_TEXT_LEN: usize = 256;

/// The raw `labels:` section, mirroring the file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LabelsConfig {
    pub explicit: ExplicitConfig,
    pub implicit: ImplicitConfig,
    pub images: ImagesConfig,
}

/// Where the explicit text label goes in a completion.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Position {
    Start,
    #[default]
    End,
    Both,
}

/// Language of the default label text; ignored when `text` is set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Lang {
    #[default]
    Zh,
    En,
}

/// `labels.explicit`: the visible text label on completions (GB 45438 5.1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExplicitConfig {
    /// Default true.
    pub enabled: bool,
    /// Label text. Default: [`DEFAULT_TEXT_ZH`], or [`DEFAULT_TEXT_EN`] with `lang: en`.
    pub text: Option<String>,
    /// Default `zh`.
    pub lang: Lang,
    /// Default `end`.
    pub position: Position,
    /// Measures Art. 9: where the operator allows it, users who accepted the service agreement
    /// may get text without the explicit label. Unset (default): the label is always shown.
    pub opt_out: Option<OptOutConfig>,
}

/// Who may receive text without the explicit label; every such delivery is recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptOutConfig {
    /// Request header your gateway sets for users who accepted the agreement.
    pub header: String,
    /// The header value that means "accepted".
    pub value: String,
    /// Route templates where the opt-out is honoured (empty: every route).
    pub routes: Vec<String>,
    /// Tenants (`audit.tenant_header`) where it is honoured (empty: every tenant).
    pub tenants: Vec<String>,
}

impl Default for OptOutConfig {
    fn default() -> Self {
        Self {
            header: "x-shenhe-agreement".into(),
            value: "accepted".into(),
            routes: Vec::new(),
            tenants: Vec::new(),
        }
    }
}

impl OptOutConfig {
    /// Whether this request may go without the explicit label.
    pub fn applies(&self, headers: &http::HeaderMap, route: &str, tenant: Option<&str>) -> bool {
        let accepted = headers
            .get(self.header.as_str())
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() == self.value);
        let route_ok = self.routes.is_empty() || self.routes.iter().any(|r| r == route);
        let tenant_ok =
            self.tenants.is_empty() || tenant.is_some_and(|t| self.tenants.iter().any(|x| x == t));
        accepted && route_ok && tenant_ok
    }
}

impl Default for ExplicitConfig {
    fn default() -> Self {
        ExplicitConfig {
            enabled: true,
            text: None,
            lang: Lang::Zh,
            position: Position::End,
            opt_out: None,
        }
    }
}

/// `labels.implicit`: the signed `AIGC` metadata (GB 45438 6.1, Appendix E).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImplicitConfig {
    /// Default true.
    pub enabled: bool,
    /// `ContentProducer` code: Appendix E charset, no default (required when enabled).
    pub producer: String,
    /// PKCS#8 PEM private key made by `shenhe keygen`. Takes precedence over the env variable.
    pub signing_key_file: Option<PathBuf>,
    /// Environment variable holding the key (PEM or base64 PKCS#8 DER). Default `SHENHE_SIGNING_KEY`.
    pub signing_key_env: String,
    /// Response header for text responses. Default `x-aigc-label`.
    pub header: String,
    /// Path on the public listener that serves the public key PEM, e.g. `/.well-known/aigc-public-key`.
    /// Default: not served.
    pub public_key_path: Option<String>,
}

impl Default for ImplicitConfig {
    fn default() -> Self {
        ImplicitConfig {
            enabled: true,
            producer: String::new(),
            signing_key_file: None,
            signing_key_env: DEFAULT_SIGNING_KEY_ENV.to_owned(),
            header: DEFAULT_HEADER.to_owned(),
            public_key_path: None,
        }
    }
}

/// What to do with image responses that carry a URL instead of bytes (nothing to label in-line).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UrlResponses {
    /// Pass the URL, count `unlabeled_deliveries` and write an audit record.
    #[default]
    Record,
    /// Refuse the response.
    Reject,
}

/// What to do when an image already carries an `AIGC` block written by someone else.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExistingAigc {
    /// Keep the upstream producer fields; write shenhe as propagator (`ContentPropagator`,
    /// `PropagateID`, signature in `ReservedCode2`). STANDARDS §11 point 5 default.
    #[default]
    Propagate,
    /// Overwrite with a fresh first-write record naming shenhe's operator as producer.
    Replace,
}

/// `labels.images`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImagesConfig {
    /// Write the `TC260:AIGC` XMP block (needs `implicit.enabled`). Default true.
    pub xmp: bool,
    /// Burn a visible label into the pixels (re-encodes PNG/JPEG). Default false.
    pub visible: bool,
    /// Visible label text. Default [`DEFAULT_VISIBLE_TEXT`].
    pub visible_text: String,
    /// Default `record`.
    pub url_responses: UrlResponses,
    /// Default `propagate`.
    pub existing: ExistingAigc,
}

impl Default for ImagesConfig {
    fn default() -> Self {
        ImagesConfig {
            xmp: true,
            visible: false,
            visible_text: DEFAULT_VISIBLE_TEXT.to_owned(),
            url_responses: UrlResponses::Record,
            existing: ExistingAigc::Propagate,
        }
    }
}

/// Validated explicit label settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidExplicit {
    pub text: String,
    pub position: Position,
}

/// Validated implicit label settings. The key is loaded by `Labeler::from_config`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidImplicit {
    pub producer: String,
    pub signing_key_file: Option<PathBuf>,
    pub signing_key_env: String,
    pub header: String,
    pub public_key_path: Option<String>,
}

/// Validated image settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidImages {
    /// XMP is written only when implicit labels are enabled too.
    pub xmp: bool,
    pub visible: Option<String>,
    pub url_responses: UrlResponses,
    pub existing: ExistingAigc,
}

/// The runtime form of `labels:`; `None` means disabled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidLabels {
    pub explicit: Option<ValidExplicit>,
    pub implicit: Option<ValidImplicit>,
    pub images: ValidImages,
}

impl LabelsConfig {
    /// Validate into the runtime form, reporting every problem at once, each prefixed by its YAML path.
    ///
    /// Reads the process environment only to check that `signing_key_env` is set when no key file is.
    pub fn validate(&self) -> Result<ValidLabels, Vec<String>> {
        let mut errs = Vec::new();

        let explicit = if self.explicit.enabled {
            let text = match (&self.explicit.text, self.explicit.lang) {
                (Some(t), _) => t.clone(),
                (None, Lang::Zh) => DEFAULT_TEXT_ZH.to_owned(),
                (None, Lang::En) => DEFAULT_TEXT_EN.to_owned(),
            };
            if let Err(e) = check_label_text(&text) {
                errs.push(format!("labels.explicit.text: {e}"));
            }
            Some(ValidExplicit {
                text,
                position: self.explicit.position,
            })
        } else {
            None
        };

        let implicit = if self.implicit.enabled {
            let i = &self.implicit;
            if i.producer.is_empty() {
                errs.push("labels.implicit.producer: required when implicit labels are enabled (the provider code written as ContentProducer)".to_owned());
            } else if i.producer.len() > MAX_PRODUCER_LEN {
                errs.push(format!(
                    "labels.implicit.producer: longer than {MAX_PRODUCER_LEN} bytes"
                ));
            } else if !is_appendix_e_charset(&i.producer) {
                errs.push("labels.implicit.producer: only printable ascii without space, '\"' and '\\' is allowed (GB 45438 appendix E); use the provider code, not a company name".to_owned());
            }
            if !is_header_name(&i.header) {
                errs.push(format!(
                    "labels.implicit.header: `{}` is not a lowercase http header name",
                    i.header
                ));
            }
            if let Some(p) = &i.public_key_path {
                if !p.starts_with('/') || p.contains(char::is_whitespace) {
                    errs.push(format!(
                        "labels.implicit.public_key_path: `{p}` must be an absolute url path"
                    ));
                }
            }
            let env_set = !i.signing_key_env.is_empty()
                && std::env::var_os(&i.signing_key_env).is_some_and(|v| !v.is_empty());
            if i.signing_key_file.is_none() && !env_set {
                let env = if i.signing_key_env.is_empty() {
                    DEFAULT_SIGNING_KEY_ENV
                } else {
                    &i.signing_key_env
                };
                errs.push(format!("labels.implicit.signing_key_file: implicit labels are enabled but no signing key is configured; set signing_key_file or the {env} environment variable (create a key with `shenhe keygen`)"));
            }
            Some(ValidImplicit {
                producer: i.producer.clone(),
                signing_key_file: i.signing_key_file.clone(),
                signing_key_env: i.signing_key_env.clone(),
                header: i.header.clone(),
                public_key_path: i.public_key_path.clone(),
            })
        } else {
            None
        };

        let visible = if self.images.visible {
            if let Err(e) = check_label_text(&self.images.visible_text) {
                errs.push(format!("labels.images.visible_text: {e}"));
            } else if let Err(e) = check_text_renderable(&self.images.visible_text) {
                errs.push(format!("labels.images.visible_text: {e}"));
            }
            Some(self.images.visible_text.clone())
        } else {
            None
        };

        if errs.is_empty() {
            Ok(ValidLabels {
                explicit,
                images: ValidImages {
                    xmp: self.images.xmp && implicit.is_some(),
                    visible,
                    url_responses: self.images.url_responses,
                    existing: self.images.existing,
                },
                implicit,
            })
        } else {
            Err(errs)
        }
    }
}

/// GB 45438 5.1 b: the label must contain an AI element ("人工智能" or "AI") and a generation element
/// ("生成" or "合成"). For English wording shenhe accepts "generated" or "synthesized" (any case) as the
/// generation element; that reading is ours, the standard is written for Chinese text.
pub(crate) fn check_label_text(text: &str) -> Result<(), String> {
    if text.trim().is_empty() {
        return Err("must not be empty".to_owned());
    }
    if text.len() > MAX_LABEL_TEXT_LEN {
        return Err(format!("longer than {MAX_LABEL_TEXT_LEN} bytes"));
    }
    let lower = text.to_lowercase();
    let ai = text.contains("AI") || text.contains("人工智能");
    let gen = text.contains("生成")
        || text.contains("合成")
        || lower.contains("generated")
        || lower.contains("synthesized");
    match (ai, gen) {
        (true, true) => Ok(()),
        (false, _) => Err(format!("`{text}` lacks the ai element (\"AI\" or \"人工智能\")")),
        (true, false) => Err(format!(
            "`{text}` lacks the generation element (\"生成\", \"合成\", \"generated\" or \"synthesized\")"
        )),
    }
}

fn is_header_name(h: &str) -> bool {
    !h.is_empty()
        && h.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_key() -> LabelsConfig {
        let mut c = LabelsConfig::default();
        c.implicit.producer = "91110108MA01KP2T5U001".into();
        c.implicit.signing_key_file = Some("/nonexistent/key.pem".into());
        c
    }

    #[test]
    fn defaults_validate_with_producer_and_key() {
        let v = with_key().validate().expect("valid");
        let e = v.explicit.expect("explicit on");
        assert_eq!(e.text, DEFAULT_TEXT_ZH);
        assert_eq!(e.position, Position::End);
        assert_eq!(v.implicit.expect("implicit on").header, "x-aigc-label");
        assert!(v.images.xmp);
        assert_eq!(v.images.visible, None);
    }

    #[test]
    fn yaml_shape_parses_and_rejects_unknown_fields() {
        let y = r#"{"explicit":{"enabled":true,"text":"AI生成","position":"both"},
                    "implicit":{"enabled":false,"public_key_path":"/.well-known/aigc-public-key"},
                    "images":{"xmp":true,"visible":true,"visible_text":"AI生成","url_responses":"reject"}}"#;
        let c: LabelsConfig = serde_json::from_str(y).expect("parses");
        assert_eq!(c.explicit.position, Position::Both);
        assert_eq!(c.images.url_responses, UrlResponses::Reject);
        let v = c.validate().expect("valid");
        assert!(!v.images.xmp, "xmp needs implicit");
        assert!(serde_json::from_str::<LabelsConfig>(r#"{"explicit":{"colour":"red"}}"#).is_err());
        assert!(
            serde_json::from_str::<LabelsConfig>(r#"{"explicit":{"position":"middle"}}"#).is_err()
        );
        // Serialize round trip.
        let back: LabelsConfig =
            serde_json::from_str(&serde_json::to_string(&c).expect("ser")).expect("de");
        assert_eq!(back, c);
    }

    #[test]
    fn english_default_text() {
        let mut c = with_key();
        c.explicit.lang = Lang::En;
        let t = c.validate().expect("valid").explicit.expect("on").text;
        assert!(t.contains("AI") && t.contains("generated"));
    }

    #[test]
    fn label_text_needs_both_elements() {
        assert!(check_label_text("本内容由人工智能生成").is_ok());
        assert!(check_label_text("AI合成").is_ok());
        assert!(check_label_text("Synthesized by AI").is_ok());
        assert!(check_label_text("AI").is_err());
        assert!(check_label_text("本内容由机器生成").is_err());
        assert!(check_label_text("").is_err());
        let mut c = with_key();
        c.explicit.text = Some("仅供参考".into());
        let errs = c.validate().expect_err("invalid");
        assert!(errs[0].starts_with("labels.explicit.text:"), "{errs:?}");
    }

    #[test]
    fn every_error_reported_at_once() {
        let mut c = LabelsConfig::default();
        c.implicit.producer = "某某公司".into();
        c.implicit.header = "X Bad".into();
        c.implicit.signing_key_env = "SHENHE_TEST_UNSET_KEY_VAR".into();
        c.images.visible = true;
        c.images.visible_text = "watermark".into();
        let errs = c.validate().expect_err("invalid");
        assert_eq!(errs.len(), 4, "{errs:?}");
        assert!(errs.iter().any(|e| e.contains("shenhe keygen")));
        assert!(errs
            .iter()
            .any(|e| e.starts_with("labels.implicit.producer")));
        assert!(errs
            .iter()
            .any(|e| e.starts_with("labels.images.visible_text")));
    }

    #[test]
    fn empty_producer_is_an_error() {
        let mut c = with_key();
        c.implicit.producer.clear();
        assert!(c.validate().is_err());
    }
}
