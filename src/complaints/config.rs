//! The `complaints:` section of the YAML config: types and their time limits, the store, the
//! published procedure.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::units::HumanDuration;
use crate::config::ConfigIssue;
pub use crate::pg::StoreKind;

/// The `complaints:` section as written in the YAML file.
///
/// ```yaml
/// complaints:
///   enabled: true
///   database_url: "${SHENHE_DATABASE_URL}"
///   types:
///     illegal_content: { sla: "24h", name_zh: "违法和不良信息", name_en: "Illegal or harmful content" }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ComplaintsConfig {
    /// Take complaints and reports at all (Interim Measures Art. 15). Default false: they need a
    /// durable store only the deployment can name.
    pub enabled: bool,
    /// `postgres` (durable, shared by every replica; default) or `memory` (one replica, lost on
    /// restart: for trials only).
    pub store: StoreKind,
    /// The PostgreSQL server with `store: postgres`, as a URL or `key=value` string; a password
    /// belongs in `${ENV}`. No default.
    pub database_url: String,
    /// With `sslmode=require` in `database_url`: a PEM file of CA certificates the server's
    /// certificate may chain to, beside the system's roots (relative to the config file).
    pub database_ca_file: Option<std::path::PathBuf>,
    /// The table complaints live in (created when missing). Default `shenhe_complaints`.
    pub table: String,
    /// Longest wait for the store on one call. Default `2s`.
    pub store_timeout: HumanDuration,
    /// Where end users (through the provider's app) file complaints and read their outcome, on
    /// the public listener; `null` takes complaints through the admin API only. Default
    /// `/shenhe/v1/complaints`.
    pub public_path: Option<String>,
    /// Open complaints one user may have at once. Default 20.
    pub max_open_per_user: u32,
    /// Longest description kept, in characters. Default 2000.
    pub max_description_chars: usize,
    /// Complaint types by id, each with its time limit (the "feedback deadline" Art. 15 has
    /// published). Defaults: `illegal_content` 24h, `ai_label` 7d, `infringement` 7d,
    /// `personal_information` 15d, `other` 7d.
    pub types: BTreeMap<String, ComplaintType>,
    /// The published handling procedure (Art. 15), served at `{public_path}/procedure`. Default:
    /// written from the types and their time limits.
    pub procedure: Option<String>,
    /// The procedure from a file instead (relative to the config file).
    pub procedure_file: Option<PathBuf>,
}

/// One complaint type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComplaintType {
    /// Time from filing to an answer.
    pub sla: HumanDuration,
    pub name_zh: String,
    pub name_en: String,
}

impl ComplaintType {
    fn new(hours: u64, zh: &str, en: &str) -> Self {
        Self {
            sla: HumanDuration::from_secs(hours * 3600),
            name_zh: zh.into(),
            name_en: en.into(),
        }
    }
}

/// The default types: what users of a generative service report, with time limits in line with
/// common practice (a day for illegal content; personal-information requests within 15 days).
pub fn default_types() -> BTreeMap<String, ComplaintType> {
    [
        (
            "illegal_content",
            ComplaintType::new(24, "违法和不良信息", "Illegal or harmful content"),
        ),
        (
            "ai_label",
            ComplaintType::new(
                7 * 24,
                "生成内容标识缺失或错误",
                "Missing or wrong AI-generated label",
            ),
        ),
        (
            "infringement",
            ComplaintType::new(
                7 * 24,
                "侵犯知识产权、肖像权、名誉权等",
                "Infringement of intellectual property, portrait or reputation",
            ),
        ),
        (
            "personal_information",
            ComplaintType::new(15 * 24, "个人信息保护", "Personal information"),
        ),
        ("other", ComplaintType::new(7 * 24, "其他", "Other")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

impl Default for ComplaintsConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            store: StoreKind::Postgres,
            database_url: String::new(),
            database_ca_file: None,
            table: "shenhe_complaints".into(),
            store_timeout: HumanDuration::from_secs(2),
            public_path: Some("/shenhe/v1/complaints".into()),
            max_open_per_user: 20,
            max_description_chars: 2000,
            types: default_types(),
            procedure: None,
            procedure_file: None,
        }
    }
}

