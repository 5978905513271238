//! CSV and TSV records, read strictly. A field that starts with `"` is quoted (RFC 4180): it may
//! hold delimiters, line breaks and `""` (one quote), and its closing quote must be followed by
//! the delimiter, a line break or the end of the file. Anything else is a broken record, named
//! by the line it starts on: a quote that never closes (which would otherwise swallow every line
//! after it into one field), or text after a closing quote (an unclosed quote that met the next
//! quote in the file, or a stray one). A quote inside an unquoted field is an ordinary
//! character, as Excel and pandas read it.
//!
//! After a broken record the reader starts again at the line after the one the record began
//! on, so one bad line costs one record: the lines an unclosed quote would have swallowed are
//! read as their own records. Works on bytes (quotes, delimiters and line breaks are ASCII, and
//! never part of a UTF-8 or GBK multi-byte character); the caller decodes the fields.

/// One record: the line it starts on (1-based) and its fields' bytes.
#[derive(Debug, PartialEq)]
pub struct Record {
    pub line: usize,
    pub fields: Vec<Vec<u8>>,
}

/// A record that cannot be read: the line it starts on and what is wrong.
#[derive(Debug, PartialEq)]
pub struct Broken {
    pub line: usize,
    pub why: String,
}

enum State {
    FieldStart,
    Unquoted,
    /// Inside quotes opened on this line.
    Quoted(usize),
    AfterQuote(usize),
}

/// Every record of `bytes` (a leading UTF-8 byte-order mark is dropped); blank lines are skipped.
pub fn records(bytes: &[u8], delimiter: u8) -> Vec<Result<Record, Broken>> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let mut out = Vec::new();
    let (mut pos, mut line) = (0, 1);
    while pos < bytes.len() {
        let (start, first_line) = (pos, line);
        match record(bytes, &mut pos, &mut line, delimiter) {
            Ok(fields) => {
                let blank = fields.len() == 1 && fields[0].iter().all(u8::is_ascii_whitespace);
                if !blank {
                    out.push(Ok(Record {
                        line: first_line,
                        fields,
                    }));
                }
            }
            Err(why) => {
                out.push(Err(Broken {
                    line: first_line,
                    why,
                }));
                // Again from the line after the one the broken record began on.
                pos = bytes[start..]
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(bytes.len(), |i| start + i + 1);
                line = first_line + 1;
            }
        }
    }
    out
}

/// Reads one record from `pos`, leaving `pos` after its line break.
fn record(
    bytes: &[u8],
    pos: &mut usize,
    line: &mut usize,
    delimiter: u8,
) -> Result<Vec<Vec<u8>>, String> {
    let mut fields = Vec::new();
    let mut field = Vec::new();
    let mut state = State::FieldStart;
    loop {
        let b = bytes.get(*pos).copied();
        if let State::Quoted(opened) = state {
            match b {
                None => {
                    return Err(format!(
                        "the quote that opens a field on line {opened} never closes (it would swallow every line after it)"
                    ))
                }
                Some(b'"') if bytes.get(*pos + 1) == Some(&b'"') => {
                    field.push(b'"');
                    *pos += 2;
                }
                Some(b'"') => {
                    state = State::AfterQuote(opened);
                    *pos += 1;
                }
                Some(c) => {
                    *line += usize::from(c == b'\n');
                    field.push(c);
                    *pos += 1;
                }
            }
            continue;
        }
        // Outside quotes, the end of the file or of the line (\n or \r\n) ends the record.
        let eol = match b {
            None => Some(0),
            Some(b'\n') => Some(1),
            Some(b'\r') if bytes.get(*pos + 1) == Some(&b'\n') => Some(2),
            _ => None,
        };
        if let Some(n) = eol {
            fields.push(field);
            *pos += n;
            *line += usize::from(n > 0);
            return Ok(fields);
        }
        let c = b.expect("not the end");
        match state {
            _ if c == delimiter => {
                fields.push(std::mem::take(&mut field));
                state = State::FieldStart;
            }
            State::AfterQuote(opened) => {
                let at = if *line == opened {
                    String::new()
                } else {
                    format!(" (on line {line})")
                };
                return Err(format!(
                    "text after the closing quote of the field opened on line {opened}{at}: an unclosed quote, or a stray one (a field that holds quotes is written \"like \"\"this\"\"\")"
                ));
            }
            State::FieldStart if c == b'"' => state = State::Quoted(*line),
            _ => {
                field.push(c);
                state = State::Unquoted;
            }
        }
        *pos += 1;
    }
}

