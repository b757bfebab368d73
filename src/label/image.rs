//! Implicit labels in image files without touching pixels: the `TC260:AIGC` XMP block in PNG, JPEG and WebP.
//!
//! - PNG: one `iTXt` chunk, keyword `XML:com.adobe.xmp`, uncompressed, right after `IHDR`.
//! - JPEG: one APP1 segment `http://ns.adobe.com/xap/1.0/\0` after SOI and any leading APP0 (JFIF) and
//!   Exif APP1 segments.
//! - WebP: one `XMP ` chunk after the image data; a simple `VP8 `/`VP8L` file becomes `VP8X` with the XMP
//!   flag, and the RIFF size is rewritten.
//!
//! **Canonical form** ([`canonical_bytes`]): the file with every XMP packet removed (PNG: XMP `iTXt`
//! and legacy `tEXt`/`zTXt`/`iTXt` chunks keyed `AIGC`; JPEG: standard and extended XMP APP1
//! segments; WebP: `XMP ` chunks, the VP8X XMP flag cleared, simple files first converted to VP8X).
//! The image signature is over `ID ‖ SHA-256(canonical form)`; the writer inserts the block into the
//! canonical form, so stripping a labeled file gives back exactly the bytes that were hashed.
//!
//! Any earlier XMP packet is replaced as a whole (other XMP properties are not carried over), so a
//! labeled file has exactly one `AIGC` block. Input is untrusted: every length is checked against the
//! bytes present, nothing is allocated from a declared length, and files over [`MAX_IMAGE_BYTES`] are
//! refused. CRCs of pass-through chunks are not checked (that would cost more than the labeling).

use std::borrow::Cow;

use sha2::{Digest, Sha256};

use super::aigc::{Aigc, AigcError};
use super::config::ExistingAigc;
use super::text::Labeler;
use super::visible::{burn_visible_label, VisibleError};
use super::xmp::{build_packet, extract_aigc, XmpError, MAX_XMP_BYTES};

/// Largest image accepted, in bytes (64 MiB): far above a 4096² PNG, low enough to bound memory.
pub const MAX_IMAGE_BYTES: usize = 64 * 1024 * 1024;

const PNG_SIG: &[u8; 8] = b"\x89PNG\r\n\x1a\n";
const PNG_XMP_KEYWORD: &[u8] = b"XML:com.adobe.xmp";
const AIGC_KEYWORD: &[u8] = b"AIGC";
/// PNG chunk lengths are at most 2^31 - 1 (PNG spec §5.3).
const PNG_MAX_CHUNK: usize = 0x7fff_ffff;
const JPEG_XMP_HEADER: &[u8] = b"http://ns.adobe.com/xap/1.0/\0";
const JPEG_XMP_EXT_HEADER: &[u8] = b"http://ns.adobe.com/xmp/extension/\0";
const JPEG_EXIF_HEADER: &[u8] = b"Exif\0\0";
/// An APP1 segment holds at most 65533 payload bytes.
const JPEG_MAX_SEGMENT_PAYLOAD: usize = 65533;
const VP8X_FLAG_XMP: u8 = 0x04;
const VP8X_FLAG_ALPHA: u8 = 0x10;

/// Image container formats shenhe can label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    Png,
    Jpeg,
    WebP,
}

impl ImageFormat {
    /// Lowercase name (`png`, `jpeg`, `webp`), also the metric and report label.
    pub fn name(self) -> &'static str {
        match self {
            ImageFormat::Png => "png",
            ImageFormat::Jpeg => "jpeg",
            ImageFormat::WebP => "webp",
        }
    }

    /// MIME type.
    pub fn mime(self) -> &'static str {
        match self {
            ImageFormat::Png => "image/png",
            ImageFormat::Jpeg => "image/jpeg",
            ImageFormat::WebP => "image/webp",
        }
    }
}

/// Why an image could not be labeled or read.
#[derive(Debug, thiserror::Error)]
pub enum LabelError {
    #[error("image is {len} bytes, more than the {max} byte limit")]
    TooLarge { len: usize, max: usize },
    #[error("not a png, jpeg or webp file")]
    UnknownFormat,
    #[error("malformed {format}: {reason}")]
    Malformed {
        format: &'static str,
        reason: &'static str,
    },
    #[error("unsupported {format}: {reason}")]
    Unsupported {
        format: &'static str,
        reason: &'static str,
    },
    #[error("image carries {0} aigc blocks, a file may carry only one")]
    Duplicated(usize),
    #[error("aigc block: {0}")]
    Aigc(#[from] AigcError),
    #[error("xmp: {0}")]
    Xmp(#[from] XmpError),
    #[error("implicit labels are disabled, nothing to sign with")]
    NoSigner,
    #[error("visible label: {0}")]
    Visible(#[from] VisibleError),
}

impl LabelError {
    /// Low-cardinality kind for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            LabelError::TooLarge { .. } => "too_large",
            LabelError::UnknownFormat => "unknown_format",
            LabelError::Malformed { .. } => "malformed",
            LabelError::Unsupported { .. } => "unsupported",
            LabelError::Duplicated(_) => "duplicated",
            LabelError::Aigc(_) | LabelError::Xmp(_) => "bad_aigc",
            LabelError::NoSigner => "no_signer",
            LabelError::Visible(_) => "visible",
        }
    }
}

fn malformed(format: ImageFormat, reason: &'static str) -> LabelError {
    LabelError::Malformed {
        format: format.name(),
        reason,
    }
}

/// The format from the magic bytes, `None` for anything else.
pub fn detect_format(bytes: &[u8]) -> Option<ImageFormat> {
    if bytes.starts_with(PNG_SIG) {
        Some(ImageFormat::Png)
    } else if bytes.starts_with(&[0xff, 0xd8, 0xff]) {
        Some(ImageFormat::Jpeg)
    } else if bytes.len() >= 12 && &bytes[0..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        Some(ImageFormat::WebP)
    } else {
        None
    }
}

fn check_input(bytes: &[u8]) -> Result<ImageFormat, LabelError> {
    if bytes.len() > MAX_IMAGE_BYTES {
        return Err(LabelError::TooLarge {
            len: bytes.len(),
            max: MAX_IMAGE_BYTES,
        });
    }
    detect_format(bytes).ok_or(LabelError::UnknownFormat)
}

/// The single `AIGC` record of the file: `Ok(None)` when there is none, an error when there are two or
/// more ([`LabelError::Duplicated`]) or the one present is malformed.
pub fn read_aigc(bytes: &[u8]) -> Result<Option<Aigc>, LabelError> {
    let payloads = aigc_payloads(bytes)?;
    match payloads.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(Aigc::from_json(one)?)),
        more => Err(LabelError::Duplicated(more.len())),
    }
}

