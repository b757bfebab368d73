//! The XMP packet that carries `TC260:AIGC` (namespace `http://www.tc260.org.cn/ns/AIGC/1.0/`), built and read.
//!
//! Writing: one minimal packet whose only property is `TC260:AIGC` holding the compact JSON, XML-escaped
//! (the form TC260's practice guide and vendor files use). Reading: a small scanner, not a full XML
//! parser. It finds the prefixes bound to the TC260 namespace, then every `PFX:AIGC` element (text
//! content, CDATA allowed) or `PFX:AIGC="…"` attribute (RDF shorthand), and unescapes the five XML
//! entities and numeric character references. DOCTYPE and ENTITY declarations are refused.

/// The TC260 AIGC namespace URI (STANDARDS R4.6).
pub const TC260_NS: &str = "http://www.tc260.org.cn/ns/AIGC/1.0/";
/// Prefix shenhe writes for [`TC260_NS`].
pub const TC260_PREFIX: &str = "TC260";
/// Property name inside the namespace.
pub const AIGC_PROPERTY: &str = "AIGC";
/// Largest XMP packet read, in bytes. Real packets with an `AIGC` block are under 4 KiB; Photoshop
/// packets with history can reach hundreds of KiB.
pub const MAX_XMP_BYTES: usize = 1024 * 1024;

/// Why an XMP packet could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum XmpError {
    #[error("xmp packet is larger than {MAX_XMP_BYTES} bytes")]
    TooLarge,
    #[error("xmp packet is not utf-8")]
    NotUtf8,
    #[error("xmp packet declares a doctype or entity")]
    Doctype,
    #[error("xmp aigc element is not closed")]
    Unclosed,
    #[error("xmp text has an unknown or bad entity")]
    BadEntity,
    #[error("xmp packet binds the tc260 namespace to more than {MAX_PREFIXES} prefixes")]
    TooManyPrefixes,
}

/// Most prefixes bound to the TC260 namespace that are scanned for; each costs one pass over the
/// packet, so a hostile packet declaring thousands must not multiply the work.
const MAX_PREFIXES: usize = 4;

/// A complete XMP packet holding `aigc_json` as `TC260:AIGC`.
pub fn build_packet(aigc_json: &str) -> String {
    let mut s = String::with_capacity(aigc_json.len() * 2 + 420);
    s.push_str("<?xpacket begin=\"\u{feff}\" id=\"W5M0MpCehiHzreSzNTczkc9d\"?>");
    s.push_str("<x:xmpmeta xmlns:x=\"adobe:ns:meta/\">");
    s.push_str("<rdf:RDF xmlns:rdf=\"http://www.w3.org/1999/02/22-rdf-syntax-ns#\">");
    s.push_str("<rdf:Description rdf:about=\"\" xmlns:");
    s.push_str(TC260_PREFIX);
    s.push_str("=\"");
    s.push_str(TC260_NS);
    s.push_str("\"><");
    s.push_str(TC260_PREFIX);
    s.push(':');
    s.push_str(AIGC_PROPERTY);
    s.push('>');
    escape_into(aigc_json, &mut s);
    s.push_str("</");
    s.push_str(TC260_PREFIX);
    s.push(':');
    s.push_str(AIGC_PROPERTY);
    s.push_str("></rdf:Description></rdf:RDF></x:xmpmeta><?xpacket end=\"w\"?>");
    s
}

fn escape_into(text: &str, out: &mut String) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
}

/// Every `AIGC` value in the TC260 namespace found in `packet`, unescaped, in document order.
pub fn extract_aigc(packet: &[u8]) -> Result<Vec<String>, XmpError> {
    if packet.len() > MAX_XMP_BYTES {
        return Err(XmpError::TooLarge);
    }
    let text = std::str::from_utf8(packet).map_err(|_| XmpError::NotUtf8)?;
    if text.contains("<!DOCTYPE") || text.contains("<!ENTITY") {
        return Err(XmpError::Doctype);
    }
    let mut found: Vec<(usize, String)> = Vec::new();
    let prefixes = tc260_prefixes(text);
    if prefixes.len() > MAX_PREFIXES {
        return Err(XmpError::TooManyPrefixes);
    }
    for prefix in prefixes {
        let qname = format!("{prefix}:{AIGC_PROPERTY}");
        let mut from = 0;
        while let Some(rel) = text[from..].find(&qname) {
            let at = from + rel;
            from = at + qname.len();
            let before = text[..at].chars().next_back();
            let after = &text[at + qname.len()..];
            if before == Some('<') && starts_tag_end(after) {
                // Element form.
                let open_end = after.find('>').ok_or(XmpError::Unclosed)?;
                if after[..open_end].ends_with('/') {
                    found.push((at, String::new()));
                    continue;
                }
                let body = &after[open_end + 1..];
                let close = format!("</{qname}>");
                let end = body.find(&close).ok_or(XmpError::Unclosed)?;
                let raw = &body[..end];
                let value = match raw
                    .trim()
                    .strip_prefix("<![CDATA[")
                    .and_then(|r| r.strip_suffix("]]>"))
                {
                    Some(cdata) => cdata.to_owned(),
                    None => unescape(raw)?,
                };
                found.push((at, value));
            } else if before.is_some_and(char::is_whitespace) {
                // Attribute form: PFX:AIGC = "…"
                let rest = after.trim_start();
                let Some(rest) = rest.strip_prefix('=') else {
                    continue;
                };
                let rest = rest.trim_start();
                let Some(quote) = rest.chars().next().filter(|c| *c == '"' || *c == '\'') else {
                    continue;
                };
                let val = &rest[1..];
                let end = val.find(quote).ok_or(XmpError::Unclosed)?;
                found.push((at, unescape(&val[..end])?));
            }
        }
    }
    found.sort_by_key(|(at, _)| *at);
    Ok(found.into_iter().map(|(_, v)| v).collect())
}

