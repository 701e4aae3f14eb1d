//! Small helpers with no better home: wall-clock milliseconds and random ids.

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

/// Whether `id` is acceptable as a session id or client id: 1 to 128 characters of
/// `[A-Za-z0-9_.:-]`. Braces are excluded because ids sit inside Redis hash tags.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert_eq!(random_id(12).len(), 12);
        assert!(valid_id(&random_id(12)));
        assert!(valid_id("room-1.a:b_c"));
        for bad in ["", "a}b", "{s:x}", "a b", "../etc", "é", &"x".repeat(129)] {
            assert!(!valid_id(bad), "{bad}");
        }
    }
}
