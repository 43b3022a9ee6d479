//! Byte sizes as operators write them (`1048576`, `512KiB`, `10MiB`, `2GiB`), parsed strictly:
//! binary units only, so `10MB` is an error rather than a guess between 10⁷ and 10·2²⁰.

/// Parses a byte size; `None` when the text is not one of the accepted forms or overflows.
pub fn parse_size(s: &str) -> Option<u64> {
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(digits_end);
    if number.is_empty() {
        return None;
    }
    let n: u64 = number.parse().ok()?;
    let scale: u64 = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_binary_units_only() {
        let cases = [
            ("0", Some(0)),
            ("1048576", Some(1 << 20)),
            ("12B", Some(12)),
            ("512KiB", Some(512 << 10)),
            ("10MiB", Some(10 << 20)),
            ("2GiB", Some(2 << 30)),
            ("1TiB", Some(1 << 40)),
            ("10MB", None),
            ("10mib", None),
            ("MiB", None),
            ("", None),
            ("-1", None),
            ("1.5MiB", None),
            ("99999999999999TiB", None),
        ];
        assert!(!cases.is_empty());
        for (input, want) in cases {
            assert_eq!(parse_size(input), want, "input {input:?}");
        }
    }
}
