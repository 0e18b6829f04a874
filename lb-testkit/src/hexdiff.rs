//! A readable diff of two frames: 16 bytes a row, differing bytes marked.

use std::fmt::Write as _;

/// `None` when equal; otherwise the rows of `expected` and `actual` side by side, with a
/// caret under every differing byte, and the lengths when they differ.
pub fn diff(expected: &[u8], actual: &[u8]) -> Option<String> {
    if expected == actual {
        return None;
    }
    let mut out = String::new();
    if expected.len() != actual.len() {
        let _ = writeln!(
            out,
            "length: expected {} actual {}",
            expected.len(),
            actual.len()
        );
    }
    let rows = expected.len().max(actual.len()).div_ceil(16);
    for row in 0..rows {
        let range = row * 16..(row + 1) * 16;
        let e = expected
            .get(range.start..range.end.min(expected.len()))
            .unwrap_or(&[]);
        let a = actual
            .get(range.start..range.end.min(actual.len()))
            .unwrap_or(&[]);
        if e == a {
            continue;
        }
        let hex = |b: &[u8]| {
            b.iter()
                .map(|x| format!("{x:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let marks: String = (0..16)
            .map(|i| if e.get(i) == a.get(i) { "   " } else { "^^ " })
            .collect();
        let _ = writeln!(out, "{:04x} expected {}", range.start, hex(e));
        let _ = writeln!(out, "     actual   {}", hex(a));
        let _ = writeln!(out, "              {}", marks.trim_end());
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn marks_only_differing_rows_and_bytes() {
        let e: Vec<u8> = (0..40).collect();
        let mut a = e.clone();
        a[20] = 0xff;
        let d = super::diff(&e, &a).unwrap();
        assert!(d.contains("0010 expected"), "{d}");
        assert!(!d.contains("0000 expected"), "{d}");
        assert!(d.contains("^^"), "{d}");
        assert!(super::diff(&e, &e).is_none());
        assert!(
            super::diff(&e, &e[..39])
                .unwrap()
                .contains("length: expected 40 actual 39")
        );
    }
}
