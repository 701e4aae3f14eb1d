//! Validated identifiers: session, client and user ids, checked once where they enter
//! (a frame, a path, a token) and carried as types from there, so nothing downstream
//! builds a Redis key from an unchecked string.
//!
//! Ids sit inside Redis hash tags (`rc:{s:ID}:…`, `rc:{u:USER}:…`), so braces are never
//! allowed. User ids also admit `@ + |`, so e-mail addresses and identity-provider ids
//! (`auth0|…`) fit; every user a token may name is addressable over REST.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;

/// Longest id, in bytes (all allowed characters are ASCII).
pub(crate) const MAX_ID_LEN: usize = 128;

/// What a session or client id may contain, for error messages.
pub const ID_CHARSET: &str = "1 to 128 characters of A-Z a-z 0-9 _ - . :";

/// What a user id may contain, for error messages.
pub const USER_CHARSET: &str = "1 to 128 characters of A-Z a-z 0-9 _ - . : @ + |";

fn valid(id: &str, extra: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(b, b'_' | b'-' | b'.' | b':')
                || extra.contains(&b)
        })
}

/// Whether `id` is acceptable as a session id or client id.
pub fn valid_id(id: &str) -> bool {
    valid(id, b"")
}

/// Why a publish's idempotency key is refused, if it is: 1 to 64 of the id charset (it
/// becomes part of a Redis key).
pub fn idempotency_key_problem(key: &str) -> Option<&'static str> {
    (key.len() > 64 || !valid_id(key)).then_some("must be 1 to 64 of A-Z a-z 0-9 _ . : -")
}

/// Whether `user` is acceptable as a user id (a token's `sub`).
pub fn valid_user_id(user: &str) -> bool {
    valid(user, b"@+|")
}

/// An id that was refused, with the name of the field it came in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}` must be {charset}")]
pub struct IdError {
    field: &'static str,
    charset: &'static str,
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $check:path, $charset:path) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Checks `id`; the error names `field`, the input it came in.
            pub fn parse(id: impl Into<String>, field: &'static str) -> Result<Self, IdError> {
                let id = id.into();
                if $check(&id) {
                    Ok($name(id))
                } else {
                    Err(IdError {
                        field,
                        charset: $charset,
                    })
                }
            }

            /// An id the gateway made itself from a valid alphabet (`anon-…`, `guest-…`).
            pub(crate) fn generated(id: String) -> Self {
                debug_assert!($check(&id), "generated id {id:?}");
                $name(id)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl PartialEq<$name> for String {
            fn eq(&self, other: &$name) -> bool {
                *self == other.0
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }
    };
}

id_type!(
    /// A session id: 1 to 128 characters of `[A-Za-z0-9_.:-]`.
    SessionId,
    valid_id,
    ID_CHARSET
);

id_type!(
    /// A user id (a token's `sub`): 1 to 128 characters of `[A-Za-z0-9_.:@+|-]`.
    UserId,
    valid_user_id,
    USER_CHARSET
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_are_checked() {
        assert!(SessionId::parse("room-1.a:b_c", "session").is_ok());
        for bad in [
            "",
            "a}b",
            "{s:x}",
            "a b",
            "../etc",
            "é",
            &"x".repeat(129),
            "a@b",
        ] {
            let e = SessionId::parse(bad, "session").unwrap_err();
            assert_eq!(e.to_string(), format!("`session` must be {ID_CHARSET}"));
        }
        assert!(SessionId::parse("x".repeat(128), "session").is_ok());
    }

    #[test]
    fn user_ids_admit_emails_and_provider_ids() {
        for good in [
            "alice",
            "ann@example.com",
            "auth0|5f1c",
            "a+tag@x.io",
            "guest-1",
        ] {
            assert_eq!(UserId::parse(good, "sub").unwrap().as_str(), good);
        }
        for bad in [
            "",
            "a}b",
            "{u:x}",
            "a b",
            "a/b",
            "a%b",
            "é",
            &"x".repeat(129),
        ] {
            let e = UserId::parse(bad, "sub").unwrap_err();
            assert_eq!(e.to_string(), format!("`sub` must be {USER_CHARSET}"));
        }
    }

    #[test]
    fn ids_serialize_as_strings() {
        let id = SessionId::parse("room", "id").unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), r#""room""#);
    }
}