/// Every raw `AIGC` payload in the file (XMP and legacy text chunks), in file order.
pub(crate) fn aigc_payloads(bytes: &[u8]) -> Result<Vec<String>, LabelError> {
    let format = check_input(bytes)?;
    let mut out = Vec::new();
    match format {
        ImageFormat::Png => {
            png_walk(bytes, |c| {
                match png_text_chunk(&c)? {
                    Some(PngText::Xmp(packet)) => out.extend(extract_aigc(packet)?),
                    Some(PngText::Aigc(v)) => out.push(v),
                    None => {}
                }
                Ok(())
            })?;
        }
        ImageFormat::Jpeg => {
            jpeg_walk(bytes, |seg| {
                if let Some(packet) = seg.xmp_packet() {
                    out.extend(extract_aigc(packet)?);
                }
                Ok(())
            })?;
        }
        ImageFormat::WebP => {
            webp_walk(bytes, |c| {
                if &c.fourcc == b"XMP " {
                    out.extend(extract_aigc(c.data)?);
                }
                Ok(())
            })?;
        }
    }
    Ok(out)
}

/// The canonical form that image signatures cover (see the module docs).
pub fn canonical_bytes(bytes: &[u8]) -> Result<Vec<u8>, LabelError> {
    match check_input(bytes)? {
        ImageFormat::Png => png_strip(bytes),
        ImageFormat::Jpeg => jpeg_strip(bytes),
        ImageFormat::WebP => webp_strip(&webp_to_vp8x(bytes)?),
    }
}

/// Label an image: optional visible label (re-encodes pixels), then one signed `TC260:AIGC` XMP block.
///
/// With `images.xmp` off (or implicit labels off) and no visible label, the bytes come back unchanged.
/// An `AIGC` block already present and written by another producer is kept as producer fields with
/// shenhe as propagator (`images.existing: propagate`, signature in `ReservedCode2`) or overwritten
/// (`replace`); shenhe's own earlier block is always overwritten. Counts
/// `shenhe_labels_applied_total{image,implicit|visible,…}`.
pub fn label_image(
    bytes: &[u8],
    labeler: &Labeler,
    produce_id: &str,
) -> Result<Vec<u8>, LabelError> {
    let result = label_image_inner(bytes, labeler, produce_id);
    let implicit = if labeler.images().xmp {
        if result.is_ok() {
            "ok"
        } else {
            "error"
        }
    } else {
        "skipped"
    };
    super::record("image", "implicit", implicit);
    result
}

fn label_image_inner(
    bytes: &[u8],
    labeler: &Labeler,
    produce_id: &str,
) -> Result<Vec<u8>, LabelError> {
    let format = check_input(bytes)?;
    let settings = labeler.images();
    // A malformed or duplicated upstream block is not kept: it is replaced by a well-formed one.
    let existing = read_aigc(bytes).ok().flatten();
    let mut work: Cow<'_, [u8]> = Cow::Borrowed(bytes);
    if let Some(text) = &settings.visible {
        match burn_visible_label(bytes, format, text) {
            Ok(v) => {
                super::record("image", "visible", "ok");
                work = Cow::Owned(v);
            }
            Err(e) => {
                super::record("image", "visible", "error");
                return Err(e.into());
            }
        }
    }
    if !settings.xmp {
        return Ok(work.into_owned());
    }
    let (Some(signer), Some(producer)) = (labeler.signer(), labeler.producer()) else {
        return Err(LabelError::NoSigner);
    };
    let canonical = canonical_bytes(&work)?;
    let digest: [u8; 32] = Sha256::digest(&canonical).into();
    let signature = signer.sign(produce_id, &digest);
    let aigc = match existing {
        Some(up)
            if settings.existing == ExistingAigc::Propagate && up.content_producer != producer =>
        {
            Aigc {
                content_propagator: producer.to_owned(),
                propagate_id: produce_id.to_owned(),
                reserved_code2: signature,
                ..up
            }
        }
        _ => Aigc::first_write(producer, produce_id, signature),
    };
    insert_packet(canonical, format, &build_packet(&aigc.to_json()))
}

