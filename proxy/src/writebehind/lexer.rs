//! A PostgreSQL-exact lexer for the statements the proxy may acknowledge: identifiers with case
//! folding and quoting, numbers, string constants (standard and E'' escapes, dollar quoting,
//! continuation across newlines), parameters, operators, comments. Whatever it is not certain
//! about is an error, so that the statement passes through untouched. Tokens borrow from the
//! statement text; only a folded word, a quoted name with `""` or a string with escapes owns
//! its text.

use super::reserved;
use std::borrow::Cow;

/// One token of the text `'a`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Token<'a> {
    /// An unquoted identifier or keyword, folded to lower case (ASCII, as PostgreSQL does).
    Word(Cow<'a, str>),
    /// A quoted identifier (`"Name"`), exactly as written inside the quotes.
    QuotedIdent(Cow<'a, str>),
    /// A numeric constant as written (`42`, `1.5`, `.5`, `1e3`).
    Number(&'a str),
    /// A string constant's value after escapes.
    Str(Cow<'a, str>),
    /// `$n`.
    Param(u32),
    /// An operator (`=`, `+`, `-`, `::`, `<>`, …).
    Op(&'a str),
    /// `(`, `)`, `,`, `;`, `.`, `[`, `]`.
    Punct(char),
}

impl Token<'_> {
    /// Whether the token names `name` (given in lower case): an identifier folded to it or
    /// quoted exactly as it.
    pub fn is_name(&self, name: &str) -> bool {
        matches!(self, Token::Word(w) | Token::QuotedIdent(w) if w == name)
    }
}

/// Why the text could not be lexed with certainty.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LexError {
    #[error("unterminated {0}")]
    Unterminated(&'static str),
    #[error("unsupported syntax at byte {0}")]
    Unsupported(usize),
    #[error("invalid escape in string constant at byte {0}")]
    BadEscape(usize),
}

/// PostgreSQL truncates longer identifiers to this many bytes (NAMEDATALEN - 1), so two
/// spellings that differ after it name the same relation: such text is not lexed with
/// certainty (every name of a statement must compare as PostgreSQL compares it).
const MAX_IDENTIFIER_BYTES: usize = 63;

/// Lexes `sql`. `standard_conforming_strings` is the session's setting: when off, backslashes
/// in plain '' strings are escapes (as in E'').
pub fn lex(sql: &str, standard_conforming_strings: bool) -> Result<Vec<Token<'_>>, LexError> {
    let b = sql.as_bytes();
    // About one token per four bytes of SQL: one allocation for most statements (capped: a
    // long text may be one string constant).
    let mut out = Vec::with_capacity((b.len() / 4 + 8).min(256));
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' => i += 1,
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => i = skip_block_comment(b, i)?,
            b'\'' => {
                let (s, n) = string_constant(sql, i, !standard_conforming_strings)?;
                out.push(Token::Str(s));
                i = n;
            }
            b'e' | b'E' if b.get(i + 1) == Some(&b'\'') => {
                let (s, n) = string_constant(sql, i + 1, true)?;
                out.push(Token::Str(s));
                i = n;
            }
            // U&'…', U&"…", B'…', X'…', N'…': not needed for acknowledged forms.
            b'u' | b'U' if b.get(i + 1) == Some(&b'&') => return Err(LexError::Unsupported(i)),
            b'b' | b'B' | b'x' | b'X' | b'n' | b'N' if b.get(i + 1) == Some(&b'\'') => {
                return Err(LexError::Unsupported(i))
            }
            b'"' => {
                let (s, n) = quoted_identifier(sql, i)?;
                if s.is_empty() || s.len() > MAX_IDENTIFIER_BYTES {
                    return Err(LexError::Unsupported(i));
                }
                out.push(Token::QuotedIdent(s));
                i = n;
            }
            b'$' => {
                if b.get(i + 1).is_some_and(u8::is_ascii_digit) {
                    let mut j = i + 1;
                    while j < b.len() && b[j].is_ascii_digit() {
                        j += 1;
                    }
                    if j < b.len() && is_ident_char(b[j]) {
                        return Err(LexError::Unsupported(i));
                    }
                    let n: u32 = sql[i + 1..j]
                        .parse()
                        .map_err(|_| LexError::Unsupported(i))?;
                    out.push(Token::Param(n));
                    i = j;
                } else {
                    let (s, n) = dollar_quoted(sql, i)?;
                    out.push(Token::Str(Cow::Borrowed(s)));
                    i = n;
                }
            }
            b'0'..=b'9' => {
                let n = number_end(b, i)?;
                out.push(Token::Number(&sql[i..n]));
                i = n;
            }
            b'.' if b.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                let n = number_end(b, i)?;
                out.push(Token::Number(&sql[i..n]));
                i = n;
            }
            b'(' | b')' | b',' | b';' | b'.' | b'[' | b']' => {
                out.push(Token::Punct(c as char));
                i += 1;
            }
            b':' if b.get(i + 1) == Some(&b':') => {
                out.push(Token::Op("::"));
                i += 2;
            }
            c if is_op_char(c) => {
                let mut j = i;
                while j < b.len() && is_op_char(b[j]) {
                    // A comment start ends the operator, as in PostgreSQL's lexer.
                    if (b[j] == b'-' && b.get(j + 1) == Some(&b'-'))
                        || (b[j] == b'/' && b.get(j + 1) == Some(&b'*'))
                    {
                        break;
                    }
                    j += 1;
                }
                let mut op = &sql[i..j];
                // A multi-character operator ending in + or - keeps them only if it contains
                // one of ~ ! @ # % ^ & | ` ? (PostgreSQL's rule); otherwise they split off.
                while op.len() > 1
                    && (op.ends_with('+') || op.ends_with('-'))
                    && !op.bytes().any(|c| {
                        matches!(
                            c,
                            b'~' | b'!' | b'@' | b'#' | b'%' | b'^' | b'&' | b'|' | b'`' | b'?'
                        )
                    })
                {
                    op = &op[..op.len() - 1];
                }
                out.push(Token::Op(op));
                i += op.len();
            }
            c if is_ident_start(c) => {
                let mut j = i;
                while j < b.len() && is_ident_char(b[j]) {
                    j += 1;
                }
                let word = &sql[i..j];
                if !word.is_ascii() || word.len() > MAX_IDENTIFIER_BYTES {
                    // Non-ASCII identifiers fold by locale in PostgreSQL: not certain here.
                    return Err(LexError::Unsupported(i));
                }
                let word = if word.bytes().any(|c| c.is_ascii_uppercase()) {
                    match reserved::folded_keyword(word) {
                        Some(keyword) => Cow::Borrowed(keyword),
                        None => Cow::Owned(word.to_ascii_lowercase()),
                    }
                } else {
                    Cow::Borrowed(word)
                };
                out.push(Token::Word(word));
                i = j;
            }
            _ => return Err(LexError::Unsupported(i)),
        }
    }
    Ok(out)
}

