//! The audit record: one JSON object per line, pseudonymous and bounded (no full prompt or completion).

use chrono::{DateTime, Datelike, SecondsFormat, Timelike, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::excerpt::CUT;
use super::pseudonym::push_hex;
use crate::json_str::push_quoted;

/// Longest id-like field kept (request id, route, model, category, ...), in characters.
pub const ID_MAX_CHARS: usize = 128;
/// Longest `detail` kept, in characters: a short note, never a copy of content.
pub const DETAIL_MAX_CHARS: usize = 256;

/// What a record is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordKind {
    /// A moderation finding acted on (or a pass, when passes are recorded).
    Decision,
    /// Generated content delivered to a client (labels applied or not, how it ended).
    Delivery,
    /// A user's records were erased (Art. 11 request); holds the pseudonymous id only.
    Erasure,
    /// An administrative action (export, legal hold, policy reload, ...).
    Admin,
    /// An action on a user (Interim Measures Art. 14 para 2, Art. 10): a suspension begun, a
    /// request refused or limited for the user's standing; `detail` says which.
    Sanction,
    /// A complaint or report (Interim Measures Art. 15) filed or resolved; `content_id` and
    /// `request_id` name the answer it is about, `detail` the complaint id, type and outcome.
    Complaint,
}

impl RecordKind {
    /// The name the record's JSON gives it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Decision => "decision",
            Self::Delivery => "delivery",
            Self::Erasure => "erasure",
            Self::Admin => "admin",
            Self::Sanction => "sanction",
            Self::Complaint => "complaint",
        }
    }
}

/// Which side of the conversation was judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Prompt,
    Completion,
}

impl Direction {
    /// The name the record's JSON gives it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Prompt => "prompt",
            Self::Completion => "completion",
        }
    }
}

/// What the proxy did with the content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Block,
    Redact,
    Flag,
    Pass,
}

impl Action {
    /// The name the record's JSON gives it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Block => "block",
            Self::Redact => "redact",
            Self::Flag => "flag",
            Self::Pass => "pass",
        }
    }
}