fn starts_tag_end(after: &str) -> bool {
    after
        .chars()
        .next()
        .is_some_and(|c| c == '>' || c == '/' || c.is_whitespace())
}

/// Prefixes bound to [`TC260_NS`] anywhere in the packet (deduplicated).
fn tc260_prefixes(text: &str) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    let mut from = 0;
    while let Some(rel) = text[from..].find("xmlns:") {
        let start = from + rel + "xmlns:".len();
        from = start;
        let rest = &text[start..];
        let Some(eq) = rest.find('=') else { break };
        let prefix = rest[..eq].trim();
        if prefix.is_empty() || prefix.contains(|c: char| c.is_whitespace() || c == '<' || c == '>')
        {
            continue;
        }
        let val = rest[eq + 1..].trim_start();
        let Some(quote) = val.chars().next().filter(|c| *c == '"' || *c == '\'') else {
            continue;
        };
        let Some(end) = val[1..].find(quote) else {
            break;
        };
        if &val[1..1 + end] == TC260_NS && !out.contains(&prefix) {
            out.push(prefix);
        }
    }
    out
}

fn unescape(s: &str) -> Result<String, XmpError> {
    if !s.contains('&') {
        return Ok(s.to_owned());
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp + 1..];
        let semi = after
            .find(';')
            .filter(|&i| i <= 10)
            .ok_or(XmpError::BadEntity)?;
        let name = &after[..semi];
        let c = match name {
            "quot" => '"',
            "amp" => '&',
            "lt" => '<',
            "gt" => '>',
            "apos" => '\'',
            n => {
                let code = if let Some(h) = n.strip_prefix("#x").or_else(|| n.strip_prefix("#X")) {
                    u32::from_str_radix(h, 16).ok()
                } else if let Some(d) = n.strip_prefix('#') {
                    d.parse::<u32>().ok()
                } else {
                    None
                };
                code.and_then(char::from_u32).ok_or(XmpError::BadEntity)?
            }
        };
        out.push(c);
        rest = &after[semi + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const JSON: &str = r#"{"Label":"1","ContentProducer":"a&b<c>"}"#;

    #[test]
    fn build_then_extract() {
        let p = build_packet(JSON);
        assert!(p.contains("&quot;Label&quot;"));
        assert_eq!(extract_aigc(p.as_bytes()), Ok(vec![JSON.to_owned()]));
    }

    #[test]
    fn other_prefix_attribute_and_cdata_forms() {
        let attr = format!(
            "<x:xmpmeta xmlns:x='adobe:ns:meta/'><rdf:Description xmlns:aigc='{TC260_NS}' aigc:AIGC='{{&quot;Label&quot;:&#x22;1&#34;}}'/></x:xmpmeta>"
        );
        assert_eq!(
            extract_aigc(attr.as_bytes()),
            Ok(vec![r#"{"Label":"1"}"#.to_owned()])
        );
        let cdata = format!("<r xmlns:T=\"{TC260_NS}\"><T:AIGC><![CDATA[{JSON}]]></T:AIGC></r>");
        assert_eq!(extract_aigc(cdata.as_bytes()), Ok(vec![JSON.to_owned()]));
    }

    #[test]
    fn two_blocks_are_both_found_and_other_namespaces_ignored() {
        let two = format!(
            "<r xmlns:T=\"{TC260_NS}\" xmlns:O=\"http://example.com/\"><T:AIGC>a</T:AIGC><O:AIGC>x</O:AIGC><T:AIGC>b</T:AIGC></r>"
        );
        assert_eq!(
            extract_aigc(two.as_bytes()),
            Ok(vec!["a".to_owned(), "b".to_owned()])
        );
        assert_eq!(extract_aigc(b"<r><T:AIGC>a</T:AIGC></r>"), Ok(vec![]));
    }

    #[test]
    fn hostile_packets_are_errors() {
        let unclosed = format!("<r xmlns:T=\"{TC260_NS}\"><T:AIGC>abc");
        assert_eq!(extract_aigc(unclosed.as_bytes()), Err(XmpError::Unclosed));
        let bad = format!("<r xmlns:T=\"{TC260_NS}\"><T:AIGC>&bogus;</T:AIGC></r>");
        assert_eq!(extract_aigc(bad.as_bytes()), Err(XmpError::BadEntity));
        assert_eq!(
            extract_aigc(b"<!DOCTYPE x [<!ENTITY a 'b'>]>"),
            Err(XmpError::Doctype)
        );
        assert_eq!(extract_aigc(&[0xff, 0xfe]), Err(XmpError::NotUtf8));
        assert_eq!(
            extract_aigc(&vec![b' '; MAX_XMP_BYTES + 1]),
            Err(XmpError::TooLarge)
        );
        assert_eq!(extract_aigc(b"xmlns:"), Ok(vec![]));
        let many: String = (0..5)
            .map(|i| format!(" xmlns:p{i}=\"{TC260_NS}\""))
            .collect();
        assert_eq!(
            extract_aigc(format!("<r{many}/>").as_bytes()),
            Err(XmpError::TooManyPrefixes)
        );
        assert_eq!(extract_aigc(b"xmlns:a=\"unterminated"), Ok(vec![]));
    }
}