/// Splits a token list into statements at top-level semicolons (empty statements dropped).
pub fn statements<'t, 'a>(tokens: &'t [Token<'a>]) -> Vec<&'t [Token<'a>]> {
    tokens
        .split(|t| *t == Token::Punct(';'))
        .filter(|s| !s.is_empty())
        .collect()
}

const IDENT_START: u8 = 1;
const IDENT_CHAR: u8 = 2;
const OP_CHAR: u8 = 4;

/// Each byte's classes, looked up once per byte instead of tested range by range.
const CLASSES: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        if b.is_ascii_alphabetic() || b == b'_' || b >= 0x80 {
            t[c] |= IDENT_START | IDENT_CHAR;
        }
        if b.is_ascii_digit() || b == b'$' {
            t[c] |= IDENT_CHAR;
        }
        c += 1;
    }
    let ops = b"+-*/<>=~!@#%^&|`?";
    let mut i = 0;
    while i < ops.len() {
        t[ops[i] as usize] |= OP_CHAR;
        i += 1;
    }
    t
};

fn is_ident_start(c: u8) -> bool {
    CLASSES[c as usize] & IDENT_START != 0
}

fn is_ident_char(c: u8) -> bool {
    CLASSES[c as usize] & IDENT_CHAR != 0
}

fn is_op_char(c: u8) -> bool {
    CLASSES[c as usize] & OP_CHAR != 0
}