/// One audit record. Optional fields are left out of the JSON line when `None`.
///
/// `user` is a pseudonymous id (`Pseudonymizer::id`), never the raw id; `excerpt` is bounded and
/// already PII-masked (`excerpt()`); content itself is kept only as `content_sha256`.
/// Build one with [`Record::decision`], [`Record::delivery`], [`Record::erasure`] or
/// [`Record::admin`] and fill the rest with struct update syntax
/// (`Record { model: Some(m), ..Record::delivery(id) }`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// When the record was made: RFC 3339, UTC, milliseconds (`2025-07-01T08:00:00.123Z`).
    #[serde(with = "ts_millis")]
    pub ts: DateTime<Utc>,
    pub kind: RecordKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// GB 45438 `ProduceID` of the generated content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_id: Option<String>,
    /// Route template (`/v1/chat/completions`), not the raw path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dialect: Option<String>,
    /// Upstream model name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Pseudonymous user id (`u-` + 32 hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<Direction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detector: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<Action>,
    /// Hash of the compiled policy that decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_version: Option<String>,
    /// Id of the matched term in its list (the term itself may also be here; never in responses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term_id: Option<String>,
    /// Bounded, PII-masked window around the match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub excerpt: Option<String>,
    /// Lowercase hex SHA-256 of the judged content ([`sha256_hex`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_sha256: Option<String>,
    /// Labels applied: `explicit+implicit`, `implicit_only:json_mode`, `unlabeled:url_image`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_status: Option<u16>,
    /// Whole request, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Upstream part of the request, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_ms: Option<u64>,
    /// True when a stream was stopped mid-generation (Art. 14). Left out when false.
    #[serde(default, skip_serializing_if = "is_false")]
    pub stopped: bool,
    /// True when the request was a minor's (`enforce.minors.header`): the categories' `minors`
    /// actions applied. Left out when false.
    #[serde(default, skip_serializing_if = "is_false")]
    pub minor: bool,
    /// The whole judged text, PII-masked: only for categories configured with `evidence: full`
    /// (at most `EVIDENCE_MAX_CHARS` characters are kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<String>,
    /// Free short text (at most 256 characters are kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Record {
    /// An empty record of `kind`, stamped now.
    pub fn new(kind: RecordKind) -> Self {
        Self {
            ts: Utc::now(),
            kind,
            request_id: None,
            content_id: None,
            route: None,
            dialect: None,
            model: None,
            user: None,
            tenant: None,
            direction: None,
            category: None,
            detector: None,
            action: None,
            policy_version: None,
            term_id: None,
            excerpt: None,
            content_sha256: None,
            label: None,
            upstream_status: None,
            duration_ms: None,
            upstream_ms: None,
            stopped: false,
            minor: false,
            evidence: None,
            detail: None,
        }
    }

    /// A moderation decision on one request.
    pub fn decision(
        request_id: impl Into<String>,
        direction: Direction,
        category: impl Into<String>,
        action: Action,
    ) -> Self {
        Self {
            request_id: Some(request_id.into()),
            direction: Some(direction),
            category: Some(category.into()),
            action: Some(action),
            ..Self::new(RecordKind::Decision)
        }
    }

    /// A delivery of generated content for one request.
    pub fn delivery(request_id: impl Into<String>) -> Self {
        Self {
            request_id: Some(request_id.into()),
            ..Self::new(RecordKind::Delivery)
        }
    }

    /// An action on a user (`enforce`) caused by request `request_id`; `detail` says what was
    /// done.
    pub fn sanction(request_id: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            request_id: Some(request_id.into()),
            detail: Some(detail.into()),
            ..Self::new(RecordKind::Sanction)
        }
    }

    /// The erasure of a user's records; `user` is the pseudonymous id.
    pub fn erasure(user: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            user: Some(user.into()),
            detail: Some(detail.into()),
            ..Self::new(RecordKind::Erasure)
        }
    }

    /// An administrative action.
    pub fn admin(detail: impl Into<String>) -> Self {
        Self {
            detail: Some(detail.into()),
            ..Self::new(RecordKind::Admin)
        }
    }

    /// Sets `content_sha256` from the judged text.
    pub fn with_content(mut self, text: &str) -> Self {
        self.content_sha256 = Some(sha256_hex(text.as_bytes()));
        self
    }

    /// Cuts every free-text field to its bound (ids to 128 characters, `detail` to 256, `excerpt`
    /// to `excerpt_max`), marking a cut with `…`. The writer applies this to every record, so a
    /// caller's mistake cannot put a whole prompt into the audit files.
    pub fn bounded(mut self, excerpt_max: usize) -> Self {
        for field in [
            &mut self.request_id,
            &mut self.content_id,
            &mut self.route,
            &mut self.dialect,
            &mut self.model,
            &mut self.user,
            &mut self.tenant,
            &mut self.category,
            &mut self.detector,
            &mut self.policy_version,
            &mut self.term_id,
            &mut self.content_sha256,
            &mut self.label,
        ] {
            cap(field, ID_MAX_CHARS);
        }
        cap(&mut self.detail, DETAIL_MAX_CHARS);
        cap(&mut self.excerpt, excerpt_max);
        cap(&mut self.evidence, EVIDENCE_MAX_CHARS);
        self
    }

    /// The record as one JSON line, newline included: the bytes `serde_json::to_string` makes of
    /// it (a test holds the two equal), written directly because a line is written for every
    /// moderated request and serde_json escapes its strings a byte at a time (`json_str`).
    pub fn to_line(&self) -> String {
        let mut line = String::with_capacity(512);
        line.push_str("{\"ts\":\"");
        push_ts(&mut line, &self.ts);
        line.push_str("\",\"kind\":\"");
        line.push_str(self.kind.as_str());
        line.push('"');
        let key = |line: &mut String, key: &str| {
            line.push_str(",\"");
            line.push_str(key);
            line.push_str("\":");
        };
        let text = |line: &mut String, name: &str, value: Option<&str>| {
            if let Some(v) = value {
                key(line, name);
                push_quoted(line, v);
            }
        };
        let number = |line: &mut String, name: &str, value: Option<u64>| {
            if let Some(n) = value {
                key(line, name);
                line.push_str(itoa::Buffer::new().format(n));
            }
        };
        text(&mut line, "request_id", self.request_id.as_deref());
        text(&mut line, "content_id", self.content_id.as_deref());
        text(&mut line, "route", self.route.as_deref());
        text(&mut line, "dialect", self.dialect.as_deref());
        text(&mut line, "model", self.model.as_deref());
        text(&mut line, "user", self.user.as_deref());
        text(&mut line, "tenant", self.tenant.as_deref());
        text(
            &mut line,
            "direction",
            self.direction.map(Direction::as_str),
        );
        text(&mut line, "category", self.category.as_deref());
        text(&mut line, "detector", self.detector.as_deref());
        text(&mut line, "action", self.action.map(Action::as_str));
        text(&mut line, "policy_version", self.policy_version.as_deref());
        text(&mut line, "term_id", self.term_id.as_deref());
        text(&mut line, "excerpt", self.excerpt.as_deref());
        text(&mut line, "content_sha256", self.content_sha256.as_deref());
        text(&mut line, "label", self.label.as_deref());
        number(
            &mut line,
            "upstream_status",
            self.upstream_status.map(u64::from),
        );
        number(&mut line, "duration_ms", self.duration_ms);
        number(&mut line, "upstream_ms", self.upstream_ms);
        if self.stopped {
            line.push_str(",\"stopped\":true");
        }
        if self.minor {
            line.push_str(",\"minor\":true");
        }
        text(&mut line, "evidence", self.evidence.as_deref());
        text(&mut line, "detail", self.detail.as_deref());
        line.push_str("}\n");
        line
    }
}