/// Longest time limit a type may have.
const MAX_SLA: Duration = Duration::from_secs(366 * 86_400);

/// A type id: what API callers send and metrics label by.
fn is_type_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

impl ComplaintsConfig {
    /// Every problem, each with its YAML path.
    pub fn validate(&self) -> Vec<ConfigIssue> {
        let issue = |p: &str, m: &str| ConfigIssue::new(format!("complaints.{p}"), m);
        let mut out = crate::pg::validate_store(
            "complaints",
            self.enabled,
            self.store,
            &self.database_url,
            &self.table,
            self.store_timeout.get(),
        );
        if let Some(p) = &self.public_path {
            if !p.starts_with('/') || p.ends_with('/') || p.len() > 128 || p.contains("//") {
                out.push(issue(
                    "public_path",
                    "an absolute path without a trailing slash, at most 128 bytes",
                ));
            }
        }
        if self.max_open_per_user == 0 {
            out.push(issue("max_open_per_user", "must be greater than zero"));
        }
        if !(1..=20_000).contains(&self.max_description_chars) {
            out.push(issue(
                "max_description_chars",
                "must be between 1 and 20000",
            ));
        }
        if self.types.is_empty() {
            out.push(issue("types", "at least one complaint type"));
        }
        for (id, t) in &self.types {
            if !is_type_id(id) {
                out.push(issue(
                    &format!("types.{id}"),
                    "a type id is 1-32 of a-z, 0-9, _",
                ));
            }
            if t.sla.get().is_zero() || t.sla.get() > MAX_SLA {
                out.push(issue(
                    &format!("types.{id}.sla"),
                    "must be between 1s and 366d",
                ));
            }
        }
        if self.procedure.is_some() && self.procedure_file.is_some() {
            out.push(issue(
                "procedure",
                "set procedure or procedure_file, not both",
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_settings_are_named_by_path() {
        assert!(ComplaintsConfig::default().validate().is_empty());
        let mut types = default_types();
        types.insert("Bad Type".into(), ComplaintType::new(0, "坏", "bad"));
        let cfg = ComplaintsConfig {
            enabled: true,
            database_url: String::new(),
            table: "drop table x;".into(),
            public_path: Some("complaints/".into()),
            types,
            procedure: Some("p".into()),
            procedure_file: Some("p.txt".into()),
            ..ComplaintsConfig::default()
        };
        let paths: Vec<String> = cfg.validate().into_iter().map(|i| i.path).collect();
        assert_eq!(
            paths,
            [
                "complaints.database_url",
                "complaints.table",
                "complaints.public_path",
                "complaints.types.Bad Type",
                "complaints.types.Bad Type.sla",
                "complaints.procedure",
            ]
        );
    }

    #[test]
    fn a_database_url_is_checked_without_being_echoed() {
        let cfg = ComplaintsConfig {
            enabled: true,
            database_url: "postgres://u:secret@host:notaport/db".into(),
            ..ComplaintsConfig::default()
        };
        let issues = cfg.validate();
        assert_eq!(issues.len(), 1);
        assert!(!issues[0].message.contains("secret"));
        let tls = ComplaintsConfig {
            enabled: true,
            database_url: "postgres://u@host/db?sslmode=require".into(),
            ..ComplaintsConfig::default()
        };
        assert!(tls.validate().is_empty());
        let ok = ComplaintsConfig {
            enabled: true,
            database_url: "postgres://postgres@127.0.0.1:5432/test".into(),
            ..ComplaintsConfig::default()
        };
        assert!(ok.validate().is_empty());
    }
}