/// Insert `packet` into a canonical (stripped) file.
fn insert_packet(
    canonical: Vec<u8>,
    format: ImageFormat,
    packet: &str,
) -> Result<Vec<u8>, LabelError> {
    if packet.len() > MAX_XMP_BYTES {
        return Err(LabelError::Xmp(XmpError::TooLarge));
    }
    match format {
        ImageFormat::Png => png_insert(&canonical, packet),
        ImageFormat::Jpeg => jpeg_insert(&canonical, packet),
        ImageFormat::WebP => webp_insert(&canonical, packet),
    }
}

// ---------------------------------------------------------------- PNG

struct PngChunk<'a> {
    ty: [u8; 4],
    data: &'a [u8],
    /// Length, type, data and CRC.
    raw: &'a [u8],
}

/// Call `f` for each chunk up to and including IEND; returns the bytes after IEND (kept verbatim).
fn png_walk<'a>(
    bytes: &'a [u8],
    mut f: impl FnMut(PngChunk<'a>) -> Result<(), LabelError>,
) -> Result<&'a [u8], LabelError> {
    let fmt = ImageFormat::Png;
    let mut pos = PNG_SIG.len();
    let mut first = true;
    loop {
        let header = bytes
            .get(pos..pos + 8)
            .ok_or(malformed(fmt, "truncated before iend"))?;
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        if len > PNG_MAX_CHUNK {
            return Err(malformed(fmt, "chunk length over 2^31-1"));
        }
        let ty = [header[4], header[5], header[6], header[7]];
        if !ty.iter().all(u8::is_ascii_alphabetic) {
            return Err(malformed(fmt, "bad chunk type"));
        }
        if first && &ty != b"IHDR" {
            return Err(malformed(fmt, "first chunk is not ihdr"));
        }
        first = false;
        let end = pos
            .checked_add(12 + len)
            .filter(|&e| e <= bytes.len())
            .ok_or(malformed(fmt, "chunk runs past end of file"))?;
        let chunk = PngChunk {
            ty,
            data: &bytes[pos + 8..pos + 8 + len],
            raw: &bytes[pos..end],
        };
        f(chunk)?;
        pos = end;
        if &ty == b"IEND" {
            return Ok(&bytes[pos..]);
        }
    }
}

enum PngText<'a> {
    Xmp(&'a [u8]),
    Aigc(String),
}

/// Classify a text chunk: XMP iTXt, or a legacy chunk keyed `AIGC`.
fn png_text_chunk<'a>(c: &PngChunk<'a>) -> Result<Option<PngText<'a>>, LabelError> {
    let fmt = ImageFormat::Png;
    let is_text = matches!(&c.ty, b"iTXt" | b"tEXt" | b"zTXt");
    if !is_text {
        return Ok(None);
    }
    let Some(nul) = c.data.iter().position(|&b| b == 0) else {
        return Err(malformed(fmt, "text chunk without keyword terminator"));
    };
    let keyword = &c.data[..nul];
    let rest = &c.data[nul + 1..];
    let want_xmp = &c.ty == b"iTXt" && keyword == PNG_XMP_KEYWORD;
    let want_aigc = keyword == AIGC_KEYWORD;
    if !want_xmp && !want_aigc {
        return Ok(None);
    }
    if &c.ty == b"zTXt" {
        return Err(LabelError::Unsupported {
            format: fmt.name(),
            reason: "compressed aigc text chunk",
        });
    }
    let text: &[u8] = if &c.ty == b"tEXt" {
        rest
    } else {
        // iTXt: compression flag, method, language tag\0, translated keyword\0, text.
        let (&flag, after) = rest
            .split_first()
            .ok_or(malformed(fmt, "short itxt chunk"))?;
        if flag != 0 {
            return Err(LabelError::Unsupported {
                format: fmt.name(),
                reason: "compressed xmp itxt chunk",
            });
        }
        let after = after.get(1..).ok_or(malformed(fmt, "short itxt chunk"))?;
        let lang_end = after
            .iter()
            .position(|&b| b == 0)
            .ok_or(malformed(fmt, "itxt language tag not terminated"))?;
        let after = &after[lang_end + 1..];
        let tr_end = after
            .iter()
            .position(|&b| b == 0)
            .ok_or(malformed(fmt, "itxt translated keyword not terminated"))?;
        &after[tr_end + 1..]
    };
    if want_xmp {
        return Ok(Some(PngText::Xmp(text)));
    }
    // tEXt is Latin-1; a JSON record is ASCII in practice. Map bytes to chars either way.
    let value = match std::str::from_utf8(text) {
        Ok(s) => s.to_owned(),
        Err(_) => text.iter().map(|&b| char::from(b)).collect(),
    };
    Ok(Some(PngText::Aigc(value)))
}

fn png_strip(bytes: &[u8]) -> Result<Vec<u8>, LabelError> {
    let mut out = Vec::with_capacity(bytes.len());
    out.extend_from_slice(PNG_SIG);
    let trailer = png_walk(bytes, |c| {
        if !png_is_metadata(&c) {
            out.extend_from_slice(c.raw);
        }
        Ok(())
    })?;
    out.extend_from_slice(trailer);
    Ok(out)
}

