//! Exact decimal addition on text, for folding increments (`+1`, `+1` → `+2`) without rounding.

/// Adds two decimal literals (`[-+]digits[.digits]`) exactly; `None` if either is not such a
/// literal or the result needs more than 36 digits (the caller then keeps them apart).
pub fn add(a: &str, b: &str) -> Option<String> {
    let (ma, sa) = parse(a)?;
    let (mb, sb) = parse(b)?;
    let scale = sa.max(sb);
    let ma = ma.checked_mul(10i128.checked_pow(scale - sa)?)?;
    let mb = mb.checked_mul(10i128.checked_pow(scale - sb)?)?;
    let sum = ma.checked_add(mb)?;
    if sum.unsigned_abs() >= 10u128.pow(36) {
        return None;
    }
    Some(render(sum, scale))
}

fn parse(s: &str) -> Option<(i128, u32)> {
    let s = s.trim();
    let (neg, digits) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let (int, frac) = match digits.split_once('.') {
        Some((i, f)) => (i, f),
        None => (digits, ""),
    };
    if (int.is_empty() && frac.is_empty())
        || !int.bytes().all(|c| c.is_ascii_digit())
        || !frac.bytes().all(|c| c.is_ascii_digit())
        || int.len() + frac.len() > 36
    {
        return None;
    }
    let mut m: i128 = 0;
    for c in int.bytes().chain(frac.bytes()) {
        m = m.checked_mul(10)?.checked_add(i128::from(c - b'0'))?;
    }
    Some((if neg { -m } else { m }, frac.len() as u32))
}

fn render(m: i128, scale: u32) -> String {
    let digits = m.unsigned_abs().to_string();
    let sign = if m < 0 { "-" } else { "" };
    if scale == 0 {
        return format!("{sign}{digits}");
    }
    let scale = scale as usize;
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (i, f) = padded.split_at(padded.len() - scale);
    format!("{sign}{i}.{f}")
}
