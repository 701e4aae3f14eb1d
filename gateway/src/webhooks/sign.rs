//! Standard Webhooks signatures (<https://www.standardwebhooks.com/>): the HMAC-SHA256 of
//! `{id}.{timestamp}.{body}` under each configured key, base64, as `v1,<sig>` joined by
//! spaces. Webhook deliveries and join-hook calls are signed alike.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The keys requests are signed with (one signature each, for rotation).
#[derive(Clone)]
pub struct Signer {
    keys: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({} keys)", self.keys.len())
    }
}

impl Signer {
    pub fn new(keys: Vec<Vec<u8>>) -> Self {
        Signer { keys }
    }

    /// The `webhook-signature` header value for one request.
    pub fn signature(&self, id: &str, timestamp_s: u64, body: &[u8]) -> String {
        let mut out = String::new();
        for key in &self.keys {
            // HMAC takes a key of any length: new_from_slice cannot fail for it.
            let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
                continue;
            };
            mac.update(id.as_bytes());
            mac.update(b".");
            mac.update(timestamp_s.to_string().as_bytes());
            mac.update(b".");
            mac.update(body);
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str("v1,");
            out.push_str(
                &base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()),
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification (spec/standard-webhooks.md):
    /// secret, id, timestamp and payload give this signature.
    #[test]
    fn matches_the_specification_example() {
        let key = crate::config::webhooks::decode_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .unwrap();
        let signer = Signer::new(vec![key]);
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            signer.signature("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn one_signature_per_key_separated_by_spaces() {
        let signer = Signer::new(vec![vec![1; 16], vec![2; 16]]);
        let header = signer.signature("evt_1", 1, b"{}");
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert!(parts
            .iter()
            .all(|p| p.starts_with("v1,") && p.len() == 3 + 44));
        assert_ne!(parts[0], parts[1]);
    }
}