/// True for the chunks the canonical form drops (decided on keyword only, so compressed ones go too).
fn png_is_metadata(c: &PngChunk<'_>) -> bool {
    if !matches!(&c.ty, b"iTXt" | b"tEXt" | b"zTXt") {
        return false;
    }
    let keyword = c.data.split(|&b| b == 0).next().unwrap_or_default();
    (&c.ty == b"iTXt" && keyword == PNG_XMP_KEYWORD) || keyword == AIGC_KEYWORD
}

fn png_insert(canonical: &[u8], packet: &str) -> Result<Vec<u8>, LabelError> {
    let mut data = Vec::with_capacity(PNG_XMP_KEYWORD.len() + 5 + packet.len());
    data.extend_from_slice(PNG_XMP_KEYWORD);
    data.extend_from_slice(&[0, 0, 0, 0, 0]); // keyword end, no compression, method 0, empty lang, empty translated
    data.extend_from_slice(packet.as_bytes());
    let mut chunk = Vec::with_capacity(data.len() + 12);
    let len = u32::try_from(data.len()).map_err(|_| LabelError::Xmp(XmpError::TooLarge))?;
    chunk.extend_from_slice(&len.to_be_bytes());
    chunk.extend_from_slice(b"iTXt");
    chunk.extend_from_slice(&data);
    let crc = crc32(&chunk[4..]);
    chunk.extend_from_slice(&crc.to_be_bytes());

    let mut out = Vec::with_capacity(canonical.len() + chunk.len());
    out.extend_from_slice(PNG_SIG);
    let trailer = png_walk(canonical, |c| {
        out.extend_from_slice(c.raw);
        if &c.ty == b"IHDR" {
            out.extend_from_slice(&chunk);
        }
        Ok(())
    })?;
    out.extend_from_slice(trailer);
    Ok(out)
}

const CRC_TABLE: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut n = 0;
    while n < 256 {
        let mut c = n as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        t[n] = c;
        n += 1;
    }
    t
};

/// CRC-32 as used by PNG chunks (ISO 3309).
pub(crate) fn crc32(bytes: &[u8]) -> u32 {
    let mut c = 0xffff_ffffu32;
    for &b in bytes {
        c = CRC_TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
    }
    c ^ 0xffff_ffff
}

// ---------------------------------------------------------------- JPEG

struct JpegSegment<'a> {
    marker: u8,
    /// Payload after the two length bytes (empty for standalone markers).
    payload: &'a [u8],
    /// Fill bytes, marker, length and payload.
    raw: &'a [u8],
}

impl<'a> JpegSegment<'a> {
    fn xmp_packet(&self) -> Option<&'a [u8]> {
        if self.marker == 0xe1 {
            self.payload.strip_prefix(JPEG_XMP_HEADER)
        } else {
            None
        }
    }

    fn is_xmp(&self) -> bool {
        self.marker == 0xe1
            && (self.payload.starts_with(JPEG_XMP_HEADER)
                || self.payload.starts_with(JPEG_XMP_EXT_HEADER))
    }
}

/// Call `f` for each segment between SOI and SOS; returns everything from SOS (or EOI) on, verbatim.
fn jpeg_walk<'a>(
    bytes: &'a [u8],
    mut f: impl FnMut(JpegSegment<'a>) -> Result<(), LabelError>,
) -> Result<&'a [u8], LabelError> {
    let fmt = ImageFormat::Jpeg;
    let mut pos = 2; // after SOI
    loop {
        let start = pos;
        if bytes.get(pos) != Some(&0xff) {
            return Err(malformed(fmt, "expected a marker"));
        }
        while bytes.get(pos) == Some(&0xff) {
            pos += 1;
        }
        let marker = *bytes
            .get(pos)
            .ok_or(malformed(fmt, "truncated before start of scan"))?;
        pos += 1;
        match marker {
            0xda | 0xd9 => return Ok(&bytes[start..]),
            0x00 => return Err(malformed(fmt, "stuffed zero outside scan data")),
            0x01 | 0xd0..=0xd8 => {
                f(JpegSegment {
                    marker,
                    payload: &[],
                    raw: &bytes[start..pos],
                })?;
            }
            _ => {
                let len_bytes = bytes
                    .get(pos..pos + 2)
                    .ok_or(malformed(fmt, "truncated segment length"))?;
                let len = usize::from(u16::from_be_bytes([len_bytes[0], len_bytes[1]]));
                if len < 2 {
                    return Err(malformed(fmt, "segment length below 2"));
                }
                let end = pos + len;
                if end > bytes.len() {
                    return Err(malformed(fmt, "segment runs past end of file"));
                }
                f(JpegSegment {
                    marker,
                    payload: &bytes[pos + 2..end],
                    raw: &bytes[start..end],
                })?;
                pos = end;
            }
        }
    }
}

fn jpeg_strip(bytes: &[u8]) -> Result<Vec<u8>, LabelError> {
    let mut out = Vec::with_capacity(bytes.len());
    out.extend_from_slice(&bytes[..2]);
    let tail = jpeg_walk(bytes, |s| {
        if !s.is_xmp() {
            out.extend_from_slice(s.raw);
        }
        Ok(())
    })?;
    out.extend_from_slice(tail);
    Ok(out)
}

