//! HuJSON ("human JSON", Tailscale's policy format): JSON with `//` and `/* */` comments and
//! trailing commas. Normalised to JSON by blanking those out, so every byte keeps its line and
//! column and serde_json's error positions point into the original file.

/// JSON text with the same line and column for every remaining byte.
pub fn to_json(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = b.to_vec();
    let mut i = 0;
    let mut in_string = false;
    // Index of the last comma outside strings whose next significant byte is not yet seen.
    let mut pending_comma: Option<usize> = None;
    while i < b.len() {
        let c = b[i];
        if in_string {
            match c {
                b'\\' => i += 1,
                b'"' => in_string = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        match c {
            b'"' => {
                in_string = true;
                pending_comma = None;
            }
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    out[i] = b' ';
                    i += 1;
                }
                continue;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let start = i;
                i += 2;
                while i < b.len() && !(b[i] == b'*' && b.get(i + 1) == Some(&b'/')) {
                    i += 1;
                }
                let end = (i + 2).min(b.len());
                for (k, byte) in out.iter_mut().enumerate().take(end).skip(start) {
                    if b[k] != b'\n' {
                        *byte = b' ';
                    }
                }
                i = end;
                continue;
            }
            b',' => pending_comma = Some(i),
            b']' | b'}' => {
                if let Some(k) = pending_comma.take() {
                    out[k] = b' ';
                }
            }
            c if c.is_ascii_whitespace() => {}
            _ => pending_comma = None,
        }
        i += 1;
    }
    // Only ASCII bytes were replaced, by ASCII spaces: still UTF-8.
    String::from_utf8(out).unwrap_or_default()
}

/// The 1-based line of byte offset `at`.
pub fn line_of(src: &str, at: usize) -> usize {
    src.as_bytes()[..at.min(src.len())]
        .iter()
        .filter(|&&c| c == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_and_trailing_commas_go_positions_stay() {
        let src =
            "{\n  // a comment\n  \"a\": [1, 2,], /* b */\n  \"c\": \"//not a comment\",\n}\n";
        let json = to_json(src);
        assert_eq!(json.len(), src.len());
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["a"], serde_json::json!([1, 2]));
        assert_eq!(v["c"], "//not a comment");
        assert_eq!(json.lines().count(), src.lines().count());
        assert_eq!(line_of(src, src.find("\"c\"").unwrap()), 4);
    }
}
