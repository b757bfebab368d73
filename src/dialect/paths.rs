//! Dotted field patterns over JSON (`messages.*.content`): find the strings a dialect moderates
//! and write rewritten text back to exactly the same place.

use serde_json::Value;

/// One step of a concrete path into a JSON value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// A pattern step: a key, or `*` for every element of an array.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pat {
    Key(String),
    Any,
}

/// Keys of the prompt fields in the order a model reads them where they are siblings: the
/// instructions before the conversation, a message's name and text before what it calls.
const READING_ORDER: &[&str] = &[
    "instructions",
    "system",
    "prompt",
    "input",
    "messages",
    "name",
    "content",
    "text",
    "thinking",
    "summary",
    "reasoning_content",
    "refusal",
    "output",
    "tool_calls",
    "function_call",
    "function",
    "arguments",
];

fn reading_rank(key: &str) -> u32 {
    READING_ORDER
        .iter()
        .position(|k| *k == key)
        .map_or(u32::MAX, |i| i as u32)
}

/// A prompt text's place in reading order, from its path, one step at a time: texts compare by
/// it (`Iterator::cmp`) as the model reads them (array elements in order, sibling keys by
/// `READING_ORDER`), whichever way the body was read. [`reading_steps`] gives the same key
/// from a pattern.
pub fn reading_key(path: &[Seg]) -> impl Iterator<Item = u32> + '_ {
    path.iter().map(|s| match s {
        Seg::Key(k) => reading_rank(k),
        Seg::Index(i) => u32::try_from(*i).unwrap_or(u32::MAX),
    })
}

/// [`reading_key`] of the string a pattern matched, its `*` steps standing for `stars[0]`,
/// `stars[1]`, ….
pub fn reading_steps<'p>(pattern: &'p [Pat], stars: &'p [u32]) -> impl Iterator<Item = u32> + 'p {
    let mut star = stars.iter();
    pattern.iter().map(move |p| match p {
        Pat::Key(name) => reading_rank(name),
        Pat::Any => star.next().copied().unwrap_or(0),
    })
}

/// Parse `a.*.b` into pattern steps. Empty segments are rejected.
pub fn parse_pattern(s: &str) -> Result<Vec<Pat>, String> {
    if s.is_empty() {
        return Err("empty field path".into());
    }
    s.split('.')
        .map(|seg| match seg {
            "" => Err(format!("`{s}` has an empty segment")),
            "*" => Ok(Pat::Any),
            k => Ok(Pat::Key(k.to_string())),
        })
        .collect()
}

/// A dialect's fixed list of patterns, parsed once on first use.
pub struct StaticPatterns {
    list: &'static [&'static str],
    prefix: &'static str,
    parsed: std::sync::OnceLock<Vec<Vec<Pat>>>,
}

impl StaticPatterns {
    /// `prefix` (may be empty) goes before every pattern of `list`.
    pub const fn new(list: &'static [&'static str], prefix: &'static str) -> Self {
        Self {
            list,
            prefix,
            parsed: std::sync::OnceLock::new(),
        }
    }

    /// The patterns, parsed.
    pub fn parsed(&self) -> &[Vec<Pat>] {
        self.parsed.get_or_init(|| {
            self.list
                .iter()
                .map(|p| parse_pattern(&format!("{}{p}", self.prefix)).expect("static pattern"))
                .collect()
        })
    }

    /// Every string at any of the patterns, pattern by pattern, each in document order.
    pub fn find(&self, v: &Value, out: &mut Vec<Found>) {
        for pattern in self.parsed() {
            find_strings(v, pattern, out);
        }
    }
}

/// A string found in a JSON value, with its concrete path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub path: Vec<Seg>,
    pub text: String,
}

/// Every string at `pattern` in `v`, in document order. Non-string leaves are skipped.
pub fn find_strings(v: &Value, pattern: &[Pat], out: &mut Vec<Found>) {
    let mut path = Vec::new();
    walk(v, pattern, &mut path, out);
}

/// A step of the path being walked, borrowed from the pattern: owned segments are made only
/// for the strings found (a walk passes many keys that lead nowhere).
#[derive(Clone, Copy)]
enum Step<'p> {
    Key(&'p str),
    Index(usize),
}

fn walk<'p>(v: &Value, pattern: &'p [Pat], path: &mut Vec<Step<'p>>, out: &mut Vec<Found>) {
    let Some((head, rest)) = pattern.split_first() else {
        if let Value::String(s) = v {
            out.push(Found {
                path: path
                    .iter()
                    .map(|step| match *step {
                        Step::Key(k) => Seg::Key(k.to_string()),
                        Step::Index(i) => Seg::Index(i),
                    })
                    .collect(),
                text: s.clone(),
            });
        }
        return;
    };
    match (head, v) {
        (Pat::Key(k), Value::Object(m)) => {
            if let Some(child) = m.get(k) {
                path.push(Step::Key(k));
                walk(child, rest, path, out);
                path.pop();
            }
        }
        (Pat::Any, Value::Array(a)) => {
            for (i, child) in a.iter().enumerate() {
                path.push(Step::Index(i));
                walk(child, rest, path, out);
                path.pop();
            }
        }
        _ => {}
    }
}

pub fn get<'a>(v: &'a Value, path: &[Seg]) -> Option<&'a Value> {
    path.iter().try_fold(v, |cur, seg| match seg {
        Seg::Key(k) => cur.get(k.as_str()),
        Seg::Index(i) => cur.get(*i),
    })
}

/// The value at a concrete path, mutably.
pub fn get_mut<'a>(v: &'a mut Value, path: &[Seg]) -> Option<&'a mut Value> {
    path.iter().try_fold(v, |cur, seg| match seg {
        Seg::Key(k) => cur.get_mut(k.as_str()),
        Seg::Index(i) => cur.get_mut(*i),
    })
}

/// Replace the string at `path`; returns false when the path does not lead to a string.
pub fn set_string(v: &mut Value, path: &[Seg], text: String) -> bool {
    match get_mut(v, path) {
        Some(slot @ Value::String(_)) => {
            *slot = Value::String(text);
            true
        }
        _ => false,
    }
}

/// Render a path for messages and audit records: `messages[2].content`.
pub fn display(path: &[Seg]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn finds_strings_through_arrays_and_writes_back() {
        let mut v = json!({"messages": [
            {"role": "user", "content": "a"},
            {"role": "user", "content": [{"type": "text", "text": "b"}, {"type": "image_url"}]},
        ]});
        let mut out = Vec::new();
        find_strings(&v, &parse_pattern("messages.*.content").unwrap(), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].text, "a");
        let mut parts = Vec::new();
        find_strings(
            &v,
            &parse_pattern("messages.*.content.*.text").unwrap(),
            &mut parts,
        );
        assert_eq!(parts[0].text, "b");
        assert_eq!(display(&parts[0].path), "messages[1].content[0].text");
        assert!(set_string(&mut v, &parts[0].path, "B".into()));
        assert_eq!(v["messages"][1]["content"][0]["text"], "B");
    }

    #[test]
    fn bad_patterns_are_rejected() {
        assert!(parse_pattern("").is_err());
        assert!(parse_pattern("a..b").is_err());
    }
}
