//! `${NAME}` expansion inside YAML string values, with `${NAME:-default}` and `$$` for a literal `$`.

use serde_yaml_ng::Value;

use super::ConfigIssue;

/// Expand references in every string value of the tree; keys are left alone.
pub fn expand_tree(
    v: &mut Value,
    path: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    issues: &mut Vec<ConfigIssue>,
) {
    match v {
        Value::String(s) if s.contains('$') => match expand(s, lookup) {
            Ok(out) => *s = out,
            Err(msg) => issues.push(ConfigIssue::new(path, msg)),
        },
        Value::Sequence(seq) => {
            for (i, item) in seq.iter_mut().enumerate() {
                expand_tree(item, &format!("{path}[{i}]"), lookup, issues);
            }
        }
        Value::Mapping(map) => {
            for (k, item) in map.iter_mut() {
                let key = match k {
                    Value::String(s) => s.clone(),
                    other => serde_yaml_ng::to_string(other)
                        .unwrap_or_default()
                        .trim()
                        .to_string(),
                };
                let child = if path.is_empty() {
                    key
                } else {
                    format!("{path}.{key}")
                };
                expand_tree(item, &child, lookup, issues);
            }
        }
        Value::Tagged(t) => expand_tree(&mut t.value, path, lookup, issues),
        _ => {}
    }
}

/// Expand one string. Unset variables without a default are errors naming the variable.
pub fn expand(s: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or_else(|| "unterminated `${` reference".to_string())?;
            let inner = &body[..end];
            let (name, default) = match inner.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (inner, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("`${{{inner}}}` is not a valid variable reference"));
            }
            match (lookup(name), default) {
                (Some(val), _) => out.push_str(&val),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err(format!(
                        "environment variable `{name}` is not set (use `${{{name}:-default}}` for a default)"
                    ))
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(k: &str) -> Option<String> {
        match k {
            "A" => Some("alpha".into()),
            _ => None,
        }
    }

    #[test]
    fn expands_references_defaults_and_escapes() {
        assert_eq!(expand("x-${A}-y", &env).unwrap(), "x-alpha-y");
        assert_eq!(expand("${B:-dflt}", &env).unwrap(), "dflt");
        assert_eq!(expand("$${A}", &env).unwrap(), "${A}");
        assert_eq!(expand("cost $5", &env).unwrap(), "cost $5");
        assert!(expand("${B}", &env).unwrap_err().contains("`B`"));
        assert!(expand("${A", &env).is_err());
        assert!(expand("${a b}", &env).is_err());
    }
}