/// `ts` as [`format_ts`] gives it, without its formatting machinery for the years 0–9999
/// (chrono's own for any other, and for a leap second).
fn push_ts(out: &mut String, ts: &DateTime<Utc>) {
    let (year, nanos) = (ts.year(), ts.nanosecond());
    if !(0..=9999).contains(&year) || nanos >= 1_000_000_000 {
        out.push_str(&format_ts(ts));
        return;
    }
    // `year` is within 0..=9999 here.
    for (n, width, then) in [
        (year.unsigned_abs(), 4, '-'),
        (ts.month(), 2, '-'),
        (ts.day(), 2, 'T'),
        (ts.hour(), 2, ':'),
        (ts.minute(), 2, ':'),
        (ts.second(), 2, '.'),
        (nanos / 1_000_000, 3, 'Z'),
    ] {
        let mut buf = itoa::Buffer::new();
        let digits = buf.format(n);
        for _ in digits.len()..width {
            out.push('0');
        }
        out.push_str(digits);
        out.push(then);
    }
}

/// Cuts `field` to at most `max` characters, the last of which is `…` when cut.
fn cap(field: &mut Option<String>, max: usize) {
    if let Some(s) = field {
        // No more bytes than `max` means no more characters: most fields need no count.
        if s.len() > max && s.chars().nth(max).is_some() {
            if max == 0 {
                s.clear();
                return;
            }
            let cut = s.char_indices().nth(max - 1).map_or(s.len(), |(i, _)| i);
            s.truncate(cut);
            s.push(CUT);
        }
    }
}

/// Lowercase hex SHA-256 of `bytes`, for `content_sha256`.
/// Longest `evidence` kept: a long answer, not an unbounded one.
pub const EVIDENCE_MAX_CHARS: usize = 32_768;

pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut out = String::with_capacity(64);
    push_hex(&mut out, &digest);
    out
}

/// `ts` as RFC 3339 in UTC with milliseconds; any RFC 3339 offset is accepted when reading.
mod ts_millis {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(ts: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&ts.to_rfc3339_opts(SecondsFormat::Millis, true))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }
}

