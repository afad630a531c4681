//! The lexer: template text → items (text runs and the tokens of each action),
//! following Go's `text/template/parse` lexer: `{{`/`}}` delimiters, `{{- ` and ` -}}`
//! trim markers, `{{/* */}}` comments, Go string, raw string, char and number literals.

use super::TemplateError;

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Tok {
    /// Literal text between actions.
    Text(String),
    /// `{{` (the action's start).
    Open,
    /// `}}`.
    Close,
    /// `.` on its own: the data at the cursor.
    Dot,
    /// `.name` (one segment; chains are consecutive `Field`s).
    Field(String),
    /// `$` or `$name` (without the `$`).
    Var(String),
    /// A keyword or a function name.
    Ident(String),
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Nil,
    LParen,
    RParen,
    Pipe,
    Comma,
    Declare,
    Assign,
    /// Whitespace inside an action (it separates a command's arguments).
    Space,
}

fn err(msg: impl Into<String>) -> TemplateError {
    TemplateError::Parse(msg.into())
}

/// Splits `src` into tokens. Trim markers are applied here, so the parser sees
/// already-trimmed text.
pub(super) fn lex(src: &str) -> Result<Vec<Tok>, TemplateError> {
    let mut out = Vec::new();
    let mut rest = src;
    let mut trim_next_text = false;
    loop {
        let (text, after) = match rest.find("{{") {
            Some(i) => (&rest[..i], Some(&rest[i + 2..])),
            None => (rest, None),
        };
        let mut text = text;
        if trim_next_text {
            text = text.trim_start_matches(is_space);
        }
        let Some(after) = after else {
            if !text.is_empty() {
                out.push(Tok::Text(text.to_string()));
            }
            return Ok(out);
        };
        // `{{- ` trims the text before it.
        let mut inner = after;
        if let Some(stripped) = after.strip_prefix('-')
            && stripped.starts_with(is_space)
        {
            text = text.trim_end_matches(is_space);
            inner = stripped;
        }
        if !text.is_empty() {
            out.push(Tok::Text(text.to_string()));
        }
        let (consumed, trim_after) = lex_action(inner, &mut out)?;
        trim_next_text = trim_after;
        rest = &inner[consumed..];
    }
}

fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

