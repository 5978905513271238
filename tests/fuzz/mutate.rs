//! The mutator: from a valid input, a broken one. Byte edits (bit flips, inserts, deletes,
//! duplicates, truncation, splicing with another input), text edits that aim at parsers
//! (numbers replaced by interesting values, syntax tokens, awkward Unicode — control
//! characters, U+FFFD, escaped lone surrogates, invalid UTF-8 — whole lines duplicated or
//! dropped, now and then a 100 KB record), for safetensors files edits of the JSON header and
//! of its 8-byte length, and for binary files (PyTorch zip and pickle streams) little-endian
//! integers overwritten with interesting values (lengths, offsets, counts).

use emrclass::rng::Rng;

/// Mutated inputs stay below this size (a 100 KB record fits), so that every case is quick.
pub const MAX_INPUT: usize = 400_000;

/// How a file is laid out, for the edits that know about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    Text,
    Safetensors,
    /// PyTorch checkpoints: a zip archive or a legacy pickle stream.
    Binary,
}

impl Layout {
    pub fn of(file: &str) -> Layout {
        if file.ends_with(".safetensors") {
            Layout::Safetensors
        } else if file.ends_with(".bin") {
            Layout::Binary
        } else {
            Layout::Text
        }
    }
}

const NUMBERS: &[&str] = &[
    "0",
    "-0",
    "1",
    "-1",
    "2",
    "255",
    "65536",
    "2147483648",
    "4294967295",
    "4294967296",
    "9007199254740993",
    "1152921504606846976",
    "9223372036854775807",
    "18446744073709551615",
    "18446744073709551616",
    "123456789012345678901234567890",
    "1e308",
    "-1e308",
    "1e309",
    "5e-324",
    "1e-400",
    "0.5",
    "-2.5",
    "NaN",
    "inf",
    "-Infinity",
    "00",
    "1e2",
];

/// Unicode and escapes that trouble text handling: controls, U+FFFD, BOM, zero-width and
/// bidi marks, combining marks, case mappings that change length, astral characters, JSON
/// escapes of lone surrogates and NUL, HTML entities (one out of range), CSV/TSV syntax.
const PIECES: &[&str] = &[
    "\u{0}",
    "\u{1}",
    "\u{7}",
    "\u{1b}",
    "\u{7f}",
    "\u{85}",
    "\u{a0}",
    "\u{2028}",
    "\u{fffd}",
    "\u{feff}",
    "\u{200b}",
    "\u{202e}",
    "\u{301}\u{301}\u{301}",
    "İ",
    "ß",
    "ﬃ",
    "Ω",
    "😀",
    "𠀀",
    "\r",
    "\r\n",
    "\t",
    "\\ud800",
    "\\udfff",
    "\\ud83d\\ude00",
    "\\ud800\\u0041",
    "\\u0000",
    "\\",
    "\\u12",
    "&amp;",
    "&#0;",
    "&#xD800;",
    "&#1114112;",
    "&#99999999999;",
    "\"",
    "\"\"",
    ",",
    ":",
    "[",
    "]",
    "{",
    "}",
    "null",
    "true",
    "[]",
    "{}",
    "\"\"",
    "[[]]",
    "[UNK]",
    "[CLS]",
    "##",
    " ",
];

/// Byte sequences that are not UTF-8: a stray continuation, an overlong NUL, an encoded
/// surrogate, a truncated sequence, 0xFF.
const INVALID_UTF8: &[&[u8]] = &[b"\x80", b"\xc0\x80", b"\xed\xa0\x80", b"\xe4\xb8", b"\xff"];

fn below(rng: &mut Rng, n: usize) -> usize {
    if n == 0 {
        0
    } else {
        (rng.next_u64() % n as u64) as usize
    }
}

fn chance(rng: &mut Rng, one_in: u64) -> bool {
    rng.next_u64().is_multiple_of(one_in)
}

fn pick<'a, T>(rng: &mut Rng, items: &'a [T]) -> &'a T {
    &items[below(rng, items.len())]
}

/// A new input from `base`: 1 to 4 stacked edits; `other` is for splicing.
pub fn mutate(rng: &mut Rng, base: &[u8], other: &[u8], layout: Layout) -> Vec<u8> {
    let mut bytes = base.to_vec();
    for _ in 0..1 + below(rng, 4) {
        bytes = match layout {
            Layout::Safetensors => safetensors_edit(rng, &bytes, other),
            Layout::Binary => binary_edit(rng, &bytes, other),
            Layout::Text => edit(rng, &bytes, other),
        };
        if bytes.len() > MAX_INPUT {
            bytes.truncate(MAX_INPUT);
        }
    }
    bytes
}

