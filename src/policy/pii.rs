//! Built-in personal-information detectors: candidate regex, validator, and mask rule.
//!
//! Each detector runs on the ORIGINAL text (not the normalized form), because separators and
//! punctuation are part of what it recognises. A candidate is the regex's leftmost-first match;
//! it is kept only if the validator accepts it together with the characters just before and
//! after (so a number inside a longer digit run never matches). Every detector's matches are
//! ASCII and at most `max_len` bytes long, which bounds what a stream holds back.

use std::net::Ipv6Addr;

use serde::{Deserialize, Serialize};

/// A built-in detector, as named in `detector:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PiiKind {
    /// 18-character PRC resident id (GB 11643): valid birth date and ISO 7064 MOD 11-2 check.
    CnIdCard,
    /// Mainland mobile number `1[3-9]x xxxx xxxx`, optional `+86`/`0086`/`86`, space or dash
    /// separators.
    CnMobile,
    /// 13–19 digit card number passing the Luhn check, optionally in space/dash groups of 4.
    BankCard,
    Email,
    /// Dotted quad with octets ≤ 255.
    Ipv4,
    /// Anything `std::net::Ipv6Addr` parses, with at least two non-empty groups.
    Ipv6,
}

impl PiiKind {
    pub const ALL: [PiiKind; 6] = [
        PiiKind::CnIdCard,
        PiiKind::CnMobile,
        PiiKind::BankCard,
        PiiKind::Email,
        PiiKind::Ipv4,
        PiiKind::Ipv6,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PiiKind::CnIdCard => "cn_id_card",
            PiiKind::CnMobile => "cn_mobile",
            PiiKind::BankCard => "bank_card",
            PiiKind::Email => "email",
            PiiKind::Ipv4 => "ipv4",
            PiiKind::Ipv6 => "ipv6",
        }
    }

    /// Candidate regex. None of them uses look-around at its end.
    pub(crate) fn regex(self) -> &'static str {
        match self {
            PiiKind::CnIdCard => r"[0-9]{17}[0-9Xx]",
            PiiKind::CnMobile => r"(?:(?:\+|00)?86[ -]?)?1[3-9][0-9](?:[ -]?[0-9]{4}){2}",
            PiiKind::BankCard => r"[0-9]{13,19}|[0-9]{4}(?:[ -][0-9]{4}){2,3}(?:[ -][0-9]{1,4})?",
            PiiKind::Email => {
                r"[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?){1,3}"
            }
            PiiKind::Ipv4 => r"(?:[0-9]{1,3}\.){3}[0-9]{1,3}",
            PiiKind::Ipv6 => r"[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}",
        }
    }

    /// Longest possible match in bytes.
    pub(crate) fn max_len(self) -> usize {
        match self {
            PiiKind::CnIdCard => 18,
            PiiKind::CnMobile => 18,
            PiiKind::BankCard => 24,
            PiiKind::Email => 64 + 1 + 4 * 64,
            PiiKind::Ipv4 => 15,
            PiiKind::Ipv6 => 39,
        }
    }

    /// Bytes that can occur inside a match (all detectors are ASCII-only).
    pub(crate) fn in_alphabet(self, b: u8) -> bool {
        match self {
            PiiKind::CnIdCard => b.is_ascii_digit() || b == b'X' || b == b'x',
            PiiKind::CnMobile => b.is_ascii_digit() || matches!(b, b'+' | b' ' | b'-'),
            PiiKind::BankCard => b.is_ascii_digit() || matches!(b, b' ' | b'-'),
            PiiKind::Email => {
                b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'%' | b'+' | b'-' | b'@')
            }
            PiiKind::Ipv4 => b.is_ascii_digit() || b == b'.',
            PiiKind::Ipv6 => b.is_ascii_hexdigit() || b == b':',
        }
    }

    /// Whether candidate `m` is a real match, given the text before and after it.
    pub(crate) fn validate(self, before: &str, m: &str, after: &str) -> bool {
        let prev = before.chars().next_back();
        let mut next_chars = after.chars();
        let next = next_chars.next();
        let next2 = next_chars.next();
        let digit = |c: Option<char>| c.is_some_and(|c| c.is_ascii_digit());
        match self {
            PiiKind::CnIdCard => {
                !digit(prev) && !next.is_some_and(|c| c.is_ascii_alphanumeric()) && valid_id_card(m)
            }
            PiiKind::CnMobile => !digit(prev) && prev != Some('+') && !digit(next),
            PiiKind::BankCard => {
                let digits: Vec<u8> = m
                    .bytes()
                    .filter(u8::is_ascii_digit)
                    .map(|b| b - b'0')
                    .collect();
                let continues = matches!(next, Some(' ' | '-')) && digit(next2);
                let bounded = !digit(prev) && !digit(next) && !continues;
                bounded && (13..=19).contains(&digits.len()) && luhn(&digits)
            }
            PiiKind::Email => {
                let local = |c: char| c.is_ascii_alphanumeric() || "._%+-".contains(c);
                let tld_ok = m
                    .rsplit('.')
                    .next()
                    .is_some_and(|t| t.len() >= 2 && t.bytes().all(|b| b.is_ascii_alphabetic()));
                !prev.is_some_and(local)
                    && !next.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-' || c == '@')
                    && m.len() <= 254
                    && tld_ok
            }
            PiiKind::Ipv4 => {
                let continues = next == Some('.') && digit(next2);
                let bounded = !prev.is_some_and(|c| c.is_ascii_digit() || c == '.')
                    && !digit(next)
                    && !continues;
                bounded
                    && m.split('.')
                        .all(|o| o.parse::<u16>().is_ok_and(|v| v <= 255))
            }
            PiiKind::Ipv6 => {
                let near =
                    |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == ':');
                !near(prev)
                    && !near(next)
                    && m.split(':').filter(|g| !g.is_empty()).count() >= 2
                    && m.parse::<Ipv6Addr>().is_ok()
            }
        }
    }

    /// Redaction text for a match of this detector.
    pub(crate) fn mask(self, m: &str) -> String {
        match self {
            PiiKind::CnIdCard | PiiKind::BankCard => {
                // Keep the last 4 digits, keep separators.
                let total = m.bytes().filter(u8::is_ascii_alphanumeric).count();
                let mut seen = 0;
                m.chars()
                    .map(|c| {
                        if c.is_ascii_alphanumeric() {
                            seen += 1;
                            if seen + 4 > total {
                                c
                            } else {
                                '*'
                            }
                        } else {
                            c
                        }
                    })
                    .collect()
            }
            PiiKind::CnMobile => {
                // The national number is the last 11 digits: mask its 4th–7th digit, keep separators.
                let total = m.bytes().filter(u8::is_ascii_digit).count();
                let first_national = total.saturating_sub(11);
                let mut seen = 0;
                let mut out = String::with_capacity(m.len());
                for c in m.chars() {
                    if c.is_ascii_digit() {
                        let k = seen - first_national.min(seen);
                        out.push(if seen >= first_national && (3..7).contains(&k) {
                            '*'
                        } else {
                            c
                        });
                        seen += 1;
                    } else {
                        out.push(c);
                    }
                }
                out
            }
            PiiKind::Email => match m.split_once('@') {
                Some((local, domain)) => {
                    let first = local.chars().next().unwrap_or('*');
                    format!("{first}***@{domain}")
                }
                None => "*".repeat(m.chars().count()),
            },
            PiiKind::Ipv4 => match m.rsplit_once('.') {
                Some((head, _)) => format!("{head}.*"),
                None => "*".to_owned(),
            },
            PiiKind::Ipv6 => match m.rsplit_once(':') {
                Some((head, _)) => format!("{head}:*"),
                None => "*".to_owned(),
            },
        }
    }
}