fn next_char(s: &str, at: usize) -> char {
    s[at..].chars().next().unwrap_or('\u{fffd}')
}

fn skip_block_comment(b: &[u8], start: usize) -> Result<usize, LexError> {
    // Block comments nest in PostgreSQL.
    let mut depth = 0;
    let mut i = start;
    while i + 1 < b.len() {
        if b[i] == b'/' && b[i + 1] == b'*' {
            depth += 1;
            i += 2;
        } else if b[i] == b'*' && b[i + 1] == b'/' {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return Ok(i);
            }
        } else {
            i += 1;
        }
    }
    Err(LexError::Unterminated("block comment"))
}

fn number_end(b: &[u8], start: usize) -> Result<usize, LexError> {
    let mut i = start;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    if i < b.len() && b[i] == b'.' && b.get(i + 1) != Some(&b'.') {
        i += 1;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        let mut j = i + 1;
        if j < b.len() && (b[j] == b'+' || b[j] == b'-') {
            j += 1;
        }
        if j < b.len() && b[j].is_ascii_digit() {
            while j < b.len() && b[j].is_ascii_digit() {
                j += 1;
            }
            i = j;
        } else {
            return Err(LexError::Unsupported(i));
        }
    }
    // `123abc` and PostgreSQL 16's `0x1F`, `1_000` are not PostgreSQL 15 numbers: refuse.
    if i < b.len() && is_ident_char(b[i]) {
        return Err(LexError::Unsupported(i));
    }
    Ok(i)
}

/// A '…' constant starting at `start` (the quote); with `escapes`, backslash escapes apply.
/// Adjacent constants separated by whitespace containing a newline are concatenated. Borrowed
/// from `sql` unless an escape, a doubled quote or a continuation changes the text.
fn string_constant(
    sql: &str,
    start: usize,
    escapes: bool,
) -> Result<(Cow<'_, str>, usize), LexError> {
    let b = sql.as_bytes();
    let body = start + 1;
    let mut i = body;
    // Copied into `out` only from the first byte that is not taken as written.
    let mut out: Option<String> = None;
    loop {
        match b.get(i) {
            None => return Err(LexError::Unterminated("string constant")),
            Some(b'\'') if b.get(i + 1) == Some(&b'\'') => {
                out.get_or_insert_with(|| sql[body..i].to_string())
                    .push('\'');
                i += 2;
            }
            Some(b'\'') => {
                let end = i;
                i += 1;
                // Continuation: whitespace with at least one newline, then another quote.
                let mut j = i;
                let mut newline = false;
                while j < b.len() && matches!(b[j], b' ' | b'\t' | b'\n' | b'\r' | b'\x0c') {
                    newline |= b[j] == b'\n';
                    j += 1;
                }
                if newline && b.get(j) == Some(&b'\'') {
                    out.get_or_insert_with(|| sql[body..end].to_string());
                    i = j + 1;
                    continue;
                }
                return Ok(match out {
                    Some(s) => (Cow::Owned(s), i),
                    None => (Cow::Borrowed(&sql[body..end]), i),
                });
            }
            Some(b'\\') if escapes => {
                let (ch, n) = backslash_escape(sql, i)?;
                out.get_or_insert_with(|| sql[body..i].to_string()).push(ch);
                i = n;
            }
            Some(_) => {
                let ch = next_char(sql, i);
                if let Some(s) = out.as_mut() {
                    s.push(ch);
                }
                i += ch.len_utf8();
            }
        }
    }
}

/// A "…" identifier starting at `start` (the quote), and the index after its closing quote.
fn quoted_identifier(sql: &str, start: usize) -> Result<(Cow<'_, str>, usize), LexError> {
    let b = sql.as_bytes();
    let body = start + 1;
    let mut out: Option<String> = None;
    let mut j = body;
    loop {
        match b.get(j) {
            None => return Err(LexError::Unterminated("quoted identifier")),
            Some(b'"') if b.get(j + 1) == Some(&b'"') => {
                out.get_or_insert_with(|| sql[body..j].to_string())
                    .push('"');
                j += 2;
            }
            Some(b'"') => {
                return Ok(match out {
                    Some(s) => (Cow::Owned(s), j + 1),
                    None => (Cow::Borrowed(&sql[body..j]), j + 1),
                })
            }
            Some(_) => {
                let ch = next_char(sql, j);
                if let Some(s) = out.as_mut() {
                    s.push(ch);
                }
                j += ch.len_utf8();
            }
        }
    }
}

