//! What PostgreSQL accepts as the text of a value of each column type the proxy knows, and how
//! it prints it: input checks (range, length, scale, precision), the one spelling of a key
//! value that equality and coalescing agree on, and cast names that mean a column's type.

use super::catalog::Column;

/// Whether a numeric literal's text is exactly what PostgreSQL prints for its value: no
/// exponent, no leading `+`, no superfluous leading zero, digits on both sides of a `.`, and
/// no negative zero (`-0`, `-0.00` print without the sign).
pub fn canonical_number(text: &str) -> bool {
    let (negative, s) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (s, None),
    };
    let digits = |p: &str| !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit());
    let int_ok = digits(int) && (int == "0" || !int.starts_with('0'));
    let frac_ok = frac.is_none_or(digits);
    let zero = s.bytes().all(|c| c == b'0' || c == b'.');
    int_ok && frac_ok && !(negative && zero)
}

/// The key text that identifies a row for coalescing, or `None` when the text cannot: two
/// values PostgreSQL finds equal must get the same key text, or the coalescer and the worker
/// would order their changes differently. Integer, boolean and uuid keys written differently
/// (`007`/`7`, `t`/`true`, upper/lower-case uuid) are normalized; the normalized text is the
/// same value for PostgreSQL. A numeric key is taken only in the one spelling PostgreSQL's
/// equality allows for its value (`5`, `5.5`; not `5.0`, `05`, `.5`, `-0`, nor more decimals
/// than a `numeric(p,s)` keeps): normalizing it would change the display scale an INSERT
/// stores. A key in a nondeterministic collation
/// (`'A'` may equal `'a'`) is never taken. Those statements pass through.
pub fn canonical_key(text: String, col: &Column) -> Option<String> {
    if col.nondeterministic {
        return None;
    }
    Some(match col.type_name.as_str() {
        // Already as PostgreSQL prints it (the common case): kept without a copy.
        "smallint" | "integer" | "bigint" if canonical_number(&text) && !text.contains('.') => text,
        "smallint" | "integer" | "bigint" => {
            text.parse::<i64>().map(|v| v.to_string()).unwrap_or(text)
        }
        "boolean" => match text.as_str() {
            "t" | "true" => "true".to_string(),
            "f" | "false" => "false".to_string(),
            _ => text,
        },
        "uuid" => text.to_ascii_lowercase(),
        "numeric" => {
            let frac = text.split_once('.').map_or("", |(_, f)| f);
            // numeric(p,s) rounds to s digits on input: 5.555 and 5.556 would be one key.
            if !canonical_number(&text) || frac.ends_with('0') || !within_scale(&text, col.typmod) {
                return None;
            }
            text
        }
        _ => text,
    })
}

/// Whether a decimal has at most the scale `s` of `numeric(p,s)` (always, for `typmod < 0`):
/// then PostgreSQL stores it without rounding, and exact sums of such values (coalesced
/// increments) round nowhere either, as PostgreSQL's one statement at a time would not. A
/// scale PostgreSQL 15 allows beyond `0..=p` (negative: `numeric(5,-2)` rounds to hundreds;
/// stored in 11 bits, so it reads here as larger than `p`) answers false: every value rounds.
pub fn within_scale(text: &str, typmod: i32) -> bool {
    if typmod < 4 {
        return true;
    }
    let t = typmod - 4;
    let (precision, scale) = ((t >> 16) & 0xffff, t & 0xffff);
    if scale > precision {
        return false;
    }
    text.split_once('.').map_or(0, |(_, f)| f.len()) <= scale as usize
}

/// Whether a decimal fits `numeric(p,s)` without overflow (22003), with no rounding able to
/// carry into a new digit; unconstrained numerics (`typmod < 0`) fit within PostgreSQL's own
/// limits (131072 digits before the point, 16383 after; kept one short of each). Anything
/// uncertain (negative scale, rounding at the boundary) answers false: it passes through.
pub fn fits_numeric(text: &str, typmod: i32) -> bool {
    if typmod < 0 {
        let s = text.strip_prefix('-').unwrap_or(text);
        let (int, frac) = s.split_once('.').unwrap_or((s, ""));
        return int.trim_start_matches('0').len() < 131_072 && frac.len() < 16_383;
    }
    let t = typmod - 4;
    let (precision, scale) = ((t >> 16) & 0xffff, t & 0xffff);
    if scale > precision {
        return false; // negative or exotic scales (PG 15) are left to PostgreSQL
    }
    let s = text.strip_prefix('-').unwrap_or(text);
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let int_digits = int.trim_start_matches('0').len() as i32;
    let room = precision - scale;
    int_digits < room || (int_digits == room && frac.len() as i32 <= scale)
}

