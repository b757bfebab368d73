//! Labels on generated text (GB 45438-2025): the explicit label as ordinary content and the
//! signed implicit `AIGC` record, decided once per response.
//!
//! A label is never put into tool-call arguments or JSON-mode output, where it would break the
//! client: there the implicit label carries the duty and the delivery record says so.

use std::sync::{Arc, Mutex};

use http::{HeaderName, HeaderValue};

use crate::label::{new_produce_id, Aigc, Labeler, Position};

/// What was delivered and how it was labeled, for the delivery record.
#[derive(Debug, Clone, Default)]
pub struct Delivery {
    pub content_id: Option<String>,
    pub content_sha256: Option<String>,
    /// `explicit+implicit`, `implicit_only:json_mode`, `explicit_only`, `unlabeled`, …
    pub label: Option<String>,
}

/// The labels of one text response.
pub struct TextLabels {
    labeler: Arc<Labeler>,
    /// The explicit label and where it goes; `None` when it must not be shown (JSON mode).
    pub explicit: Option<(String, Position)>,
    pub produce_id: String,
    /// Why the explicit label is absent, when it is.
    explicit_absent: Option<&'static str>,
    pub delivery: Arc<Mutex<Delivery>>,
}

impl TextLabels {
    pub fn new(labeler: Arc<Labeler>, json_mode: bool) -> Self {
        let (explicit, explicit_absent) = match labeler.explicit_text() {
            Some(_) if json_mode => (None, Some("json_mode")),
            Some(t) => (Some((t.to_string(), labeler.position())), None),
            None => (None, Some("disabled")),
        };
        Self {
            labeler,
            explicit,
            produce_id: new_produce_id(),
            explicit_absent,
            delivery: Arc::default(),
        }
    }

    /// The labels for one request: explicit off where the Art. 9 opt-out applies to this user.
    pub fn for_request(
        labeler: Arc<Labeler>,
        json_mode: bool,
        ctx: &crate::server::proxy::RequestCtx,
    ) -> Self {
        let mut l = Self::new(labeler, json_mode);
        let opted_out = ctx
            .rt
            .config
            .labels
            .explicit
            .opt_out
            .as_ref()
            .is_some_and(|o| {
                o.applies(
                    &ctx.client_headers,
                    &ctx.log.route.template,
                    ctx.rec.tenant.as_deref(),
                )
            });
        if opted_out && l.explicit.is_some() {
            l.explicit = None;
            l.explicit_absent = Some("agreement_opt_out");
        }
        l
    }

    /// The label status for records and metrics.
    pub fn status(&self, explicit_used: bool) -> String {
        let implicit = self.labeler.producer().is_some();
        match (explicit_used, implicit) {
            (true, true) => "explicit+implicit".into(),
            (true, false) => "explicit_only".into(),
            (false, true) => format!(
                "implicit_only:{}",
                self.explicit_absent.unwrap_or("no_text")
            ),
            (false, false) => "unlabeled".into(),
        }
    }

    /// Sign what was delivered; also fills the delivery record. `None` when implicit labels are off.
    pub fn seal(&self, delivered: &str, explicit_used: bool) -> Option<Aigc> {
        let aigc = self.labeler.implicit_for_text(&self.produce_id, delivered);
        if let Ok(mut d) = self.delivery.lock() {
            d.content_id = Some(self.produce_id.clone());
            d.content_sha256 = Some(crate::audit::sha256_hex(delivered.as_bytes()));
            d.label = Some(self.status(explicit_used));
        }
        if !explicit_used {
            crate::metrics::metrics()
                .unlabeled_deliveries
                .with_label_values(&["text", self.explicit_absent.unwrap_or("no_text")])
                .inc();
        }
        aigc
    }

    /// The implicit-label header: the signed record for whole responses; for streams, sent before
    /// the text exists, the record with an empty signature (the signed one ends the stream).
    pub fn header(&self, aigc: Option<&Aigc>) -> Option<(HeaderName, HeaderValue)> {
        let name = HeaderName::from_bytes(self.labeler.header_name()?.as_bytes()).ok()?;
        let value = match aigc {
            Some(a) => Labeler::header_value(a),
            None => {
                let producer = self.labeler.producer()?;
                Labeler::header_value(&Aigc::first_write(
                    producer,
                    &self.produce_id,
                    String::new(),
                ))
            }
        };
        Some((name, HeaderValue::from_str(&value).ok()?))
    }
}

/// The AIGC record as a JSON value, for bodies and final chunks.
pub fn aigc_value(a: &Aigc) -> serde_json::Value {
    serde_json::from_str(&a.to_json()).unwrap_or(serde_json::Value::Null)
}
