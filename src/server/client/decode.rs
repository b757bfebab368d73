//! Response body framing (RFC 9112 §6.3, §7.1): a known length, chunked, or up to the close of
//! the connection, decoded in place in whatever buffer one socket read filled.
//!
//! The decoders keep no buffer of their own, only a few counters: a chunk-size line, a CRLF or a
//! trailer split across two reads is carried over as state, never as bytes.

use super::HttpError;

/// Longest chunk-size line, extensions included (bytes). Extensions are ignored, so this only
/// bounds the work a server can make us do per chunk; real ones are a few bytes long.
pub(super) const MAX_CHUNK_LINE: usize = 4096;

/// Most trailer bytes read (and discarded) after the last chunk.
pub(super) const MAX_TRAILERS: usize = 16 * 1024;

/// How the end of a response body is found.
#[derive(Debug)]
pub(super) enum Decoder {
    /// `Content-Length`: this many bytes are still due.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked(Chunked),
    /// No framing: the body ends when the server closes the connection.
    Eof,
}

/// What one call to [`Decoder::decode`] found in a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Decoded {
    /// Payload bytes, now at the front of the buffer.
    pub data: usize,
    /// Bytes after the end of the message (only when the decoder is done): the server sent
    /// more than one answer, so the connection is not reused.
    pub rest: usize,
}

impl Decoder {
    pub fn chunked() -> Self {
        Decoder::Chunked(Chunked::default())
    }

    /// The whole body has been seen.
    pub fn is_done(&self) -> bool {
        match self {
            Decoder::Length(left) => *left == 0,
            Decoder::Chunked(c) => c.state == State::Done,
            Decoder::Eof => false,
        }
    }

    /// Whether the connection closing now ends the body properly (rather than cutting it short).
    pub fn ends_at_eof(&self) -> bool {
        matches!(self, Decoder::Eof) || self.is_done()
    }

    /// Payload bytes still due, when known.
    pub fn remaining(&self) -> Option<u64> {
        match self {
            Decoder::Length(left) => Some(*left),
            _ => None,
        }
    }

    /// Decode the bytes of one read in place: the payload among them is moved to the front of
    /// `buf` (framing removed). Errors on malformed chunked framing.
    pub fn decode(&mut self, buf: &mut [u8]) -> Result<Decoded, HttpError> {
        match self {
            Decoder::Length(left) => {
                let n = usize::try_from(*left).map_or(buf.len(), |l| l.min(buf.len()));
                *left -= n as u64;
                Ok(Decoded {
                    data: n,
                    rest: buf.len() - n,
                })
            }
            Decoder::Eof => Ok(Decoded {
                data: buf.len(),
                rest: 0,
            }),
            Decoder::Chunked(c) => c.decode(buf),
        }
    }
}

/// Where a chunked decoder is in the grammar (RFC 9112 §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum State {
    /// In the hex digits of a chunk size.
    #[default]
    Size,
    /// Whitespace after the size (tolerated before `;` or CRLF, as most servers and parsers do).
    SizeLws,
    /// In a chunk extension: ignored up to CR.
    Ext,
    /// After the CR of a chunk-size line.
    SizeLf,
    /// In chunk data.
    Data,
    /// After chunk data, expecting CR.
    DataCr,
    /// After chunk data and CR, expecting LF.
    DataLf,
    /// At the start of a trailer line (or of the final empty line).
    TrailerStart,
    /// In a trailer line.
    Trailer,
    /// After the CR of a trailer line.
    TrailerLf,
    /// After the CR of the final empty line.
    EndLf,
    /// The message is complete.
    Done,
}

/// A chunked body decoder: strict about sizes and line ends, blind to extensions and trailers.
#[derive(Debug, Clone, Default)]
pub(super) struct Chunked {
    state: State,
    /// The chunk size being read, then the data bytes of the chunk still due.
    size: u64,
    /// Bytes of the current chunk-size line so far.
    line: usize,
    /// Trailer bytes so far.
    trailers: usize,
}

