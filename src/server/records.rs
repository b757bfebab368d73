//! Audit records of what each request decided: who (pseudonymously), what, by which policy.
//!
//! The auditor and the pseudonymizer live for the whole process; each request gets a
//! [`RecordCtx`] that stamps its records with the request's id, route, model and user.

use std::sync::Arc;

use http::{header, HeaderMap};

use crate::audit::{self, excerpt, Auditor, Pseudonymizer, Record, ValidAuditConfig};
use crate::policy::{Action, Detector, Direction, Finding, Policy};
use crate::server::routes::Route;

/// Process-wide audit state.
pub struct Records {
    pub auditor: Auditor,
    pub pseudonymizer: Pseudonymizer,
    /// The pseudonym key comes from a secret (stable across restarts and replicas), not made up
    /// at start.
    pub pseudonyms_stable: bool,
    pub user_header: String,
    pub tenant_header: String,
    pub excerpt_chars: usize,
    /// `fsync: always`: a request is answered only once its records are on disk.
    pub durable: bool,
    /// Actions on users (`enforce`); `None` when off. Lives with the records: a strike is
    /// counted where a block decision is recorded.
    pub enforcer: Option<crate::enforce::Enforcer>,
    /// The monitors' review queue (`review`); `None` when off. Fed where decisions are recorded.
    pub review: Option<crate::review::Review>,
    /// The header that marks a minor's request (`enforce.minors.header`, whether or not actions
    /// on users are on): the categories' `minors` actions apply to such requests.
    pub minor_header: Option<http::HeaderName>,
}

impl Records {
    pub fn new(auditor: Auditor, cfg: &ValidAuditConfig) -> Self {
        Self {
            auditor,
            pseudonymizer: cfg.pseudonymizer.clone(),
            pseudonyms_stable: !cfg.pseudonym_is_ephemeral(),
            user_header: cfg.user_id_header.clone(),
            tenant_header: cfg.tenant_header.clone(),
            excerpt_chars: cfg.excerpt_chars,
            durable: cfg.fsync == crate::audit::FsyncMode::Always,
            enforcer: None,
            review: None,
            minor_header: None,
        }
    }

    /// Whether the request is a minor's (`minor_header`).
    pub fn is_minor(&self, h: &HeaderMap) -> bool {
        crate::enforce::is_minor(self.minor_header.as_ref(), h)
    }

    /// The pseudonymous user (from the user-id header, else the caller's API key) and the tenant.
    pub fn identity(&self, h: &HeaderMap) -> (Option<String>, Option<String>) {
        let raw_user = h
            .get(self.user_header.as_str())
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .or_else(|| {
                let auth = h.get(header::AUTHORIZATION)?.to_str().ok()?;
                let key = auth.strip_prefix("Bearer ").unwrap_or(auth).trim();
                (!key.is_empty()).then(|| format!("key:{key}"))
            })
            .or_else(|| {
                let key = h.get("x-api-key")?.to_str().ok()?.trim();
                (!key.is_empty()).then(|| format!("key:{key}"))
            });
        let user = raw_user.map(|u| self.pseudonymizer.id(&u));
        let tenant = h
            .get(self.tenant_header.as_str())
            .and_then(|v| v.to_str().ok())
            .map(|t| t.chars().take(64).collect());
        (user, tenant)
    }
}

/// A request's view of the audit log.
#[derive(Clone)]
pub struct RecordCtx {
    pub records: Arc<Records>,
    pub request_id: String,
    /// The route the request is counted under (its template goes in the records).
    pub route: Arc<Route>,
    pub dialect: &'static str,
    pub model: Option<String>,
    pub user: Option<String>,
    pub tenant: Option<String>,
    /// The policy that judged the request (its version goes in the records). Shared, not
    /// copied: most requests write no record.
    pub policy: Arc<Policy>,
    /// The request's number among its user's (`enforce::Verdict::Serve`), for strikes in a row.
    pub enforce_seq: Option<u64>,
    /// A minor's request (`Records::is_minor`): the categories' `minors` actions apply.
    pub minor: bool,
}

impl RecordCtx {
    fn stamp(&self, mut r: Record) -> Record {
        r.route = Some(self.route.template.clone());
        r.dialect = Some(self.dialect.to_string());
        r.model = self.model.clone();
        r.user = self.user.clone();
        r.tenant = self.tenant.clone();
        r.policy_version = Some(self.policy.version().to_string());
        r.minor = self.minor;
        r
    }