fn backslash_escape(sql: &str, at: usize) -> Result<(char, usize), LexError> {
    let b = sql.as_bytes();
    let c = *b
        .get(at + 1)
        .ok_or(LexError::Unterminated("string constant"))?;
    let simple = match c {
        b'b' => Some('\u{8}'),
        b'f' => Some('\u{c}'),
        b'n' => Some('\n'),
        b'r' => Some('\r'),
        b't' => Some('\t'),
        _ => None,
    };
    if let Some(ch) = simple {
        return Ok((ch, at + 2));
    }
    let hex = |from: usize, max: usize| {
        let mut j = from;
        while j < b.len() && j - from < max && b[j].is_ascii_hexdigit() {
            j += 1;
        }
        (j, u32::from_str_radix(&sql[from..j], 16).ok())
    };
    match c {
        b'x' => {
            let (j, v) = hex(at + 2, 2);
            match v {
                // Bytes above 0x7f would form encoding-dependent strings: not certain.
                Some(v) if v > 0 && v < 0x80 => Ok((char::from(v as u8), j)),
                _ => Err(LexError::BadEscape(at)),
            }
        }
        b'0'..=b'7' => {
            let mut j = at + 1;
            while j < b.len() && j - (at + 1) < 3 && (b'0'..=b'7').contains(&b[j]) {
                j += 1;
            }
            match u32::from_str_radix(&sql[at + 1..j], 8) {
                Ok(v) if v > 0 && v < 0x80 => Ok((char::from(v as u8), j)),
                _ => Err(LexError::BadEscape(at)),
            }
        }
        b'u' | b'U' => {
            let len = if c == b'u' { 4 } else { 8 };
            let (j, v) = hex(at + 2, len);
            match v.and_then(char::from_u32) {
                Some(ch) if j - (at + 2) == len && ch != '\0' => Ok((ch, j)),
                _ => Err(LexError::BadEscape(at)),
            }
        }
        _ => {
            let ch = next_char(sql, at + 1);
            Ok((ch, at + 1 + ch.len_utf8()))
        }
    }
}