/// Whether bytes that are not UTF-8 read as GBK / GB18030 double-byte text: every byte above
/// ASCII a lead byte (0x81-0xFE) followed by a trail byte (0x40-0x7E or 0x80-0xFE).
pub fn looks_gbk(bytes: &[u8]) -> bool {
    if std::str::from_utf8(bytes).is_ok() {
        return false;
    }
    let mut i = 0;
    let mut pairs = 0;
    while i < bytes.len() {
        match bytes[i] {
            0x00..=0x7F => i += 1,
            0x81..=0xFE => match bytes.get(i + 1) {
                Some(0x40..=0x7E | 0x80..=0xFE) => {
                    pairs += 1;
                    i += 2;
                }
                _ => return false,
            },
            _ => return false,
        }
    }
    pairs > 0
}

/// What to say of a file that is not UTF-8.
pub fn encoding_advice(bytes: &[u8], path: &std::path::Path) -> String {
    if looks_gbk(bytes) {
        format!(
            "; the file looks GBK/GB18030-encoded (as many Windows tools in China write it): convert it to UTF-8, e.g. `iconv -f GB18030 -t UTF-8 {} > utf8-{}`",
            path.display(),
            path.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned())
        )
    } else {
        "; save the file as UTF-8".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(text: &str) -> Vec<Result<(usize, Vec<String>), usize>> {
        records(text.as_bytes(), b',')
            .into_iter()
            .map(|r| match r {
                Ok(r) => Ok((
                    r.line,
                    r.fields
                        .into_iter()
                        .map(|f| String::from_utf8(f).unwrap())
                        .collect(),
                )),
                Err(b) => Err(b.line),
            })
            .collect()
    }

    fn ok(line: usize, f: &[&str]) -> Result<(usize, Vec<String>), usize> {
        Ok((line, f.iter().map(|s| s.to_string()).collect()))
    }

    #[test]
    fn quoted_fields_hold_delimiters_quotes_and_line_breaks() {
        let got = fields("a,b\n\"x, \"\"y\"\"\",1\r\n\"two\nlines\",2\nplain \"q\" text,3\n\n");
        assert_eq!(
            got,
            vec![
                ok(1, &["a", "b"]),
                ok(2, &["x, \"y\"", "1"]),
                ok(3, &["two\nlines", "2"]),
                ok(5, &["plain \"q\" text", "3"]),
            ]
        );
    }

    #[test]
    fn an_unclosed_quote_costs_its_own_line_only() {
        // Line 2 opens a quote that never closes: the lines after it are records of their own.
        let got = fields("text,label\n\"unclosed,A\nnext,B\nlast,C\n");
        assert_eq!(
            got,
            vec![
                ok(1, &["text", "label"]),
                Err(2),
                ok(3, &["next", "B"]),
                ok(4, &["last", "C"]),
            ]
        );
        // ... and one that meets a later quote: text after it is the error.
        let got = fields("text,label\n\"unclosed,A\nnext,B\n\"quoted\",C\n");
        assert_eq!(
            got,
            vec![
                ok(1, &["text", "label"]),
                Err(2),
                ok(3, &["next", "B"]),
                ok(4, &["quoted", "C"]),
            ]
        );
    }

    #[test]
    fn a_byte_order_mark_is_dropped_and_gbk_is_recognised() {
        assert_eq!(fields("\u{feff}a,b\n"), vec![ok(1, &["a", "b"])]);
        // "患者" in GBK: BB BC D5 DF.
        assert!(looks_gbk(b"text,label\n\xBB\xBC\xD5\xDF,A\n"));
        assert!(!looks_gbk("患者,A".as_bytes()));
        assert!(!looks_gbk(b"\xFF\xFE"));
    }
}
