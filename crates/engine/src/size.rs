//! Sizes in iohyve's notation: a whole number with an optional K, M, G or T
//! suffix (powers of 1024, either case), as in `512M` or `10G`.

use std::fmt;

const UNITS: [(char, u32); 4] = [('T', 40), ('G', 30), ('M', 20), ('K', 10)];

/// A size in bytes together with the text it is shown as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Size {
    bytes: u64,
    text: String,
}

impl Size {
    /// Parses `512M`, `10g`, `1048576`. The shown text keeps the user's unit
    /// (upper-cased) with leading zeros dropped: `010g` is shown as `10G`.
    pub fn parse(s: &str) -> Result<Size, String> {
        let quoted = crate::validate::quote(s);
        let bad = || {
            format!("invalid size {quoted}: expected a whole number with an optional K, M, G or T suffix, such as 512M or 10G")
        };
        if s.is_empty() || s.len() > 24 {
            return Err(bad());
        }
        let (digits, shift, unit) = match s.chars().last() {
            Some(c) if c.is_ascii_alphabetic() => {
                let up = c.to_ascii_uppercase();
                let (_, shift) = UNITS.iter().find(|(u, _)| *u == up).ok_or_else(bad)?;
                (&s[..s.len() - 1], *shift, Some(up))
            }
            _ => (s, 0, None),
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("size {quoted} is too large"))?;
        let bytes = n
            .checked_mul(1u64 << shift)
            .ok_or_else(|| format!("size {quoted} is too large"))?;
        let mut text = n.to_string();
        if let Some(u) = unit {
            text.push(u);
        }
        Ok(Size { bytes, text })
    }

    /// The size of `bytes`, shown in the largest unit that divides it exactly.
    pub fn from_bytes(bytes: u64) -> Size {
        for (unit, shift) in UNITS {
            let m = 1u64 << shift;
            if bytes >= m && bytes.is_multiple_of(m) {
                return Size {
                    bytes,
                    text: format!("{}{}", bytes / m, unit),
                };
            }
        }
        Size {
            bytes,
            text: bytes.to_string(),
        }
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn text(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_iohyve_sizes() {
        assert_eq!(Size::parse("512M").unwrap().bytes(), 512 << 20);
        assert_eq!(Size::parse("10G").unwrap().bytes(), 10 << 30);
        assert_eq!(Size::parse("10g").unwrap().text(), "10G");
        assert_eq!(Size::parse("010g").unwrap().text(), "10G");
        assert_eq!(Size::parse("2T").unwrap().bytes(), 2 << 40);
        assert_eq!(Size::parse("4k").unwrap().bytes(), 4096);
        assert_eq!(Size::parse("1048576").unwrap().text(), "1048576");
    }

    #[test]
    fn refuses_everything_else() {
        for s in [
            "",
            "G",
            "-1G",
            "1.5G",
            "1 G",
            " 1G",
            "1GB",
            "1P",
            "0x10",
            "$(id)",
            "../x",
            "1e9",
            "99999999999999999999T",
            "17179869184T",
        ] {
            assert!(Size::parse(s).is_err(), "{s:?}");
        }
    }

    #[test]
    fn errors_quote_the_value_cut_short() {
        // Found by the sizes fuzz target: control characters are quoted
        // escaped (`\u{16}`), 40 of them at most, so the sentence stays
        // a few hundred bytes whatever was sent.
        let e = Size::parse(&format!("\"{}\"", "\u{16}".repeat(10_000))).unwrap_err();
        assert!(e.len() < 600, "{} bytes", e.len());
        assert!(e.contains("\\u{16}"), "{e}");
    }

    #[test]
    fn shows_bytes_in_the_largest_exact_unit() {
        assert_eq!(Size::from_bytes(10 << 30).text(), "10G");
        assert_eq!(Size::from_bytes(1536 << 20).text(), "1536M");
        assert_eq!(Size::from_bytes(1000).text(), "1000");
    }
}