/// Whether a cast's (unquoted, case-folded) type name names the column's type, as
/// `format_type` prints it: `int4`, `int` and `integer` all name `integer`.
pub fn same_type(cast: &str, type_name: &str) -> bool {
    let canonical = match cast {
        "int" | "int4" | "integer" => "integer",
        "int8" | "bigint" => "bigint",
        "int2" | "smallint" => "smallint",
        "text" => "text",
        "bool" | "boolean" => "boolean",
        "numeric" | "decimal" => "numeric",
        "uuid" => "uuid",
        _ => return false,
    };
    canonical == type_name
}

/// Whether a cast name [`same_type`] accepts is an ordinary name, which PostgreSQL looks up
/// through the session's search_path (`int4`, `text`, `uuid`: a schema listed before
/// `pg_catalog` may have a type or domain of that name), rather than a keyword of the grammar
/// (`integer`, `boolean`, `numeric`: always `pg_catalog`'s).
pub fn found_by_search_path(cast: &str) -> bool {
    !matches!(
        cast,
        "int" | "integer" | "bigint" | "smallint" | "boolean" | "numeric" | "decimal"
    )
}

/// Whether `s` is a plain decimal: an optional `-`, digits, an optional `.` and digits, with at
/// least one digit (no exponent, no `+`, no spaces).
pub fn is_decimal(s: &str) -> bool {
    let s = s.strip_prefix('-').unwrap_or(s);
    let (i, f) = s.split_once('.').unwrap_or((s, ""));
    !(i.is_empty() && f.is_empty())
        && i.bytes().all(|c| c.is_ascii_digit())
        && f.bytes().all(|c| c.is_ascii_digit())
}

/// Whether `text` is input PostgreSQL accepts for the column, for the types the proxy knows;
/// any other type is refused (the statement passes through).
pub fn valid_text(text: &str, col: &Column) -> bool {
    match col.type_name.as_str() {
        "smallint" => text.parse::<i16>().is_ok(),
        "integer" => text.parse::<i32>().is_ok(),
        "bigint" => text.parse::<i64>().is_ok(),
        "numeric" => {
            is_decimal(text) && fits_numeric(text, col.typmod) && within_scale(text, col.typmod)
        }
        "boolean" => matches!(text, "true" | "false" | "t" | "f"),
        "text" => !text.contains('\0'),
        "character varying" => {
            !text.contains('\0') && col.max_chars.is_none_or(|m| text.chars().count() <= m)
        }
        "uuid" => {
            text.len() == 36
                && text.bytes().enumerate().all(|(i, c)| {
                    if matches!(i, 8 | 13 | 18 | 23) {
                        c == b'-'
                    } else {
                        c.is_ascii_hexdigit()
                    }
                })
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NUMERIC_5_2: i32 = (5 << 16 | 2) + 4;

    #[test]
    fn numbers_print_in_one_spelling() {
        for ok in ["0", "7", "-7", "10.5", "0.25", "-0.5"] {
            assert!(canonical_number(ok), "{ok}");
        }
        for no in ["07", "+7", "1e3", ".5", "5.", "-0", "-0.00", "", "-"] {
            assert!(!canonical_number(no), "{no}");
        }
    }

    #[test]
    fn numeric_precision_and_scale() {
        // numeric(5,2): three digits before the point, two after.
        assert!(fits_numeric("999.99", NUMERIC_5_2));
        assert!(fits_numeric("-999", NUMERIC_5_2));
        assert!(!fits_numeric("1000", NUMERIC_5_2));
        // 999.999 rounds to 1000.00 and overflows: uncertain, refused.
        assert!(!fits_numeric("999.999", NUMERIC_5_2));
        assert!(within_scale("1.25", NUMERIC_5_2));
        assert!(!within_scale("1.255", NUMERIC_5_2));
        assert!(within_scale("1.255555", -1));
        // numeric(5,-2) (PostgreSQL 15 keeps the scale in 11 bits): everything rounds to
        // hundreds, so no increment may be summed exactly.
        let numeric_5_minus_2 = (5 << 16 | (-2i32 & 0x7ff)) + 4;
        assert!(!within_scale("50", numeric_5_minus_2));
        assert!(!fits_numeric("50", numeric_5_minus_2));
        // Unconstrained: PostgreSQL's own limits, one short of each.
        assert!(fits_numeric(&"9".repeat(131_071), -1));
        assert!(!fits_numeric(&"9".repeat(131_072), -1));
        assert!(!fits_numeric(&format!("0.{}", "1".repeat(16_383)), -1));
    }

    #[test]
    fn decimals_and_cast_names() {
        assert!(is_decimal("-12.5") && is_decimal("12") && is_decimal(".5"));
        assert!(!is_decimal("") && !is_decimal("1e5") && !is_decimal("+1") && !is_decimal("."));
        assert!(same_type("int4", "integer") && same_type("decimal", "numeric"));
        assert!(!same_type("int8", "integer") && !same_type("varchar", "text"));
        assert!(found_by_search_path("int4") && found_by_search_path("text"));
        assert!(!found_by_search_path("integer") && !found_by_search_path("boolean"));
    }
}