/// GB 11643: 6-digit region, 8-digit birth date, 3-digit sequence, ISO 7064 MOD 11-2 check.
pub(crate) fn valid_id_card(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() != 18 || !b[..17].iter().all(u8::is_ascii_digit) {
        return false;
    }
    let num = |r: std::ops::Range<usize>| -> u32 {
        b[r].iter().fold(0, |acc, d| acc * 10 + u32::from(d - b'0'))
    };
    let (year, month, day) = (num(6..10), num(10..12), num(12..14));
    if !(1900..=2099).contains(&year) || !(1..=12).contains(&month) || day == 0 {
        return false;
    }
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let days = match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    if day > days {
        return false;
    }
    const WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    const CHECK: &[u8; 11] = b"10X98765432";
    let sum: u32 = b[..17]
        .iter()
        .zip(WEIGHTS)
        .map(|(d, w)| u32::from(d - b'0') * w)
        .sum();
    CHECK[(sum % 11) as usize] == b[17].to_ascii_uppercase()
}

/// The Luhn check over digit values.
pub(crate) fn luhn(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let d = u32::from(d);
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 {
                    x - 9
                } else {
                    x
                }
            } else {
                d
            }
        })
        .sum();
    sum % 10 == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run one detector over `text` the one-shot way and return the matched strings.
    fn find(kind: PiiKind, text: &str) -> Vec<String> {
        let re = regex::Regex::new(kind.regex()).expect("builtin regex compiles");
        let mut out = Vec::new();
        let mut at = 0;
        while let Some(m) = re.find_at(text, at) {
            if kind.validate(&text[..m.start()], m.as_str(), &text[m.end()..]) {
                out.push(m.as_str().to_owned());
                at = m.end();
            } else {
                at = m.start() + text[m.start()..].chars().next().map_or(1, char::len_utf8);
            }
        }
        out
    }

    #[test]
    fn id_card_checksum_and_date() {
        assert!(valid_id_card("11010519491231002X"));
        assert!(!valid_id_card("110105194912310029"));
        assert!(!valid_id_card("11010519491332002X"), "month 13");
        assert!(
            !valid_id_card("440308199902290018"),
            "1999-02-29 is not a date"
        );
        assert_eq!(
            find(PiiKind::CnIdCard, "身份证11010519491231002X。"),
            ["11010519491231002X"]
        );
        assert!(find(PiiKind::CnIdCard, "911010519491231002X").is_empty());
        assert_eq!(
            PiiKind::CnIdCard.mask("11010519491231002X"),
            "**************002X"
        );
    }

    #[test]
    fn mobile_numbers() {
        for ok in [
            "13800138000",
            "138 0013 8000",
            "138-0013-8000",
            "+86-138-0013-8000",
            "+8613800138000",
            "0086 13800138000",
        ] {
            assert_eq!(
                find(PiiKind::CnMobile, &format!("电话{ok}。")),
                [ok],
                "{ok}"
            );
        }
        assert!(
            find(PiiKind::CnMobile, "12800138000").is_empty(),
            "12x is not mobile"
        );
        assert!(find(PiiKind::CnMobile, "订单号 913800138000123").is_empty());
        assert_eq!(PiiKind::CnMobile.mask("13800138000"), "138****8000");
        assert_eq!(PiiKind::CnMobile.mask("138 0013 8000"), "138 **** 8000");
        assert_eq!(
            PiiKind::CnMobile.mask("+86-138-0013-8000"),
            "+86-138-****-8000"
        );
    }

    #[test]
    fn bank_cards() {
        assert_eq!(
            find(PiiKind::BankCard, "卡号4111111111111111"),
            ["4111111111111111"]
        );
        assert_eq!(
            find(PiiKind::BankCard, "card 4111 1111 1111 1111 ok"),
            ["4111 1111 1111 1111"]
        );
        assert!(
            find(PiiKind::BankCard, "4111111111111112").is_empty(),
            "bad Luhn"
        );
        assert_eq!(
            PiiKind::BankCard.mask("4111 1111 1111 1111"),
            "**** **** **** 1111"
        );
    }

    #[test]
    fn emails() {
        assert_eq!(
            find(PiiKind::Email, "联系 zhang.san@example.com.cn 吧"),
            ["zhang.san@example.com.cn"]
        );
        assert!(find(PiiKind::Email, "a@b").is_empty());
        assert_eq!(PiiKind::Email.mask("zhang@example.com"), "z***@example.com");
    }

    #[test]
    fn ip_addresses() {
        assert_eq!(
            find(PiiKind::Ipv4, "host 192.168.1.20 up"),
            ["192.168.1.20"]
        );
        assert!(find(PiiKind::Ipv4, "999.1.1.1").is_empty());
        assert!(find(PiiKind::Ipv4, "v1.2.3.4.5").is_empty());
        assert_eq!(PiiKind::Ipv4.mask("192.168.1.20"), "192.168.1.*");
        assert_eq!(
            find(PiiKind::Ipv6, "addr 2001:db8::8a2e:370:7334 ok"),
            ["2001:db8::8a2e:370:7334"]
        );
        assert!(find(PiiKind::Ipv6, "use std::fmt; at 12:30:45").is_empty());
        assert_eq!(PiiKind::Ipv6.mask("2001:db8::1"), "2001:db8::*");
    }

    #[test]
    fn luhn_known_values() {
        assert!(luhn(&[7, 9, 9, 2, 7, 3, 9, 8, 7, 1, 3]));
        assert!(!luhn(&[7, 9, 9, 2, 7, 3, 9, 8, 7, 1, 4]));
    }

    #[test]
    fn alphabet_covers_matches() {
        for kind in PiiKind::ALL {
            for s in [
                "+86-138-0013-8000",
                "4111 1111 1111 1111",
                "a.b%c+d-e_f@x-y.com",
                "1.2.3.4",
                "fe80::1",
                "11010519491231002X",
            ] {
                if let Some(m) = regex::Regex::new(kind.regex())
                    .ok()
                    .and_then(|r| r.find(s).map(|m| m.as_str().to_owned()))
                {
                    assert!(m.bytes().all(|b| kind.in_alphabet(b)), "{kind:?} {m}");
                    assert!(m.len() <= kind.max_len());
                }
            }
        }
    }
}
