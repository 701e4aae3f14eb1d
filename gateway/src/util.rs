//! Small helpers with no better home: wall-clock milliseconds, random ids, display names.

use rand::Rng;

/// Unix time in milliseconds (wall clock: it is stored in Redis and compared across nodes).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A random id of `len` characters from a URL- and key-safe alphabet.
pub fn random_id(len: usize) -> String {
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Longest display name, in characters.
pub const MAX_NAME_CHARS: usize = 64;

/// Why a display name is refused; `None` when it is fine. Names are shown to other people,
/// so control characters (NUL, CR/LF…), line separators and bidirectional overrides
/// (U+202E and friends, which reverse how the text around them reads) are refused.
pub fn name_problem(name: &str) -> Option<String> {
    let count = name.chars().count();
    if count == 0 || count > MAX_NAME_CHARS {
        return Some(format!("must be 1 to {MAX_NAME_CHARS} characters"));
    }
    let bad = name.chars().find(|c| {
        c.is_control()
            || matches!(
                c,
                '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{2028}' | '\u{2029}'
            )
            || ('\u{202A}'..='\u{202E}').contains(c)
            || ('\u{2066}'..='\u{2069}').contains(c)
    })?;
    Some(format!(
        "must not contain control or bidirectional-override characters (found U+{:04X})",
        u32::from(bad)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["Alice", "Zoë 👩‍👩‍👧", "東京", &"x".repeat(64)] {
            assert_eq!(name_problem(ok), None, "{ok}");
        }
        for bad in [
            "",
            "a\0b",
            "line\r\nbreak",
            "evil\u{202E}gpj.exe",
            "iso\u{2066}late",
            "sep\u{2028}",
            &"x".repeat(65),
        ] {
            assert!(name_problem(bad).is_some(), "{bad:?}");
        }
    }

    #[test]
    fn ids() {
        assert_eq!(random_id(12).len(), 12);
        assert!(crate::ids::valid_id(&random_id(12)));
    }
}