fn framing(msg: &'static str) -> HttpError {
    HttpError::Framing(msg)
}

fn hex(b: u8) -> Option<u64> {
    match b {
        b'0'..=b'9' => Some(u64::from(b - b'0')),
        b'a'..=b'f' => Some(u64::from(b - b'a' + 10)),
        b'A'..=b'F' => Some(u64::from(b - b'A' + 10)),
        _ => None,
    }
}

impl Chunked {
    fn decode(&mut self, buf: &mut [u8]) -> Result<Decoded, HttpError> {
        let mut r = 0;
        let mut w = 0;
        while r < buf.len() {
            match self.state {
                State::Done => break,
                State::Data => {
                    let avail = buf.len() - r;
                    let n = usize::try_from(self.size).map_or(avail, |s| s.min(avail));
                    buf.copy_within(r..r + n, w);
                    r += n;
                    w += n;
                    self.size -= n as u64;
                    if self.size == 0 {
                        self.state = State::DataCr;
                    }
                }
                _ => {
                    self.step(buf[r])?;
                    r += 1;
                }
            }
        }
        Ok(Decoded {
            data: w,
            rest: buf.len() - r,
        })
    }

    /// One framing byte.
    fn step(&mut self, b: u8) -> Result<(), HttpError> {
        self.state = match self.state {
            State::Size | State::SizeLws | State::Ext => {
                self.line += 1;
                if self.line > MAX_CHUNK_LINE {
                    return Err(framing("chunk-size line too long"));
                }
                self.size_line(b)?
            }
            State::SizeLf => match b {
                b'\n' if self.size == 0 => State::TrailerStart,
                b'\n' => State::Data,
                _ => return Err(framing("chunk-size line not ended by CRLF")),
            },
            State::DataCr => match b {
                b'\r' => State::DataLf,
                _ => return Err(framing("chunk data not followed by CRLF")),
            },
            State::DataLf => match b {
                b'\n' => {
                    self.line = 0;
                    State::Size
                }
                _ => return Err(framing("chunk data not followed by CRLF")),
            },
            State::TrailerStart | State::Trailer | State::TrailerLf => {
                self.trailers += 1;
                if self.trailers > MAX_TRAILERS {
                    return Err(framing("trailers too large"));
                }
                match (self.state, b) {
                    (State::TrailerStart, b'\r') => State::EndLf,
                    (State::Trailer, b'\r') => State::TrailerLf,
                    (State::TrailerStart | State::Trailer, b'\n') => {
                        return Err(framing("bare LF in trailers"))
                    }
                    (State::TrailerStart | State::Trailer, _) => State::Trailer,
                    (_, b'\n') => State::TrailerStart,
                    _ => return Err(framing("trailer line not ended by CRLF")),
                }
            }
            State::EndLf => match b {
                b'\n' => State::Done,
                _ => return Err(framing("chunked body not ended by CRLF")),
            },
            State::Data | State::Done => unreachable!("data and the end are not read byte by byte"),
        };
        Ok(())
    }

