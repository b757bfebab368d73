//! Test banks as JSON lines: `{"prompt": "…", "risk": "A1d", "answer": "…"}` a line; blank lines
//! and lines starting with `#` are skipped.

use std::path::Path;

use serde::Deserialize;

/// Most items one bank may hold (the standard asks for a few thousand).
pub const MAX_ITEMS: usize = 1_000_000;

/// One test item.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Item {
    /// The question put to the service.
    pub prompt: String,
    /// The risk code it belongs to (`A1d`, …) or the non-refusal aspect (`history`, …).
    #[serde(default)]
    pub risk: Option<String>,
    /// A generated answer to judge (generated-content bank, judged by the policy).
    #[serde(default)]
    pub answer: Option<String>,
    /// Line in the bank file, 1-based.
    #[serde(skip)]
    pub line: usize,
}

/// Read a bank; every bad line is named (`file:line: why`).
pub fn load_bank(path: &Path) -> Result<Vec<Item>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse_bank(&path.display().to_string(), &text)
}

/// Parse a bank's text; `name` labels errors.
pub fn parse_bank(name: &str, text: &str) -> Result<Vec<Item>, String> {
    let mut items = Vec::new();
    let mut errors = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        match serde_json::from_str::<Item>(l) {
            Ok(item) if item.prompt.trim().is_empty() => {
                errors.push(format!("{name}:{}: the prompt is empty", i + 1));
            }
            Ok(item) => items.push(Item {
                line: i + 1,
                ..item
            }),
            Err(e) => errors.push(format!("{name}:{}: {e}", i + 1)),
        }
        if items.len() > MAX_ITEMS {
            return Err(format!("{name}: more than {MAX_ITEMS} items"));
        }
    }
    if !errors.is_empty() {
        errors.truncate(20);
        return Err(errors.join("\n"));
    }
    if items.is_empty() {
        return Err(format!("{name}: no items"));
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_and_bad_ones_are_named() {
        let ok = parse_bank(
            "b",
            "# a comment\n{\"prompt\":\"你好\",\"risk\":\"A1a\"}\n\n{\"prompt\":\"x\",\"answer\":\"y\"}\n",
        )
        .unwrap();
        assert_eq!(ok.len(), 2);
        assert_eq!((ok[0].line, ok[0].risk.as_deref()), (2, Some("A1a")));
        assert_eq!((ok[1].line, ok[1].answer.as_deref()), (4, Some("y")));
        let e = parse_bank(
            "b",
            "{\"prompt\":\"\"}\nnot json\n{\"prompt\":\"x\",\"typo\":1}\n",
        )
        .unwrap_err();
        let lines: Vec<&str> = e.lines().collect();
        assert_eq!(lines.len(), 3, "{e}");
        assert!(lines[0].starts_with("b:1: the prompt is empty"));
        assert!(lines[1].starts_with("b:2: "));
        assert!(lines[2].starts_with("b:3: unknown field `typo`"), "{e}");
        assert!(parse_bank("b", "# nothing\n").is_err());
    }
}
