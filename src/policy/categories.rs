//! The 31 TC260-003 risk types (Appendix A) as built-in categories, their defaults, and actions.
//!
//! Defaults by group, all overridable per category: A.1 → block, severity 5; A.2 → block, 4;
//! A.3 and A.4 → flag, 3; A.5 → flag, 2; custom ids → flag, 3. Refusal texts are per group.

use std::cmp::Ordering;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::Direction;

/// What shenhe does about a finding. Ordered by strictness: `Block > Redact > Flag`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Refuse the prompt or stop the stream.
    Block,
    /// Replace the matched text with its mask and let the rest through.
    Redact,
    /// Record only.
    Flag,
}

impl Action {
    /// Flag < redact < block.
    pub(crate) fn rank(self) -> u8 {
        match self {
            Action::Flag => 0,
            Action::Redact => 1,
            Action::Block => 2,
        }
    }

    /// Lower-case name, as used in metrics labels and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Block => "block",
            Action::Redact => "redact",
            Action::Flag => "flag",
        }
    }
}

impl PartialOrd for Action {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Action {
    fn cmp(&self, other: &Self) -> Ordering {
        self.rank().cmp(&other.rank())
    }
}

/// Which side of the exchange a category is checked on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AppliesTo {
    Prompt,
    Completion,
    #[default]
    Both,
}

impl AppliesTo {
    pub fn includes(self, dir: Direction) -> bool {
        matches!(
            (self, dir),
            (AppliesTo::Both, _)
                | (AppliesTo::Prompt, Direction::Prompt)
                | (AppliesTo::Completion, Direction::Completion)
        )
    }
}

/// What an audit record keeps of the matched text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Evidence {
    /// A short excerpt around the match.
    #[default]
    Excerpt,
    /// The whole text.
    Full,
}

/// A compiled category: identity, display names, and what to do about it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Category {
    #[serde(serialize_with = "super::finding::ser_arc_str")]
    pub id: Arc<str>,
    pub name_zh: String,
    pub name_en: String,
    /// `"A.1"`…`"A.5"` for built-ins, `"custom"` otherwise.
    pub group: String,
    pub action: Action,
    /// 1 (lowest) to 5.
    pub severity: u8,
    pub applies_to: AppliesTo,
    pub refusal_zh: String,
    pub refusal_en: String,
    pub evidence: Evidence,
    /// Redaction text override (same shape as `redaction.keyword_mask`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mask: Option<String>,
    /// Latin terms match only as whole words (`CategoryConfig::whole_words`). Left out of the
    /// serialized form when off, so policies without it keep their version hash.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub whole_words: bool,
    /// The action for minors' requests (`CategoryConfig::minors`), when it differs. Left out of
    /// the serialized form when unset, so policies without it keep their version hash.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub minors: Option<Action>,
}

impl Category {
    /// What a finding of this category does on a `minor`'s request, or anyone's.
    pub fn action_for(&self, minor: bool) -> Action {
        match self.minors {
            Some(a) if minor => a,
            _ => self.action,
        }
    }

    /// Whether this is one of the 31 TC260-003 types.
    pub fn is_builtin(&self) -> bool {
        self.group != GROUP_CUSTOM
    }
}

pub(crate) const GROUP_CUSTOM: &str = "custom";

/// One row of TC260-003 Appendix A.
pub(crate) struct Builtin {
    pub id: &'static str,
    pub group: &'static str,
    pub name_zh: &'static str,
    pub name_en: &'static str,
}

macro_rules! b {
    ($id:literal, $g:literal, $zh:literal, $en:literal) => {
        Builtin {
            id: $id,
            group: $g,
            name_zh: $zh,
            name_en: $en,
        }
    };
}

/// The 31 risk types: 8 + 9 + 5 + 7 + 2 (STANDARDS.md §1).
pub(crate) const BUILTINS: [Builtin; 31] = [
    b!("A1a", "A.1", "煽动颠覆国家政权、推翻社会主义制度", "Inciting subversion of state power or overthrow of the socialist system"),
    b!("A1b", "A.1", "危害国家安全和利益、损害国家形象", "Endangering national security and interests; harming the national image"),
    b!("A1c", "A.1", "煽动分裂国家、破坏国家统一和社会稳定", "Inciting secession; undermining national unity and social stability"),
    b!("A1d", "A.1", "宣扬恐怖主义、极端主义", "Promoting terrorism or extremism"),
    b!("A1e", "A.1", "宣扬民族仇恨", "Promoting ethnic hatred"),
    b!("A1f", "A.1", "宣扬暴力、淫秽色情", "Promoting violence, obscenity or pornography"),
    b!("A1g", "A.1", "传播虚假有害信息", "Spreading false and harmful information"),
    b!("A1h", "A.1", "其他法律、行政法规禁止的内容", "Other content prohibited by laws and administrative regulations"),
    b!("A2a", "A.2", "民族歧视内容", "Discrimination by ethnicity"),
    b!("A2b", "A.2", "信仰歧视内容", "Discrimination by belief"),
    b!("A2c", "A.2", "国别歧视内容", "Discrimination by nationality"),
    b!("A2d", "A.2", "地域歧视内容", "Discrimination by region"),
    b!("A2e", "A.2", "性别歧视内容", "Discrimination by gender"),
    b!("A2f", "A.2", "年龄歧视内容", "Discrimination by age"),
    b!("A2g", "A.2", "职业歧视内容", "Discrimination by occupation"),
    b!("A2h", "A.2", "健康歧视内容", "Discrimination by health"),
    b!("A2i", "A.2", "其他方面歧视内容", "Discrimination in other respects"),
    b!("A3a", "A.3", "侵犯他人知识产权", "Infringing others' intellectual property"),
    b!("A3b", "A.3", "违反商业道德", "Violating business ethics"),
    b!("A3c", "A.3", "泄露他人商业秘密", "Disclosing others' trade secrets"),
    b!("A3d", "A.3", "利用算法、数据、平台等优势，实施垄断和不正当竞争行为", "Using advantages in algorithms, data or platforms for monopoly or unfair competition"),
    b!("A3e", "A.3", "其他商业违法违规行为", "Other commercial violations"),
    b!("A4a", "A.4", "危害他人身心健康", "Endangering others' physical or mental health"),
    b!("A4b", "A.4", "侵害他人肖像权", "Infringing portrait rights"),
    b!("A4c", "A.4", "侵害他人名誉权", "Infringing reputation rights"),
    b!("A4d", "A.4", "侵害他人荣誉权", "Infringing honour rights"),
    b!("A4e", "A.4", "侵害他人隐私权", "Infringing privacy"),
    b!("A4f", "A.4", "侵害他人个人信息权益", "Infringing personal-information rights"),
    b!("A4g", "A.4", "侵犯他人其他合法权益", "Infringing other lawful rights"),
    b!("A5a", "A.5", "内容不准确，严重不符合科学常识或主流认知", "Inaccurate content that seriously contradicts scientific common sense or mainstream understanding"),
    b!("A5b", "A.5", "内容不可靠，无法对使用者形成帮助", "Unreliable content that gives the user no real help"),
];