fn jpeg_insert(canonical: &[u8], packet: &str) -> Result<Vec<u8>, LabelError> {
    let payload_len = JPEG_XMP_HEADER.len() + packet.len();
    if payload_len > JPEG_MAX_SEGMENT_PAYLOAD {
        return Err(LabelError::Xmp(XmpError::TooLarge));
    }
    let mut seg = Vec::with_capacity(payload_len + 4);
    seg.extend_from_slice(&[0xff, 0xe1]);
    seg.extend_from_slice(&((payload_len + 2) as u16).to_be_bytes());
    seg.extend_from_slice(JPEG_XMP_HEADER);
    seg.extend_from_slice(packet.as_bytes());

    let mut out = Vec::with_capacity(canonical.len() + seg.len());
    out.extend_from_slice(&canonical[..2]);
    let mut inserted = false;
    let tail = jpeg_walk(canonical, |s| {
        let leading =
            s.marker == 0xe0 || (s.marker == 0xe1 && s.payload.starts_with(JPEG_EXIF_HEADER));
        if !inserted && !leading {
            out.extend_from_slice(&seg);
            inserted = true;
        }
        out.extend_from_slice(s.raw);
        Ok(())
    })?;
    if !inserted {
        out.extend_from_slice(&seg);
    }
    out.extend_from_slice(tail);
    Ok(out)
}

// ---------------------------------------------------------------- WebP

struct RiffChunk<'a> {
    fourcc: [u8; 4],
    data: &'a [u8],
    /// FourCC, size, data and pad byte.
    raw: &'a [u8],
}

/// Call `f` for each chunk of the RIFF body; returns bytes after the RIFF container (kept verbatim).
fn webp_walk<'a>(
    bytes: &'a [u8],
    mut f: impl FnMut(RiffChunk<'a>) -> Result<(), LabelError>,
) -> Result<&'a [u8], LabelError> {
    let fmt = ImageFormat::WebP;
    let size = bytes
        .get(4..8)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .ok_or(malformed(fmt, "short riff header"))?;
    let riff_end = size
        .checked_add(8)
        .filter(|&e| e <= bytes.len() && e >= 12)
        .ok_or(malformed(fmt, "riff size past end of file"))?;
    let mut pos = 12;
    while pos < riff_end {
        let h = bytes
            .get(pos..pos + 8)
            .filter(|_| pos + 8 <= riff_end)
            .ok_or(malformed(fmt, "truncated chunk header"))?;
        let fourcc = [h[0], h[1], h[2], h[3]];
        let len = u32::from_le_bytes([h[4], h[5], h[6], h[7]]) as usize;
        let data_end = (pos + 8)
            .checked_add(len)
            .filter(|&e| e <= riff_end)
            .ok_or(malformed(fmt, "chunk runs past riff end"))?;
        let end = (data_end + (len & 1)).min(riff_end);
        f(RiffChunk {
            fourcc,
            data: &bytes[pos + 8..data_end],
            raw: &bytes[pos..end],
        })?;
        pos = end;
    }
    Ok(&bytes[riff_end..])
}

/// Assemble a WebP file from chunk bytes and a trailer, fixing the RIFF size.
fn webp_assemble(body: &[u8], trailer: &[u8]) -> Result<Vec<u8>, LabelError> {
    let size = u32::try_from(body.len() + 4)
        .map_err(|_| malformed(ImageFormat::WebP, "riff body over 4 gib"))?;
    let mut out = Vec::with_capacity(body.len() + 12 + trailer.len());
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&size.to_le_bytes());
    out.extend_from_slice(b"WEBP");
    out.extend_from_slice(body);
    out.extend_from_slice(trailer);
    Ok(out)
}

/// Convert a simple (`VP8 ` or `VP8L`) file to the extended `VP8X` layout; VP8X files are returned as is.
fn webp_to_vp8x(bytes: &[u8]) -> Result<Cow<'_, [u8]>, LabelError> {
    let fmt = ImageFormat::WebP;
    let mut first: Option<([u8; 4], &[u8])> = None;
    webp_walk(bytes, |c| {
        if first.is_none() {
            first = Some((c.fourcc, c.data));
        }
        Ok(())
    })?;
    let (fourcc, data) = first.ok_or(malformed(fmt, "no chunks"))?;
    let (w, h, alpha) = match &fourcc {
        b"VP8X" => return Ok(Cow::Borrowed(bytes)),
        b"VP8 " => {
            let d = data
                .get(0..10)
                .filter(|d| d[3..6] == [0x9d, 0x01, 0x2a])
                .ok_or(malformed(fmt, "bad vp8 frame header"))?;
            let w = u32::from(u16::from_le_bytes([d[6], d[7]]) & 0x3fff);
            let h = u32::from(u16::from_le_bytes([d[8], d[9]]) & 0x3fff);
            (w, h, false)
        }
        b"VP8L" => {
            let d = data
                .get(0..5)
                .filter(|d| d[0] == 0x2f)
                .ok_or(malformed(fmt, "bad vp8l header"))?;
            let bits = u32::from_le_bytes([d[1], d[2], d[3], d[4]]);
            (
                (bits & 0x3fff) + 1,
                ((bits >> 14) & 0x3fff) + 1,
                (bits >> 28) & 1 == 1,
            )
        }
        _ => return Err(malformed(fmt, "first chunk is not vp8, vp8l or vp8x")),
    };
    if w == 0 || h == 0 {
        return Err(malformed(fmt, "zero image dimension"));
    }
    let mut body = Vec::with_capacity(bytes.len() + 18);
    body.extend_from_slice(b"VP8X");
    body.extend_from_slice(&10u32.to_le_bytes());
    body.push(if alpha { VP8X_FLAG_ALPHA } else { 0 });
    body.extend_from_slice(&[0, 0, 0]);
    body.extend_from_slice(&(w - 1).to_le_bytes()[..3]);
    body.extend_from_slice(&(h - 1).to_le_bytes()[..3]);
    let trailer = webp_walk(bytes, |c| {
        body.extend_from_slice(c.raw);
        Ok(())
    })?;
    webp_assemble(&body, trailer).map(Cow::Owned)
}