fn dollar_quoted(sql: &str, start: usize) -> Result<(&str, usize), LexError> {
    let b = sql.as_bytes();
    let mut j = start + 1;
    while j < b.len() && b[j] != b'$' {
        if !(is_ident_char(b[j]) && b[j] != b'$') || (j == start + 1 && b[j].is_ascii_digit()) {
            return Err(LexError::Unsupported(start));
        }
        j += 1;
    }
    if j >= b.len() {
        return Err(LexError::Unsupported(start));
    }
    let tag = &sql[start..=j];
    let body_start = j + 1;
    match sql[body_start..].find(tag) {
        Some(end) => Ok((
            &sql[body_start..body_start + end],
            body_start + end + tag.len(),
        )),
        None => Err(LexError::Unterminated("dollar-quoted string")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Token::*;

    fn w(s: &str) -> Token<'_> {
        Word(s.into())
    }
    fn s(v: &str) -> Token<'_> {
        Str(v.into())
    }

    #[test]
    fn words_fold_and_quoted_identifiers_keep_case() {
        assert_eq!(
            lex(r#"UPDATE "Counters" SET "N" = n + 1 WHERE Id = $1"#, true),
            Ok(vec![
                w("update"),
                QuotedIdent("Counters".into()),
                w("set"),
                QuotedIdent("N".into()),
                Op("="),
                w("n"),
                Op("+"),
                Number("1"),
                w("where"),
                w("id"),
                Op("="),
                Param(1)
            ])
        );
        assert_eq!(lex(r#""a""b""#, true), Ok(vec![QuotedIdent("a\"b".into())]));
    }

    #[test]
    fn string_constants_follow_postgres_rules() {
        assert_eq!(lex("'it''s'", true), Ok(vec![s("it's")]));
        // standard_conforming_strings on: backslash is a plain character.
        assert_eq!(lex(r"'a\nb'", true), Ok(vec![s(r"a\nb")]));
        // off: it is an escape, as in E''.
        assert_eq!(lex(r"'a\nb'", false), Ok(vec![s("a\nb")]));
        assert_eq!(
            lex(r"E'a\tb\\c\'d\x41\101\u00e9'", true),
            Ok(vec![s("a\tb\\c'dAAé")])
        );
        // Continuation needs a newline between the parts.
        assert_eq!(lex("'ab'\n  'cd'", true), Ok(vec![s("abcd")]));
        assert_eq!(lex("'ab' 'cd'", true), Ok(vec![s("ab"), s("cd")]));
        assert_eq!(lex("$$it's $1$$", true), Ok(vec![s("it's $1")]));
        assert_eq!(lex("$tag$a$$b$tag$", true), Ok(vec![s("a$$b")]));
        assert!(matches!(
            lex("U&'\\0041'", true),
            Err(LexError::Unsupported(0))
        ));
        assert!(matches!(lex("X'1F'", true), Err(LexError::Unsupported(0))));
        assert!(matches!(lex(r"E'\xff'", true), Err(LexError::BadEscape(_))));
        assert!(matches!(lex("'open", true), Err(LexError::Unterminated(_))));
        // PostgreSQL would truncate these to 63 bytes, which another spelling may match.
        let long = "l".repeat(64);
        assert!(lex(&"l".repeat(63), true).is_ok());
        assert!(matches!(lex(&long, true), Err(LexError::Unsupported(0))));
        assert!(matches!(
            lex(&format!("\"{long}\""), true),
            Err(LexError::Unsupported(0))
        ));
    }

    #[test]
    fn tokens_borrow_unless_the_text_changes() {
        let borrowed = |t: &Token<'_>| match t {
            Word(c) | QuotedIdent(c) | Str(c) => matches!(c, Cow::Borrowed(_)),
            _ => true,
        };
        let toks = lex(r#"update "T" set v = 'x', w = $q$y$q$ where k = 1"#, true).expect("lex");
        assert!(toks.iter().all(borrowed), "{toks:?}");
        // A folded keyword borrows the keyword table's spelling.
        let toks = lex("UPDATE t SET v = 1 WHERE k = 2", true).expect("lex");
        assert!(toks.iter().all(borrowed), "{toks:?}");
        assert_eq!(toks[0], w("update"));
        // Folding another word, a doubled quote, an escape or a continuation owns the changed
        // text.
        for sql in ["Counters", r#""a""b""#, "'it''s'", r"E'a\tb'", "'a'\n'b'"] {
            let toks = lex(sql, true).expect("lex");
            assert!(!borrowed(&toks[0]), "{sql}: {toks:?}");
        }
    }

    #[test]
    fn comments_numbers_and_operators() {
        assert_eq!(
            lex(
                "SELECT /* a /* nested */ comment */ 1 -- trailing\n, .5, 1e3, 2.5E-2",
                true
            ),
            Ok(vec![
                w("select"),
                Number("1"),
                Punct(','),
                Number(".5"),
                Punct(','),
                Number("1e3"),
                Punct(','),
                Number("2.5E-2")
            ])
        );
        // "x=-1": '=' then '-' (PostgreSQL splits a trailing minus off a plain operator).
        assert_eq!(
            lex("x=-1", true),
            Ok(vec![w("x"), Op("="), Op("-"), Number("1")])
        );
        assert_eq!(lex("a::int", true), Ok(vec![w("a"), Op("::"), w("int")]));
        assert!(lex("123abc", true).is_err());
        assert!(lex("0x1F", true).is_err());
        assert!(lex("1_000", true).is_err());
        assert!(lex("/* open", true).is_err());
    }

    #[test]
    fn statements_split_at_top_level_semicolons() {
        let toks = lex("INSERT INTO t VALUES (';'); ; SELECT 1;", true).expect("lex");
        let stmts = statements(&toks);
        assert_eq!(stmts.len(), 2);
        assert_eq!(stmts[0].last(), Some(&Punct(')')));
    }
}