/// Lexes one action starting after `{{` (and a trim marker); returns the bytes
/// consumed up to and including `}}`, and whether it ended with ` -}}`.
fn lex_action(src: &str, out: &mut Vec<Tok>) -> Result<(usize, bool), TemplateError> {
    let b = src.as_bytes();
    let mut i = 0;
    // A comment is the whole action: `{{/* ... */}}`, with optional trim markers.
    let lead = src.trim_start_matches(is_space);
    if lead.starts_with("/*") {
        let start = src.len() - lead.len();
        let end = src[start..]
            .find("*/")
            .ok_or_else(|| err("unclosed comment"))?;
        let after = &src[start + end + 2..];
        let trimmed = after.trim_start_matches(is_space);
        if let Some(r) = trimmed.strip_prefix("-}}") {
            if trimmed.len() == after.len() {
                return Err(err("comment ends before closing delimiter"));
            }
            return Ok((src.len() - r.len(), true));
        }
        if let Some(r) = after.strip_prefix("}}") {
            return Ok((src.len() - r.len(), false));
        }
        return Err(err("comment ends before closing delimiter"));
    }
    out.push(Tok::Open);
    loop {
        if i >= b.len() {
            return Err(err("unclosed action"));
        }
        let c = b[i];
        // ` -}}` closes and trims what follows.
        if is_space(c as char) {
            while i < b.len() && is_space(b[i] as char) {
                i += 1;
            }
            if src[i..].starts_with("-}}") {
                out.push(Tok::Close);
                return Ok((i + 3, true));
            }
            out.push(Tok::Space);
            continue;
        }
        if src[i..].starts_with("}}") {
            out.push(Tok::Close);
            return Ok((i + 2, false));
        }
        match c {
            b'(' => {
                out.push(Tok::LParen);
                i += 1;
            }
            b')' => {
                out.push(Tok::RParen);
                i += 1;
            }
            b'|' => {
                out.push(Tok::Pipe);
                i += 1;
            }
            b',' => {
                out.push(Tok::Comma);
                i += 1;
            }
            b'=' => {
                out.push(Tok::Assign);
                i += 1;
            }
            b':' => {
                if b.get(i + 1) == Some(&b'=') {
                    out.push(Tok::Declare);
                    i += 2;
                } else {
                    return Err(err("expected :="));
                }
            }
            b'"' => {
                let (s, n) = lex_quoted(&src[i..])?;
                out.push(Tok::Str(s));
                i += n;
            }
            b'`' => {
                let end = src[i + 1..]
                    .find('`')
                    .ok_or_else(|| err("unterminated raw quoted string"))?;
                out.push(Tok::Str(src[i + 1..i + 1 + end].to_string()));
                i += end + 2;
            }
            b'\'' => {
                let (ch, n) = lex_char(&src[i..])?;
                out.push(Tok::Int(ch as i64));
                i += n;
            }
            b'.' => {
                // `.5` is a number; `.name` a field; `.` the dot.
                if b.get(i + 1).is_some_and(u8::is_ascii_digit) {
                    let n = lex_number(&src[i..], out)?;
                    i += n;
                } else {
                    let n = ident_len(&src[i + 1..]);
                    if n == 0 {
                        out.push(Tok::Dot);
                        i += 1;
                    } else {
                        out.push(Tok::Field(src[i + 1..i + 1 + n].to_string()));
                        i += 1 + n;
                    }
                }
            }
            b'$' => {
                let n = ident_len(&src[i + 1..]);
                out.push(Tok::Var(src[i + 1..i + 1 + n].to_string()));
                i += 1 + n;
            }
            b'+' | b'-' | b'0'..=b'9' => {
                let n = lex_number(&src[i..], out)?;
                i += n;
            }
            _ => {
                let n = ident_len(&src[i..]);
                if n == 0 {
                    let ch = src[i..].chars().next().unwrap_or('?');
                    return Err(err(format!("unexpected {ch:?} in command")));
                }
                let word = &src[i..i + n];
                out.push(match word {
                    "true" => Tok::Bool(true),
                    "false" => Tok::Bool(false),
                    "nil" => Tok::Nil,
                    _ => Tok::Ident(word.to_string()),
                });
                i += n;
            }
        }
    }
}

/// Length of a Go identifier (letters, digits, `_`) at the start of `s`.
fn ident_len(s: &str) -> usize {
    s.char_indices()
        .find(|(_, c)| !(c.is_alphanumeric() || *c == '_'))
        .map_or(s.len(), |(i, _)| i)
}

fn lex_quoted(s: &str) -> Result<(String, usize), TemplateError> {
    let mut out = String::new();
    let mut chars = s.char_indices().skip(1);
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((out, i + 1)),
            '\n' => break,
            '\\' => {
                let (_, e) = chars
                    .next()
                    .ok_or_else(|| err("unterminated quoted string"))?;
                match e {
                    'n' => out.push('\n'),
                    't' => out.push('\t'),
                    'r' => out.push('\r'),
                    'a' => out.push('\x07'),
                    'b' => out.push('\x08'),
                    'f' => out.push('\x0c'),
                    'v' => out.push('\x0b'),
                    '\\' => out.push('\\'),
                    '"' => out.push('"'),
                    '\'' => out.push('\''),
                    'x' | 'u' | 'U' => {
                        let n = match e {
                            'x' => 2,
                            'u' => 4,
                            _ => 8,
                        };
                        let mut v = 0u32;
                        for _ in 0..n {
                            let (_, h) = chars.next().ok_or_else(|| err("bad escape"))?;
                            v = v * 16 + h.to_digit(16).ok_or_else(|| err("bad escape"))?;
                        }
                        out.push(char::from_u32(v).ok_or_else(|| err("bad escape"))?);
                    }
                    _ => return Err(err("unknown escape sequence")),
                }
            }
            c => out.push(c),
        }
    }
    Err(err("unterminated quoted string"))
}