/// The built-in row for `id`, if it is one of the 31.
pub(crate) fn builtin(id: &str) -> Option<&'static Builtin> {
    BUILTINS.iter().find(|b| b.id == id)
}

/// Default action and severity of a group.
pub(crate) fn group_defaults(group: &str) -> (Action, u8) {
    match group {
        "A.1" => (Action::Block, 5),
        "A.2" => (Action::Block, 4),
        "A.3" | "A.4" => (Action::Flag, 3),
        "A.5" => (Action::Flag, 2),
        _ => (Action::Flag, 3),
    }
}

/// Default refusal (zh, en) of a group.
pub(crate) fn group_refusal(group: &str) -> (&'static str, &'static str) {
    match group {
        "A.1" => (
            "抱歉，该请求涉及违反法律法规的内容，无法提供帮助。",
            "Sorry, this request involves content prohibited by laws and regulations, so I can't help with it.",
        ),
        "A.2" => (
            "抱歉，该请求涉及歧视性内容，无法提供帮助。",
            "Sorry, this request involves discriminatory content, so I can't help with it.",
        ),
        "A.3" => (
            "抱歉，该请求可能涉及商业违法违规行为，无法提供帮助。",
            "Sorry, this request may involve a commercial violation, so I can't help with it.",
        ),
        "A.4" => (
            "抱歉，该请求可能侵犯他人合法权益，无法提供帮助。",
            "Sorry, this request may infringe the lawful rights of others, so I can't help with it.",
        ),
        "A.5" => (
            "抱歉，暂时无法就该问题提供可靠的回答。",
            "Sorry, I can't give a reliable answer to this question.",
        ),
        _ => (
            "抱歉，该请求不符合服务使用规范，无法提供帮助。",
            "Sorry, this request does not comply with the service's usage rules, so I can't help with it.",
        ),
    }
}

/// Whether `id` is a syntactically valid custom category id: `[A-Za-z0-9_-]{1,64}`.
pub(crate) fn valid_custom_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A built-in category with its group defaults.
pub(crate) fn default_category(b: &Builtin) -> Category {
    let (action, severity) = group_defaults(b.group);
    let (rz, re) = group_refusal(b.group);
    Category {
        id: Arc::from(b.id),
        name_zh: b.name_zh.to_owned(),
        name_en: b.name_en.to_owned(),
        group: b.group.to_owned(),
        action,
        severity,
        applies_to: AppliesTo::Both,
        refusal_zh: rz.to_owned(),
        refusal_en: re.to_owned(),
        evidence: Evidence::Excerpt,
        mask: None,
        whole_words: false,
        minors: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thirty_one_types_in_five_groups() {
        assert_eq!(BUILTINS.len(), 31);
        let count = |g: &str| BUILTINS.iter().filter(|b| b.group == g).count();
        assert_eq!(
            [
                count("A.1"),
                count("A.2"),
                count("A.3"),
                count("A.4"),
                count("A.5")
            ],
            [8, 9, 5, 7, 2]
        );
        for b in &BUILTINS {
            assert!(valid_custom_id(b.id));
            assert_eq!(&b.id[..2], &b.group.replace('.', "")[..2]);
        }
    }

    #[test]
    fn action_order_is_by_strictness() {
        assert!(Action::Block > Action::Redact);
        assert!(Action::Redact > Action::Flag);
        assert_eq!(
            [Action::Flag, Action::Block, Action::Redact].iter().max(),
            Some(&Action::Block)
        );
        assert_eq!(
            serde_json::to_string(&Action::Redact).ok().as_deref(),
            Some("\"redact\"")
        );
    }

    #[test]
    fn custom_ids() {
        assert!(valid_custom_id("pii-phone"));
        assert!(valid_custom_id("my_regex_2"));
        assert!(!valid_custom_id(""));
        assert!(!valid_custom_id("has space"));
        assert!(!valid_custom_id(&"x".repeat(65)));
        assert!(!valid_custom_id("中文"));
    }

    #[test]
    fn applies_to_directions() {
        assert!(AppliesTo::Both.includes(Direction::Prompt));
        assert!(AppliesTo::Prompt.includes(Direction::Prompt));
        assert!(!AppliesTo::Prompt.includes(Direction::Completion));
        assert!(AppliesTo::Completion.includes(Direction::Completion));
    }
}