/// One edit of a text (or any) file.
pub fn edit(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut b = input.to_vec();
    let n = b.len();
    match below(rng, 14) {
        0 if n > 0 => {
            let i = below(rng, n);
            b[i] ^= 1 << below(rng, 8);
        }
        1 if n > 0 => {
            let i = below(rng, n);
            b[i] = *pick(rng, b"\0\xff\"\\,\t\n{}[]:0-.e ");
        }
        2 => {
            let at = below(rng, n + 1);
            let extra: Vec<u8> = (0..1 + below(rng, 8))
                .map(|_| rng.next_u64() as u8)
                .collect();
            b.splice(at..at, extra);
        }
        3 if n > 0 => {
            let at = below(rng, n);
            let len = 1 + below(rng, (n - at).min(64));
            b.drain(at..at + len);
        }
        4 if n > 0 => {
            let at = below(rng, n);
            let len = 1 + below(rng, (n - at).min(256));
            let copy = b[at..at + len].to_vec();
            let to = below(rng, n + 1);
            b.splice(to..to, copy);
        }
        5 => b.truncate(below(rng, n + 1)),
        6 => {
            let cut = below(rng, n + 1);
            let from = below(rng, other.len() + 1);
            b.truncate(cut);
            b.extend_from_slice(&other[from..]);
        }
        7 => return replace_number(rng, &b),
        8 => {
            let piece = if chance(rng, 4) {
                pick(rng, INVALID_UTF8).to_vec()
            } else {
                pick(rng, PIECES).as_bytes().to_vec()
            };
            let at = inside_string(rng, &b);
            b.splice(at..at, piece);
        }
        9 => return line_edit(rng, &b),
        12 => return replace_value(rng, &b),
        10 if chance(rng, 16) => {
            let at = inside_string(rng, &b);
            b.splice(at..at, big_record(rng));
        }
        11 => {
            // An awkward character written many times: long words, long lines.
            let piece = pick(rng, PIECES).as_bytes().repeat(1 + below(rng, 300));
            let at = inside_string(rng, &b);
            b.splice(at..at, piece);
        }
        _ => {
            let at = below(rng, n + 1);
            b.splice(at..at, pick(rng, PIECES).bytes());
        }
    }
    b
}

/// A position just inside a JSON string (after a random quote) half the time, else anywhere.
fn inside_string(rng: &mut Rng, b: &[u8]) -> usize {
    let quotes: Vec<usize> = b
        .iter()
        .enumerate()
        .filter(|(_, &c)| c == b'"')
        .map(|(i, _)| i + 1)
        .collect();
    if !quotes.is_empty() && chance(rng, 2) {
        *pick(rng, &quotes)
    } else {
        below(rng, b.len() + 1)
    }
}

/// About 100 KB of one kind of text: CJK characters, one unbroken ASCII word, digits (a huge
/// number), or random valid Unicode.
fn big_record(rng: &mut Rng) -> Vec<u8> {
    let size = 100_000;
    match below(rng, 4) {
        0 => "患者胸闷痛头晕血压糖尿病".repeat(size / 36).into_bytes(),
        1 => vec![b'a'; size],
        2 => vec![b'7'; size],
        _ => {
            let mut s = String::new();
            while s.len() < size {
                if let Some(c) = char::from_u32(below(rng, 0x11_0000) as u32) {
                    s.push(c);
                }
            }
            s.into_bytes()
        }
    }
}

/// Replaces one number of the text (an optional sign, digits, fraction, exponent) by an
/// interesting one.
fn replace_number(rng: &mut Rng, b: &[u8]) -> Vec<u8> {
    let mut spans = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_digit() {
            let start = if i > 0 && b[i - 1] == b'-' { i - 1 } else { i };
            while i < b.len() && (b[i].is_ascii_digit() || b".eE+-".contains(&b[i])) {
                i += 1;
            }
            spans.push((start, i));
        } else {
            i += 1;
        }
    }
    let mut out = b.to_vec();
    if spans.is_empty() {
        return out;
    }
    let (start, end) = *pick(rng, &spans);
    out.splice(start..end, pick(rng, NUMBERS).bytes());
    out
}

/// JSON values a field may hold instead of its own: other types, empty and odd strings (a
/// path that is not there, one that climbs out of the folder), nested containers.
const VALUES: &[&str] = &[
    "null",
    "true",
    "0",
    "-1",
    "1e308",
    "\"\"",
    "\"x\"",
    "\"/nonexistent/folder\"",
    "\"../../..\"",
    "\".\"",
    "\"\\u0000\"",
    "\"\\ud800\"",
    "[]",
    "{}",
    "[[]]",
    "[null]",
    "{\"\": {}}",
];