fn lex_char(s: &str) -> Result<(char, usize), TemplateError> {
    let mut it = s.char_indices().skip(1);
    let (_, c) = it
        .next()
        .ok_or_else(|| err("unterminated character constant"))?;
    let c = if c == '\\' {
        let (_, e) = it
            .next()
            .ok_or_else(|| err("unterminated character constant"))?;
        match e {
            'n' => '\n',
            't' => '\t',
            '\\' => '\\',
            '\'' => '\'',
            '0' => '\0',
            _ => return Err(err("unknown escape sequence")),
        }
    } else {
        c
    };
    match it.next() {
        Some((i, '\'')) => Ok((c, i + 1)),
        _ => Err(err("unterminated character constant")),
    }
}

/// Go number literals: optional sign, decimal/hex/octal/binary integers (with `_`),
/// decimal floats with exponent.
fn lex_number(s: &str, out: &mut Vec<Tok>) -> Result<usize, TemplateError> {
    let n = s
        .char_indices()
        .skip(1)
        .find(|&(i, c)| {
            let prev = s.as_bytes()[i - 1];
            !(c.is_ascii_alphanumeric()
                || c == '_'
                || c == '.'
                || ((c == '+' || c == '-') && matches!(prev, b'e' | b'E' | b'p' | b'P')))
        })
        .map_or(s.len(), |(i, _)| i);
    let word = &s[..n];
    let bad = || err(format!("bad number syntax: {word:?}"));
    let (neg, digits) = match word.as_bytes().first() {
        Some(b'-') => (true, &word[1..]),
        Some(b'+') => (false, &word[1..]),
        _ => (false, word),
    };
    if digits.is_empty() {
        return Err(bad());
    }
    let clean: String = digits.chars().filter(|&c| c != '_').collect();
    let lower = clean.to_ascii_lowercase();
    let int = if let Some(h) = lower.strip_prefix("0x") {
        i64::from_str_radix(h, 16).ok()
    } else if let Some(o) = lower.strip_prefix("0o") {
        i64::from_str_radix(o, 8).ok()
    } else if let Some(b) = lower.strip_prefix("0b") {
        i64::from_str_radix(b, 2).ok()
    } else if lower.len() > 1 && lower.starts_with('0') && lower.bytes().all(|c| c.is_ascii_digit())
    {
        i64::from_str_radix(&lower[1..], 8).ok()
    } else if lower.bytes().all(|c| c.is_ascii_digit()) {
        lower.parse::<i64>().ok()
    } else {
        None
    };
    if let Some(v) = int {
        out.push(Tok::Int(if neg { -v } else { v }));
        return Ok(n);
    }
    if lower.starts_with("0x") || !lower.bytes().any(|c| c.is_ascii_digit()) {
        return Err(bad());
    }
    let f: f64 = lower.parse().map_err(|_| bad())?;
    out.push(Tok::Float(if neg { -f } else { f }));
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_and_comments() {
        let t = lex("a  {{- .x -}}  b{{/* c */}}d").unwrap();
        assert_eq!(
            t,
            vec![
                Tok::Text("a".into()),
                Tok::Open,
                Tok::Space,
                Tok::Field("x".into()),
                Tok::Close,
                Tok::Text("b".into()),
                Tok::Text("d".into()),
            ]
        );
    }

    #[test]
    fn literals() {
        let t = lex(r#"{{-3 "a\nb" `r\n` 'x' 1.5e3 0x1F}}"#).unwrap();
        assert_eq!(
            t,
            vec![
                Tok::Open,
                Tok::Int(-3),
                Tok::Space,
                Tok::Str("a\nb".into()),
                Tok::Space,
                Tok::Str("r\\n".into()),
                Tok::Space,
                Tok::Int(120),
                Tok::Space,
                Tok::Float(1500.0),
                Tok::Space,
                Tok::Int(31),
                Tok::Close,
            ]
        );
    }

    #[test]
    fn unclosed() {
        assert!(lex("{{ .a").is_err());
        assert!(lex("{{ \"abc }}").is_err());
    }
}