fn webp_strip(bytes: &[u8]) -> Result<Vec<u8>, LabelError> {
    webp_rewrite(bytes, None)
}

fn webp_insert(canonical: &[u8], packet: &str) -> Result<Vec<u8>, LabelError> {
    webp_rewrite(canonical, Some(packet))
}

/// Drop every `XMP ` chunk; with `packet`, add one after the last image/EXIF chunk and set the flag.
fn webp_rewrite(bytes: &[u8], packet: Option<&str>) -> Result<Vec<u8>, LabelError> {
    let fmt = ImageFormat::WebP;
    // Index of the chunk after which the XMP chunk goes (VP8X order: image data, EXIF, XMP, unknown).
    let mut last_known = None;
    let mut index = 0usize;
    webp_walk(bytes, |c| {
        if matches!(
            &c.fourcc,
            b"VP8X" | b"ICCP" | b"ANIM" | b"ANMF" | b"ALPH" | b"VP8 " | b"VP8L" | b"EXIF"
        ) {
            last_known = Some(index);
        }
        index += 1;
        Ok(())
    })?;
    let mut body = Vec::with_capacity(bytes.len() + packet.map_or(0, |p| p.len() + 9));
    let mut index = 0usize;
    let mut saw_vp8x = false;
    let trailer = webp_walk(bytes, |c| {
        let i = index;
        index += 1;
        if &c.fourcc == b"XMP " {
            return Ok(());
        }
        if &c.fourcc == b"VP8X" && i == 0 {
            saw_vp8x = true;
            let start = body.len();
            body.extend_from_slice(c.raw);
            let flags = body
                .get_mut(start + 8)
                .ok_or(malformed(fmt, "short vp8x chunk"))?;
            if packet.is_some() {
                *flags |= VP8X_FLAG_XMP;
            } else {
                *flags &= !VP8X_FLAG_XMP;
            }
        } else {
            body.extend_from_slice(c.raw);
        }
        if let (Some(p), Some(at)) = (packet, last_known) {
            if at == i {
                let len = u32::try_from(p.len()).map_err(|_| XmpError::TooLarge)?;
                body.extend_from_slice(b"XMP ");
                body.extend_from_slice(&len.to_le_bytes());
                body.extend_from_slice(p.as_bytes());
                if p.len() % 2 == 1 {
                    body.push(0);
                }
            }
        }
        Ok(())
    })?;
    if packet.is_some() && !saw_vp8x {
        return Err(malformed(fmt, "xmp needs a vp8x file"));
    }
    webp_assemble(&body, trailer)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::label::sign::{verify, SignatureSlot};
    use crate::label::text::tests::test_labeler;
    use crate::label::xmp::TC260_NS;

    /// A valid RGB PNG with stored (uncompressed) deflate blocks: no encoder dependency needed.
    pub(crate) fn make_png(w: u32, h: u32) -> Vec<u8> {
        let mut raw = Vec::with_capacity(((w * 3 + 1) * h) as usize);
        for y in 0..h {
            raw.push(0);
            for x in 0..w {
                raw.extend_from_slice(&[(x % 256) as u8, (y % 256) as u8, ((x ^ y) % 256) as u8]);
            }
        }
        let mut z = vec![0x78, 0x01];
        let chunks: Vec<&[u8]> = raw.chunks(65535).collect();
        for (i, c) in chunks.iter().enumerate() {
            z.push(u8::from(i + 1 == chunks.len()));
            let len = c.len() as u16;
            z.extend_from_slice(&len.to_le_bytes());
            z.extend_from_slice(&(!len).to_le_bytes());
            z.extend_from_slice(c);
        }
        let (mut a, mut b) = (1u32, 0u32);
        for &x in &raw {
            a = (a + u32::from(x)) % 65521;
            b = (b + a) % 65521;
        }
        z.extend_from_slice(&((b << 16) | a).to_be_bytes());
        let mut out = PNG_SIG.to_vec();
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(&w.to_be_bytes());
        ihdr.extend_from_slice(&h.to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
        for (ty, data) in [(b"IHDR", ihdr), (b"IDAT", z), (b"IEND", Vec::new())] {
            out.extend_from_slice(&(data.len() as u32).to_be_bytes());
            let mut body = ty.to_vec();
            body.extend_from_slice(&data);
            out.extend_from_slice(&body);
            out.extend_from_slice(&crc32(&body).to_be_bytes());
        }
        out
    }

    /// A baseline 8×8 grey JPEG (JFIF) written by Pillow, as bytes.
    pub(crate) fn tiny_jpeg() -> Vec<u8> {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(TINY_JPEG_B64)
            .expect("fixture")
    }

    /// A 3×2 lossless WebP (VP8L, alpha) and a 3×2 lossy WebP (VP8), written by Pillow.
    pub(crate) fn tiny_webps() -> (Vec<u8>, Vec<u8>) {
        use base64::Engine;
        let e = base64::engine::general_purpose::STANDARD;
        (
            e.decode(TINY_WEBP_LOSSLESS_B64).expect("fixture"),
            e.decode(TINY_WEBP_LOSSY_B64).expect("fixture"),
        )
    }

    const TINY_JPEG_B64: &str = "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDABALDA4MChAODQ4SERATGCgaGBYWGDEjJR0oOjM9PDkzODdASFxOQERXRTc4UG1RV19iZ2hnPk1xeXBkeFxlZ2P/wAALCAAIAAgBAREA/8QAHwAAAQUBAQEBAQEAAAAAAAAAAAECAwQFBgcICQoL/8QAtRAAAgEDAwIEAwUFBAQAAAF9AQIDAAQRBRIhMUEGE1FhByJxFDKBkaEII0KxwRVS0fAkM2JyggkKFhcYGRolJicoKSo0NTY3ODk6Q0RFRkdISUpTVFVWV1hZWmNkZWZnaGlqc3R1dnd4eXqDhIWGh4iJipKTlJWWl5iZmqKjpKWmp6ipqrKztLW2t7i5usLDxMXGx8jJytLT1NXW19jZ2uHi4+Tl5ufo6erx8vP09fb3+Pn6/9oACAEBAAA/ACv/2Q==";
    const TINY_WEBP_LOSSLESS_B64: &str = "UklGRh4AAABXRUJQVlA4TBEAAAAvAkAAAAdQ5CrUo/+BiOh/AAA=";
    const TINY_WEBP_LOSSY_B64: &str =
        "UklGRjoAAABXRUJQVlA4IC4AAADwAQCdASoDAAIAAsBMJaACdLoB+AAAYgAA7PMr+b/8KtwxDNV/87BsS7XgAAAA";

    /// Walk a PNG checking every CRC; returns the chunk types.
    pub(crate) fn png_chunk_types_checked(bytes: &[u8]) -> Vec<String> {
        let mut types = Vec::new();
        png_walk(bytes, |c| {
            let stored = &c.raw[c.raw.len() - 4..];
            let crc = crc32(&c.raw[4..c.raw.len() - 4]);
            assert_eq!(stored, crc.to_be_bytes(), "crc of {:?}", c.ty);
            types.push(String::from_utf8_lossy(&c.ty).into_owned());
            Ok(())
        })
        .expect("valid png");
        types
    }

    fn check_signed(labeled: &[u8], s: &crate::label::Signer, slot: SignatureSlot) -> Aigc {
        let a = read_aigc(labeled).expect("readable").expect("present");
        let d: [u8; 32] = Sha256::digest(canonical_bytes(labeled).expect("canon")).into();
        assert_eq!(verify(&s.verifying_key(), &a, &d), Ok(slot));
        a
    }

    #[test]
    fn detects_formats() {
        assert_eq!(detect_format(&make_png(1, 1)), Some(ImageFormat::Png));
        assert_eq!(detect_format(&tiny_jpeg()), Some(ImageFormat::Jpeg));
        assert_eq!(detect_format(&tiny_webps().0), Some(ImageFormat::WebP));
        assert_eq!(detect_format(b"GIF89a"), None);
        assert_eq!(detect_format(b""), None);
    }

    #[test]
    fn png_labeled_once_with_valid_crcs_and_relabel_replaces() {
        let (l, s) = test_labeler();
        let png = make_png(16, 9);
        assert_eq!(read_aigc(&png).expect("ok"), None);
        let id = crate::label::new_produce_id();
        let out = label_image(&png, &l, &id).expect("labeled");
        let types = png_chunk_types_checked(&out);
        assert_eq!(types, ["IHDR", "iTXt", "IDAT", "IEND"]);
        let a = check_signed(&out, &s, SignatureSlot::Producer);
        assert_eq!(a.produce_id, id);
        assert_eq!(
            canonical_bytes(&out).expect("canon"),
            png,
            "strip gives back the input"
        );
        let out2 = label_image(&out, &l, "shenhe-second").expect("relabeled");
        assert_eq!(
            png_chunk_types_checked(&out2)
                .iter()
                .filter(|t| *t == "iTXt")
                .count(),
            1
        );
        assert_eq!(
            check_signed(&out2, &s, SignatureSlot::Producer).produce_id,
            "shenhe-second"
        );
    }

    #[test]
    fn jpeg_labeled_after_app0_and_relabel_replaces() {
        let (l, s) = test_labeler();
        let jpg = tiny_jpeg();
        let out = label_image(&jpg, &l, "shenhe-j1").expect("labeled");
        // SOI, APP0 (JFIF) then our APP1.
        let app0_len = usize::from(u16::from_be_bytes([jpg[4], jpg[5]]));
        let at = 4 + app0_len;
        assert_eq!(&out[at..at + 2], &[0xff, 0xe1]);
        assert_eq!(
            &out[at + 4..at + 4 + JPEG_XMP_HEADER.len()],
            JPEG_XMP_HEADER
        );
        check_signed(&out, &s, SignatureSlot::Producer);
        assert_eq!(canonical_bytes(&out).expect("canon"), jpg);
        let out2 = label_image(&out, &l, "shenhe-j2").expect("relabel");
        assert_eq!(aigc_payloads(&out2).expect("ok").len(), 1);
        assert_eq!(out2.len(), out.len());
    }

    #[test]
    fn webp_simple_files_become_vp8x_with_xmp() {
        let (l, s) = test_labeler();
        let (lossless, lossy) = tiny_webps();
        for src in [lossless, lossy] {
            let out = label_image(&src, &l, "shenhe-w").expect("labeled");
            assert_eq!(&out[12..16], b"VP8X");
            assert_eq!(out[20] & VP8X_FLAG_XMP, VP8X_FLAG_XMP);
            let riff = u32::from_le_bytes([out[4], out[5], out[6], out[7]]) as usize;
            assert_eq!(riff + 8, out.len());
            check_signed(&out, &s, SignatureSlot::Producer);
            let out2 = label_image(&out, &l, "shenhe-v").expect("relabel");
            assert_eq!(aigc_payloads(&out2).expect("ok").len(), 1);
            assert_eq!(out2.len(), out.len());
            // Canvas 3×2 stored as width-1, height-1.
            assert_eq!(&out[24..30], &[2, 0, 0, 1, 0, 0]);
        }
    }

    #[test]
    fn duplicated_blocks_are_reported_and_replaced() {
        let (l, s) = test_labeler();
        let png = make_png(4, 4);
        let labeled = label_image(&png, &l, "shenhe-a").expect("labeled");
        // Add a legacy tEXt AIGC chunk after IHDR: now two blocks.
        let json = read_aigc(&labeled).expect("ok").expect("some").to_json();
        let mut body = b"tEXt".to_vec();
        body.extend_from_slice(b"AIGC\0");
        body.extend_from_slice(json.as_bytes());
        let mut chunk = ((body.len() - 4) as u32).to_be_bytes().to_vec();
        chunk.extend_from_slice(&body);
        chunk.extend_from_slice(&crc32(&body).to_be_bytes());
        let mut dup = labeled[..33].to_vec();
        dup.extend_from_slice(&chunk);
        dup.extend_from_slice(&labeled[33..]);
        assert!(matches!(read_aigc(&dup), Err(LabelError::Duplicated(2))));
        let fixed = label_image(&dup, &l, "shenhe-b").expect("relabel");
        assert_eq!(
            check_signed(&fixed, &s, SignatureSlot::Producer).produce_id,
            "shenhe-b"
        );
    }

    #[test]
    fn upstream_block_is_propagated() {
        let (l, s) = test_labeler();
        let upstream = Aigc::first_write("TENCENT-XYZ", "up-123", "theirs".into());
        let packet = build_packet(&upstream.to_json());
        let png = png_insert(&make_png(4, 4), &packet).expect("insert");
        let out = label_image(&png, &l, "shenhe-p").expect("labeled");
        let a = check_signed(&out, &s, SignatureSlot::Propagator);
        assert_eq!(a.content_producer, "TENCENT-XYZ");
        assert_eq!(a.produce_id, "up-123");
        assert_eq!(a.reserved_code1, "theirs");
        assert_eq!(a.content_propagator, "SHENHE-TEST-001");
        assert_eq!(a.propagate_id, "shenhe-p");
    }

    #[test]
    fn foreign_xmp_prefix_is_read() {
        let json = Aigc::first_write("X", "Y", String::new()).to_json();
        let packet = format!(
            "<x:xmpmeta xmlns:x='adobe:ns:meta/'><rdf:RDF><rdf:Description xmlns:tc='{TC260_NS}'><tc:AIGC>{}</tc:AIGC></rdf:Description></rdf:RDF></x:xmpmeta>",
            json.replace('"', "&quot;")
        );
        let jpg = jpeg_insert(&tiny_jpeg(), &packet).expect("insert");
        assert_eq!(read_aigc(&jpg).expect("ok").expect("some").produce_id, "Y");
    }

    #[test]
    fn malformed_inputs_are_errors_not_panics() {
        let (l, _) = test_labeler();
        let png = make_png(4, 4);
        let jpg = tiny_jpeg();
        let (webp, _) = tiny_webps();
        for src in [&png, &jpg, &webp] {
            for cut in 0..src.len() {
                let _ = label_image(&src[..cut], &l, "x");
                let _ = read_aigc(&src[..cut]);
            }
            // Flip each byte in the header area.
            for i in 0..src.len().min(64) {
                let mut m = src.clone();
                m[i] ^= 0xff;
                let _ = label_image(&m, &l, "x");
                let _ = read_aigc(&m);
            }
        }
        let mut huge_len = png.clone();
        huge_len[33..37].copy_from_slice(&0xffff_fff0u32.to_be_bytes());
        assert!(matches!(
            read_aigc(&huge_len),
            Err(LabelError::Malformed { .. })
        ));
        let mut big_riff = webp.clone();
        big_riff[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(label_image(&big_riff, &l, "x").is_err());
        assert!(matches!(
            label_image(&vec![0u8; MAX_IMAGE_BYTES + 1], &l, "x"),
            Err(LabelError::TooLarge { .. })
        ));
        assert!(matches!(
            label_image(b"GIF89a", &l, "x"),
            Err(LabelError::UnknownFormat)
        ));
    }

    #[test]
    fn crc_matches_known_value() {
        assert_eq!(crc32(b"IEND"), 0xae42_6082);
    }
}