/// Replaces one JSON string literal or `null`/`true`/`false` by a value of `VALUES`: what
/// number replacement does for numbers, for the other scalars.
fn replace_value(rng: &mut Rng, b: &[u8]) -> Vec<u8> {
    let mut spans = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'"' {
            let start = i;
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            spans.push((start, (i + 1).min(b.len())));
            i += 1;
        } else if [&b"null"[..], b"true", b"false"]
            .iter()
            .any(|w| b[i..].starts_with(w))
        {
            let len = if b[i] == b'f' { 5 } else { 4 };
            spans.push((i, i + len));
            i += len;
        } else {
            i += 1;
        }
    }
    let mut out = b.to_vec();
    if spans.is_empty() {
        return out;
    }
    let (start, end) = *pick(rng, &spans);
    out.splice(start..end, pick(rng, VALUES).bytes());
    out
}

/// Line edits: one line repeated (up to 64 times), dropped, or two lines swapped.
fn line_edit(rng: &mut Rng, b: &[u8]) -> Vec<u8> {
    let mut lines: Vec<&[u8]> = b.split(|&c| c == b'\n').collect();
    let n = lines.len();
    let i = below(rng, n);
    match below(rng, 3) {
        0 => {
            let line = lines[i];
            for _ in 0..1 + below(rng, 64) {
                lines.insert(i, line);
            }
        }
        1 if n > 1 => {
            lines.remove(i);
        }
        _ => lines.swap(i, below(rng, n)),
    }
    lines.join(&b'\n')
}

/// Interesting values for the header length: around the real one and the file's, 2^32, the
/// crate's 100 MB limit, 2^60, u64::MAX.
fn header_lengths(real: u64, file: u64) -> [u64; 14] {
    [
        0,
        1,
        7,
        real.saturating_sub(1),
        real + 1,
        file.saturating_sub(8),
        file.saturating_sub(7),
        file,
        1 << 31,
        1 << 32,
        100_000_001,
        1 << 60,
        i64::MAX as u64,
        u64::MAX,
    ]
}

/// One edit of a safetensors file: mostly of its JSON header (the length then fixed up most of
/// the time, so the header's content is what is tested), sometimes of the length, sometimes of
/// any byte.
fn safetensors_edit(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let header_len = (input.len() >= 8)
        .then(|| u64::from_le_bytes(input[..8].try_into().unwrap()))
        .filter(|&n| n <= (input.len() - 8) as u64)
        .map(|n| n as usize);
    let Some(n) = header_len else {
        return edit(rng, input, other);
    };
    match below(rng, 10) {
        0..=5 => {
            let header = &input[8..8 + n];
            let new = if chance(rng, 2) {
                replace_number(rng, header)
            } else {
                edit(rng, header, other)
            };
            let len = if chance(rng, 8) {
                *pick(rng, &header_lengths(new.len() as u64, input.len() as u64))
            } else {
                new.len() as u64
            };
            let mut out = len.to_le_bytes().to_vec();
            out.extend_from_slice(&new);
            out.extend_from_slice(&input[8 + n..]);
            out
        }
        6 | 7 => {
            let mut out = input.to_vec();
            let len = *pick(rng, &header_lengths(n as u64, input.len() as u64));
            out[..8].copy_from_slice(&len.to_le_bytes());
            out
        }
        _ => edit(rng, input, other),
    }
}

/// Interesting values for a little-endian integer field: small, boundary and huge.
const INTEGERS: &[u64] = &[
    0,
    1,
    0x7f,
    0x80,
    0xff,
    0x7fff,
    0xffff,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    1 << 32,
    1 << 40,
    1 << 60,
    i64::MAX as u64,
    u64::MAX,
];

/// One edit of a binary file: half the time an integer field (1, 2, 4 or 8 bytes, little-endian,
/// at any offset) set to an interesting value — a zip's sizes and offsets, a pickle's lengths
/// and memo indices, a legacy file's element counts — else a byte edit.
fn binary_edit(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let width = *pick(rng, &[1usize, 2, 4, 8]);
    if input.len() < width || chance(rng, 2) {
        return edit(rng, input, other);
    }
    let mut out = input.to_vec();
    let at = below(rng, input.len() - width + 1);
    let value = if chance(rng, 4) {
        input.len() as u64 + below(rng, 3) as u64 - 1
    } else {
        *pick(rng, INTEGERS)
    };
    out[at..at + width].copy_from_slice(&value.to_le_bytes()[..width]);
    out
}