    /// `findings` as they act on this request (`Policy::for_minor` on a minor's).
    pub fn act_on(&self, policy: &Policy, findings: &mut [Finding]) {
        if self.minor && !findings.is_empty() {
            policy.for_minor(findings);
        }
    }

    /// A decision record for `f`, found in `text` (a bounded, PII-masked excerpt is kept).
    pub fn decision(
        &self,
        policy: &Policy,
        direction: Direction,
        f: &Finding,
        text: &str,
        span: std::ops::Range<usize>,
    ) -> Record {
        let mut r = Record::decision(
            self.request_id.clone(),
            audit_direction(direction),
            f.category.to_string(),
            audit_action(f.action),
        );
        let (detector, term_id) = match &f.detector {
            Detector::Keyword { term_id } => ("keyword".to_string(), Some(term_id.to_string())),
            Detector::Pattern { name } => (format!("pattern:{name}"), None),
            Detector::Pii { kind } => (format!("pii:{}", kind.as_str()), None),
            Detector::Classifier { score_permille } => {
                r.detail = Some(format!(
                    "classifier score {:.3}",
                    f64::from(*score_permille) / 1000.0
                ));
                ("classifier".to_string(), None)
            }
        };
        r.detector = Some(detector);
        r.term_id = term_id;
        let full = policy
            .category(&f.category)
            .is_some_and(|c| c.evidence == crate::policy::Evidence::Full);
        if full {
            r.evidence = Some(policy.mask_pii(text));
        }
        r.excerpt = Some(excerpt(text, span, self.records.excerpt_chars, |s| {
            policy.mask_pii(s)
        }));
        self.stamp(r)
    }

    /// The record a sampled prompt goes to the review queue with (`review.sample_rate`; never
    /// written to the audit log): the end of `text`, PII-masked, at most
    /// [`crate::review::SAMPLE_CHARS`] characters.
    pub fn review_sample(&self, text: &str) -> Record {
        let mut r = Record::new(audit::RecordKind::Decision);
        r.request_id = Some(self.request_id.clone());
        r.direction = Some(audit::Direction::Prompt);
        let len = text.len();
        r.excerpt = Some(excerpt(text, len..len, crate::review::SAMPLE_CHARS, |s| {
            self.policy.mask_pii(s)
        }));
        self.stamp(r)
    }

    /// A delivery record: the content id, hash and label status of what reached the client.
    pub fn delivery(&self) -> Record {
        self.stamp(Record::delivery(self.request_id.clone()))
    }

    /// Queue a record (with `fsync: always`, wait until it is on disk); a full queue past its
    /// bound is counted as a drop inside the auditor. A decision whose action is reviewed goes to
    /// the monitors' queue too (`review`), without waiting. A `block` decision also counts a strike
    /// against the request's user (`enforce`), once per request; a suspension it begins is
    /// recorded after it.
    pub async fn write(&self, r: Record) {
        let strike =
            r.kind == audit::RecordKind::Decision && r.action == Some(audit::Action::Block);
        if let Some(review) = &self.records.review {
            review.offer(&r);
        }
        self.queue(r).await;
        if let (true, Some(enf), Some(user)) = (strike, &self.records.enforcer, &self.user) {
            let now = crate::enforce::Enforcer::now_ms();
            if let Ok(Some(detail)) = enf
                .strike(user, &self.request_id, self.enforce_seq, now)
                .await
            {
                self.sanction(detail).await;
            }
        }
    }

    /// A sanction record of this request (`enforce`): `detail` says what was done.
    pub async fn sanction(&self, detail: String) {
        let r = audit::Record::sanction(self.request_id.clone(), detail);
        self.queue(self.stamp(r)).await;
    }

    async fn queue(&self, r: Record) {
        let a = &self.records.auditor;
        let res = if self.records.durable {
            a.record_durable(r).await
        } else {
            a.record(r).await
        };
        if let Err(e) = res {
            tracing::warn!(request_id = %self.request_id, error = %e, "Audit record not written");
        }
    }
}

fn audit_direction(d: Direction) -> audit::Direction {
    match d {
        Direction::Prompt => audit::Direction::Prompt,
        Direction::Completion => audit::Direction::Completion,
    }
}

fn audit_action(a: Action) -> audit::Action {
    match a {
        Action::Block => audit::Action::Block,
        Action::Redact => audit::Action::Redact,
        Action::Flag => audit::Action::Flag,
    }
}