/// `ts` formatted as in the record (for logs and tests).
pub fn format_ts(ts: &DateTime<Utc>) -> String {
    ts.to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at_noon() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 7, 1, 12, 0, 0).unwrap() + chrono::Duration::milliseconds(7)
    }

    #[test]
    fn a_decision_is_one_compact_json_line() {
        let rec = Record {
            ts: at_noon(),
            user: Some("u-0123456789abcdef0123456789abcdef".into()),
            policy_version: Some("p1".into()),
            stopped: true,
            upstream_status: Some(200),
            ..Record::decision("req-1", Direction::Completion, "A1d", Action::Block)
        };
        let line = rec.to_line();
        assert_eq!(
            line,
            "{\"ts\":\"2025-07-01T12:00:00.007Z\",\"kind\":\"decision\",\"request_id\":\"req-1\",\
             \"user\":\"u-0123456789abcdef0123456789abcdef\",\"direction\":\"completion\",\
             \"category\":\"A1d\",\"action\":\"block\",\"policy_version\":\"p1\",\
             \"upstream_status\":200,\"stopped\":true}\n"
        );
        let back: Record = serde_json::from_str(&line).unwrap();
        assert_eq!(back, rec);
    }

    /// Every field set (a struct literal without `..`: a new field fails to compile here until
    /// it is given a value, and then `to_line` must write it as serde does).
    fn full(ts: DateTime<Utc>, text: &str, n: u64, kind: RecordKind, action: Action) -> Record {
        let s = |k: &str| Some(format!("{k}{text}"));
        Record {
            ts,
            kind,
            request_id: s("r"),
            content_id: s("c"),
            route: s("/v1/"),
            dialect: s("d"),
            model: s("m"),
            user: s("u"),
            tenant: s("t"),
            direction: Some(if n % 2 == 0 {
                Direction::Prompt
            } else {
                Direction::Completion
            }),
            category: s("A1"),
            detector: s("pii"),
            action: Some(action),
            policy_version: s("p"),
            term_id: s("1"),
            excerpt: s("e"),
            content_sha256: s("0f"),
            label: s("l"),
            upstream_status: Some((n % 600) as u16),
            duration_ms: Some(n),
            upstream_ms: Some(n / 3),
            stopped: n % 3 != 0,
            minor: n % 4 == 1,
            evidence: s("ev"),
            detail: s("dt"),
        }
    }

    fn serde_line(rec: &Record) -> String {
        serde_json::to_string(rec).unwrap() + "\n"
    }

    #[test]
    fn the_line_is_what_serde_writes() {
        let kinds = [
            RecordKind::Decision,
            RecordKind::Delivery,
            RecordKind::Erasure,
            RecordKind::Admin,
        ];
        let actions = [Action::Block, Action::Redact, Action::Flag, Action::Pass];
        for (i, (kind, action)) in kinds.into_iter().zip(actions).enumerate() {
            let rec = full(
                at_noon(),
                "\"\\\n\u{1}中文 😀",
                i as u64 * 7 + 1,
                kind,
                action,
            );
            assert_eq!(rec.to_line(), serde_line(&rec));
            for empty in [Record::new(kind), Record::delivery("r")] {
                assert_eq!(empty.to_line(), serde_line(&empty));
            }
        }
        // Timestamps chrono writes its own way: years past 9999 or before 0, a leap second.
        let leap = chrono::NaiveDate::from_ymd_opt(2016, 12, 31)
            .unwrap()
            .and_hms_milli_opt(23, 59, 59, 1_500)
            .unwrap()
            .and_utc();
        for ts in [
            Utc.with_ymd_and_hms(10_000, 1, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(-1, 12, 31, 23, 59, 59).unwrap(),
            Utc.with_ymd_and_hms(0, 1, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap()
                + chrono::Duration::milliseconds(999),
            leap,
        ] {
            let rec = Record {
                ts,
                ..Record::admin("x")
            };
            assert_eq!(rec.to_line(), serde_line(&rec), "{ts:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_record_line_is_what_serde_writes(
            ms in -62_167_219_200_000i64..253_402_300_800_000i64,
            text in "\\PC{0,12}|[\"\\\\\\x00-\\x1f a中]{0,12}",
            n in proptest::prelude::any::<u64>(),
            k in 0usize..4,
        ) {
            let kinds = [RecordKind::Decision, RecordKind::Delivery, RecordKind::Erasure, RecordKind::Admin];
            let actions = [Action::Block, Action::Redact, Action::Flag, Action::Pass];
            let ts = DateTime::from_timestamp_millis(ms).unwrap();
            let rec = full(ts, &text, n, kinds[k], actions[k]);
            proptest::prop_assert_eq!(rec.to_line(), serde_line(&rec));
        }
    }

    #[test]
    fn false_stopped_and_none_fields_are_left_out() {
        let rec = Record {
            ts: at_noon(),
            ..Record::delivery("r")
        };
        assert_eq!(
            serde_json::to_string(&rec).unwrap(),
            r#"{"ts":"2025-07-01T12:00:00.007Z","kind":"delivery","request_id":"r"}"#
        );
    }

    #[test]
    fn reading_accepts_offsets_and_unknown_fields() {
        let rec: Record = serde_json::from_str(
            r#"{"ts":"2025-07-01T20:00:00.007+08:00","kind":"admin","future_field":1}"#,
        )
        .unwrap();
        assert_eq!(rec.ts, at_noon());
        assert_eq!(rec.kind, RecordKind::Admin);
    }

    #[test]
    fn bounded_cuts_long_fields() {
        let rec = Record {
            excerpt: Some("e".repeat(500)),
            model: Some("m".repeat(500)),
            ..Record::admin("d".repeat(5000))
        }
        .bounded(10);
        assert_eq!(rec.excerpt.as_deref().map(|s| s.chars().count()), Some(10));
        assert!(rec.excerpt.as_deref().unwrap().ends_with(CUT));
        assert_eq!(rec.model.unwrap().chars().count(), ID_MAX_CHARS);
        assert_eq!(rec.detail.unwrap().chars().count(), DETAIL_MAX_CHARS);
        let short = Record::admin("short").bounded(0);
        assert_eq!(short.detail.as_deref(), Some("short"));
        let zero = Record {
            excerpt: Some("abc".into()),
            ..Record::admin("x")
        }
        .bounded(0);
        assert_eq!(zero.excerpt.as_deref(), Some(""));
    }

    #[test]
    fn content_hash_is_sha256() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let rec = Record::delivery("r").with_content("abc");
        assert_eq!(
            rec.content_sha256.as_deref(),
            Some(sha256_hex(b"abc").as_str())
        );
    }

    #[test]
    fn format_ts_matches_the_line() {
        assert_eq!(format_ts(&at_noon()), "2025-07-01T12:00:00.007Z");
    }
}
