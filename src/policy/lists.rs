//! Reading keyword and allow-list files: one entry a line, `#` comments, optional TAB category.
//!
//! Problems in a file are returned as messages naming `file:line`; the caller decides whether
//! they are warnings (`strict: false`) or errors. Reading never panics on bad input.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// One usable line of a list file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Row {
    /// 1-based line number.
    pub line: u32,
    pub term: String,
    /// The category after a TAB, if any.
    pub category: Option<String>,
}

/// A parsed list file.
#[derive(Debug, Default)]
pub(crate) struct ListFile {
    pub rows: Vec<Row>,
    /// Bad lines, as `file:line: message`.
    pub issues: Vec<String>,
    pub modified: Option<SystemTime>,
}

/// Resolve `p` against `base_dir` unless it is absolute.
pub(crate) fn resolve(base_dir: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base_dir.join(p)
    }
}

/// Read and parse a list file. `display` is the name used in messages (the path as configured).
/// `with_category`: whether a TAB column is allowed (keyword lists) or not (allow lists).
pub(crate) fn read_list(
    path: &Path,
    display: &str,
    with_category: bool,
) -> Result<ListFile, std::io::Error> {
    let bytes = std::fs::read(path)?;
    let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let mut out = parse_list(&bytes, display, with_category);
    out.modified = modified;
    Ok(out)
}

/// Parse list contents (split out of `read_list` for tests).
pub(crate) fn parse_list(bytes: &[u8], display: &str, with_category: bool) -> ListFile {
    let mut out = ListFile::default();
    let bytes = bytes.strip_prefix("\u{FEFF}".as_bytes()).unwrap_or(bytes);
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let line = u32::try_from(i + 1).unwrap_or(u32::MAX);
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let Ok(text) = std::str::from_utf8(raw) else {
            out.issues
                .push(format!("{display}:{line}: line is not valid utf-8"));
            continue;
        };
        // Trim spaces but not TABs, so `term<TAB>` keeps its (empty) category column.
        let trimmed = text.trim_matches(|c: char| c.is_whitespace() && c != '\t');
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let mut fields = trimmed.split('\t');
        let term = fields.next().unwrap_or("").trim();
        let category = fields.next().map(str::trim);
        if fields.next().is_some() {
            out.issues.push(format!(
                "{display}:{line}: more than two TAB-separated fields"
            ));
            continue;
        }
        if category.is_some() && !with_category {
            out.issues.push(format!(
                "{display}:{line}: allow-list lines take no category column"
            ));
            continue;
        }
        if category == Some("") {
            out.issues
                .push(format!("{display}:{line}: empty category after TAB"));
            continue;
        }
        out.rows.push(Row {
            line,
            term: term.to_owned(),
            category: category.map(str::to_owned),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_terms_comments_and_categories() {
        let src = "# header\n\n炸弹\t A1d \nforbidden word\r\n  # indented comment\nplain\n";
        let f = parse_list(src.as_bytes(), "l.txt", true);
        assert!(f.issues.is_empty(), "{:?}", f.issues);
        assert_eq!(f.rows.len(), 3);
        assert_eq!(
            f.rows[0],
            Row {
                line: 3,
                term: "炸弹".into(),
                category: Some("A1d".into())
            }
        );
        assert_eq!(f.rows[1].term, "forbidden word");
        assert_eq!(f.rows[2].category, None);
    }

    #[test]
    fn bad_lines_name_file_and_line() {
        let mut src = b"ok\n".to_vec();
        src.extend_from_slice(b"bad \xff\xfe utf8\n");
        src.extend_from_slice(b"a\tb\tc\n");
        src.extend_from_slice(b"x\t\n");
        let f = parse_list(&src, "lists/main.txt", true);
        assert_eq!(f.rows.len(), 1);
        assert_eq!(
            f.issues,
            [
                "lists/main.txt:2: line is not valid utf-8",
                "lists/main.txt:3: more than two TAB-separated fields",
                "lists/main.txt:4: empty category after TAB",
            ]
        );
    }

    #[test]
    fn allow_lists_take_no_category() {
        let f = parse_list("炸弹鱼\nx\tA1d\n".as_bytes(), "allow.txt", false);
        assert_eq!(f.rows.len(), 1);
        assert_eq!(f.issues.len(), 1);
    }

    #[test]
    fn missing_file_is_an_io_error() {
        assert!(read_list(Path::new("/nonexistent/shenhe/list.txt"), "x", true).is_err());
    }
}
