//! UTF-8 validation of bodies and stream events, the first step of every strict read.
//!
//! `simdutf8` checks the common, valid case with SIMD (AVX2 or SSE4.2, detected at run time),
//! several times faster than `std::str::from_utf8` on Chinese text; only invalid input is checked
//! again by the standard library, for its error's detail (where the bad byte is).

/// `bytes` as text when they are valid UTF-8.
#[inline]
pub fn str_of(bytes: &[u8]) -> Result<&str, std::str::Utf8Error> {
    match simdutf8::basic::from_utf8(bytes) {
        Ok(text) => Ok(text),
        Err(_) => std::str::from_utf8(bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agrees_with_the_standard_library() {
        let samples: [&[u8]; 7] = [
            b"",
            b"plain ascii",
            "你好，世界 — mixed ✓ 😀".as_bytes(),
            b"\xE4\xBD", // a character cut short
            b"ok \xC0\x80 overlong",
            b"\xED\xA0\x80",          // a surrogate
            b"tail \xF4\x90\x80\x80", // beyond U+10FFFF
        ];
        for s in samples {
            assert_eq!(str_of(s), std::str::from_utf8(s), "{s:?}");
        }
        // Long enough for the SIMD path, with the fault late in it.
        let mut long = "汉字 and text ".repeat(200).into_bytes();
        assert_eq!(str_of(&long).map(str::len), Ok(long.len()));
        long.insert(long.len() - 3, 0xFF);
        let err = str_of(&long).unwrap_err();
        assert_eq!(Err(err), std::str::from_utf8(&long));
    }
}