    /// One byte of a chunk-size line: `1*HEXDIG [ BWS chunk-ext ] CRLF`.
    fn size_line(&mut self, b: u8) -> Result<State, HttpError> {
        Ok(match (self.state, b) {
            (State::Size, _) if hex(b).is_some() => {
                let d = hex(b).unwrap_or_default();
                self.size = self
                    .size
                    .checked_mul(16)
                    .and_then(|s| s.checked_add(d))
                    .ok_or_else(|| framing("chunk size too large"))?;
                State::Size
            }
            (State::Size, _) if self.line == 1 => return Err(framing("chunk size missing")),
            (State::Size | State::SizeLws, b' ' | b'\t') => State::SizeLws,
            (State::Size | State::SizeLws, b';') => State::Ext,
            (State::Size | State::SizeLws | State::Ext, b'\r') => State::SizeLf,
            (State::Ext, b'\n') => return Err(framing("bare LF in a chunk extension")),
            (State::Ext, _) => State::Ext,
            _ => return Err(framing("invalid chunk size")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Feed `wire` to a fresh chunked decoder in the given pieces; the payload and leftover bytes.
    fn feed(pieces: &[&[u8]]) -> Result<(Vec<u8>, usize, bool), HttpError> {
        let mut d = Decoder::chunked();
        let mut out = Vec::new();
        let mut rest = 0;
        for p in pieces {
            let mut buf = p.to_vec();
            let got = d.decode(&mut buf)?;
            out.extend_from_slice(&buf[..got.data]);
            rest += got.rest;
        }
        Ok((out, rest, d.is_done()))
    }

    fn whole(wire: &[u8]) -> Result<(Vec<u8>, usize, bool), HttpError> {
        feed(&[wire])
    }

    fn encode(chunks: &[Vec<u8>], ext: bool, trailers: bool) -> Vec<u8> {
        let mut w = Vec::new();
        for (i, c) in chunks.iter().filter(|c| !c.is_empty()).enumerate() {
            if i % 2 == 1 {
                w.extend_from_slice(format!("{:X}", c.len()).as_bytes());
            } else {
                w.extend_from_slice(format!("{:x}", c.len()).as_bytes());
            }
            if ext {
                w.extend_from_slice(b" ;name=\"va;lue\"");
            }
            w.extend_from_slice(b"\r\n");
            w.extend_from_slice(c);
            w.extend_from_slice(b"\r\n");
        }
        w.extend_from_slice(b"0\r\n");
        if trailers {
            w.extend_from_slice(b"x-usage: 12\r\nx-other: a\r\n");
        }
        w.extend_from_slice(b"\r\n");
        w
    }

    #[test]
    fn a_chunked_body_split_at_every_byte_boundary_decodes_alike() {
        let chunks = vec![
            b"data: {\"a\":1}\n\n".to_vec(),
            vec![0u8; 300],
            b"\r\n0\r\n".to_vec(),
        ];
        let want: Vec<u8> = chunks.concat();
        for (ext, trailers) in [(false, false), (true, true)] {
            let wire = encode(&chunks, ext, trailers);
            for i in 0..=wire.len() {
                let (got, rest, done) = feed(&[&wire[..i], &wire[i..]]).unwrap();
                assert_eq!(got, want, "split at {i}");
                assert_eq!(rest, 0);
                assert!(done);
            }
            let bytes: Vec<&[u8]> = wire.chunks(1).collect();
            assert_eq!(feed(&bytes).unwrap(), (want.clone(), 0, true));
        }
    }

    proptest! {
        #[test]
        fn any_split_of_a_valid_chunked_body_gives_the_same_bytes(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..8),
            ext in any::<bool>(),
            trailers in any::<bool>(),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
        ) {
            let wire = encode(&chunks, ext, trailers);
            let mut at: Vec<usize> = cuts.iter().map(|c| c.index(wire.len() + 1)).collect();
            at.sort_unstable();
            let mut pieces = Vec::new();
            let mut prev = 0;
            for a in at {
                pieces.push(&wire[prev..a]);
                prev = a;
            }
            pieces.push(&wire[prev..]);
            let (got, rest, done) = feed(&pieces).unwrap();
            prop_assert_eq!(got, chunks.concat());
            prop_assert_eq!(rest, 0);
            prop_assert!(done);
        }

        #[test]
        fn garbage_never_panics_and_never_yields_more_than_it_was_given(
            wire in proptest::collection::vec(any::<u8>(), 0..400),
            cut in any::<prop::sample::Index>(),
        ) {
            let i = cut.index(wire.len() + 1);
            if let Ok((got, _, _)) = feed(&[&wire[..i], &wire[i..]]) {
                prop_assert!(got.len() <= wire.len());
            }
        }
    }

    #[test]
    fn bytes_after_the_last_chunk_are_reported() {
        let (got, rest, done) = whole(b"3\r\nabc\r\n0\r\n\r\nHTTP/1.1 200 OK\r\n").unwrap();
        assert_eq!(got, b"abc");
        assert_eq!(rest, 17);
        assert!(done);
    }

    #[test]
    fn malformed_chunked_bodies_are_errors() {
        for bad in [
            &b"zz\r\nhi\r\n0\r\n\r\n"[..],
            b"\r\n",
            b";ext\r\n",
            b" 5\r\nhello\r\n",
            b"-5\r\nhello\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhelloX\r\n",
            b"5\r\nhello\rX",
            b"5\r\nhello\n",
            b"5 x\r\nhello\r\n",
            b"5;a\nb\r\nhello\r\n",
            b"0x5\r\nhello\r\n",
            b"10000000000000000\r\n",
            b"fffffffffffffffff\r\n",
            b"0\r\nbad\ntrailer\r\n\r\n",
            b"0\r\nx: y\rz",
            b"0\r\n\rX",
        ] {
            assert!(
                whole(bad).is_err(),
                "accepted {:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn sizes_up_to_u64_max_are_read_and_leading_zeros_are_fine() {
        let mut d = Decoder::chunked();
        d.decode(&mut b"ffffffffffffffff\r\nab".to_vec()).unwrap();
        assert!(!d.is_done());
        assert_eq!(
            whole(b"0003\r\nabc\r\n00\r\n\r\n").unwrap(),
            (b"abc".to_vec(), 0, true)
        );
        // Whitespace before CRLF or an extension is tolerated.
        assert_eq!(
            whole(b"3 \t\r\nabc\r\n0 ;x\r\n\r\n").unwrap(),
            (b"abc".to_vec(), 0, true)
        );
    }

    #[test]
    fn oversized_chunk_size_lines_and_trailers_are_errors() {
        let mut line = b"3;".to_vec();
        line.extend(std::iter::repeat_n(b'a', MAX_CHUNK_LINE));
        line.extend_from_slice(b"\r\nabc\r\n0\r\n\r\n");
        assert!(whole(&line).is_err());
        let mut zeros = vec![b'0'; MAX_CHUNK_LINE + 1];
        zeros.extend_from_slice(b"3\r\nabc\r\n");
        assert!(whole(&zeros).is_err());
        let mut trailers = b"0\r\n".to_vec();
        for _ in 0..MAX_TRAILERS / 10 + 1 {
            trailers.extend_from_slice(b"x-a: 1234\r\n");
        }
        trailers.extend_from_slice(b"\r\n");
        assert!(whole(&trailers).is_err());
        // Within the limits, both are fine.
        let mut ok = b"3;".to_vec();
        ok.extend(std::iter::repeat_n(b'a', MAX_CHUNK_LINE - 3));
        ok.extend_from_slice(b"\r\nabc\r\n0\r\nx-a: 1\r\n\r\n");
        assert_eq!(whole(&ok).unwrap(), (b"abc".to_vec(), 0, true));
    }

    #[test]
    fn a_body_cut_short_does_not_end_at_eof() {
        let mut d = Decoder::chunked();
        d.decode(&mut b"3\r\nabc\r\n".to_vec()).unwrap();
        assert!(!d.ends_at_eof());
        let mut l = Decoder::Length(5);
        let got = l.decode(&mut b"abc".to_vec()).unwrap();
        assert_eq!(got, Decoded { data: 3, rest: 0 });
        assert!(!l.ends_at_eof());
        assert_eq!(l.remaining(), Some(2));
        assert!(Decoder::Eof.ends_at_eof());
    }

    #[test]
    fn a_length_body_stops_at_its_length() {
        let mut l = Decoder::Length(3);
        let got = l.decode(&mut b"abcdef".to_vec()).unwrap();
        assert_eq!(got, Decoded { data: 3, rest: 3 });
        assert!(l.is_done());
        let mut e = Decoder::Length(0);
        assert!(e.is_done());
        assert_eq!(e.decode(&mut [1, 2]).unwrap(), Decoded { data: 0, rest: 2 });
    }
}
