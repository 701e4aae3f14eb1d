//! Authentication: JWT verification and minting, and the identity a connection carries.
//!
//! Owns the token format (the claims README "What it does" lists) and which
//! algorithm is accepted: the configured key pins it, so `alg: none` or an HS256 token
//! signed with an RSA public key never verify. Tokens never reach a log line.

use std::collections::HashSet;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use roomcast_shared::Role;
use serde::{Deserialize, Serialize};

use crate::config::{AuthMode, Config, ConfigError, TokenArgs};
use crate::ids::{SessionId, UserId};
use crate::util::{now_ms, random_id};

/// JWT claims (the token is a boundary, so these are serialisable).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub roles: Vec<Role>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// One audience or several (RFC 7519 §4.1.3); the configured one must be among them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<Audience>,
}

/// The `aud` claim: a string or an array of strings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

/// Seconds of clock skew allowed when checking `exp` and `nbf` (docs/PROTOCOL.md).
pub const CLOCK_LEEWAY_S: u64 = 5;

/// Who a connection is, after authentication.
#[derive(Debug, Clone)]
pub struct Identity {
    pub user: UserId,
    /// Allowed roles; the first is the default at `join`.
    pub roles: Vec<Role>,
    /// Allowed sessions; `None` means any.
    pub sessions: Option<HashSet<String>>,
    pub name: Option<String>,
    /// When the token expires (Unix ms); the connection is closed with 4001 then.
    pub expires_at_ms: Option<u64>,
}

impl Identity {
    pub fn may_join(&self, session: &str) -> bool {
        self.sessions.as_ref().is_none_or(|s| s.contains(session))
    }

    pub fn default_role(&self) -> Option<Role> {
        self.roles.first().copied()
    }
}

/// Why a token was refused: 401 (no or bad credential) or 403 (valid, not allowed).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing token")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("token expired")]
    Expired,
    #[error("forbidden: {0}")]
    Forbidden(String),
}

/// Most sessions a token's `sessions` claim may list.
pub const MAX_TOKEN_SESSIONS: usize = 256;

/// Checks the claims every connection and request carries, so that a token the gateway
/// accepts never fails later (at `join`, or when its user is addressed over REST): the
/// user id's charset, the session ids, and the display name. Shared by verification and
/// minting, so `roomcast token` cannot mint what the gateway would refuse. Answers the
/// checked user id.
pub fn check_claims(
    sub: &str,
    sessions: Option<&[String]>,
    name: Option<&str>,
) -> Result<UserId, String> {
    let user = UserId::parse(sub, "sub").map_err(|e| e.to_string())?;
    if let Some(sessions) = sessions {
        if sessions.len() > MAX_TOKEN_SESSIONS {
            return Err(format!(
                "`sessions` lists more than {MAX_TOKEN_SESSIONS} sessions"
            ));
        }
        for session in sessions {
            SessionId::parse(session.as_str(), "sessions").map_err(|e| e.to_string())?;
        }
    }
    if let Some(problem) = name.and_then(crate::util::name_problem) {
        return Err(format!("`name` {problem}"));
    }
    Ok(user)
}

/// Verifies tokens with the configured key; built once at start-up.
pub struct Authenticator {
    mode: AuthMode,
    decoding: Option<DecodingKey>,
    encoding: Option<EncodingKey>,
    validation: Validation,
    algorithm: Algorithm,
    issuer: Option<String>,
    audience: Option<String>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys stay out of Debug output.
        f.debug_struct("Authenticator")
            .field("mode", &self.mode)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    pub fn from_config(config: &Config) -> Result<Self, ConfigError> {
        let (algorithm, decoding, encoding) = match (&config.jwt_secret, &config.jwt_public_key) {
            (Some(secret), _) => (
                Algorithm::HS256,
                Some(DecodingKey::from_secret(secret.expose().as_bytes())),
                Some(EncodingKey::from_secret(secret.expose().as_bytes())),
            ),
            (None, Some(path)) => {
                let pem = std::fs::read(path).map_err(|e| {
                    ConfigError(format!(
                        "cannot read ROOMCAST_JWT_PUBLIC_KEY {}: {e}",
                        path.display()
                    ))
                })?;
                if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
                    (Algorithm::RS256, Some(key), None)
                } else if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
                    (Algorithm::ES256, Some(key), None)
                } else {
                    return Err(ConfigError(format!(
                        "ROOMCAST_JWT_PUBLIC_KEY {} is not an RSA or EC public key in PEM",
                        path.display()
                    )));
                }
            }
            (None, None) => (Algorithm::HS256, None, None),
        };
        let mut validation = Validation::new(algorithm);
        validation.validate_nbf = true;
        validation.leeway = CLOCK_LEEWAY_S;
        // A configured issuer or audience is required, not only checked when present:
        // jsonwebtoken accepts a token that leaves the claim out unless it is listed.
        let mut required = vec!["exp"];
        match &config.jwt_issuer {
            Some(iss) => {
                validation.set_issuer(&[iss]);
                required.push("iss");
            }
            None => validation.iss = None,
        }
        match &config.jwt_audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        Ok(Authenticator {
            mode: config.auth,
            decoding,
            encoding,
            validation,
            algorithm,
            issuer: config.jwt_issuer.clone(),
            audience: config.jwt_audience.clone(),
        })
    }

    pub fn is_off(&self) -> bool {
        self.mode == AuthMode::Off
    }

    /// Verifies a token and returns who it names.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let key = self
            .decoding
            .as_ref()
            .ok_or_else(|| AuthError::Invalid("no verification key configured".into()))?;
        let data = jsonwebtoken::decode::<Claims>(token, key, &self.validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => AuthError::Invalid("token not valid yet".into()),
                ErrorKind::InvalidSignature => AuthError::Invalid("bad signature".into()),
                ErrorKind::InvalidAlgorithm => AuthError::Invalid("algorithm not accepted".into()),
                ErrorKind::InvalidIssuer => AuthError::Invalid("wrong issuer".into()),
                ErrorKind::InvalidAudience => AuthError::Invalid("wrong audience".into()),
                ErrorKind::MissingRequiredClaim(c) => AuthError::Invalid(format!("missing `{c}`")),
                _ => AuthError::Invalid("malformed token".into()),
            }
        })?;
        let claims = data.claims;
        let user = check_claims(
            &claims.sub,
            claims.sessions.as_deref(),
            claims.name.as_deref(),
        )
        .map_err(AuthError::Invalid)?;
        if claims.roles.is_empty() {
            return Err(AuthError::Forbidden("token allows no role".into()));
        }
        if claims.sessions.as_ref().is_some_and(Vec::is_empty) {
            return Err(AuthError::Forbidden("token allows no session".into()));
        }
        Ok(Identity {
            user,
            roles: claims.roles,
            sessions: claims.sessions.map(|s| s.into_iter().collect()),
            name: claims.name,
            expires_at_ms: Some(claims.exp.saturating_mul(1000)),
        })
    }

    /// The identity of an unauthenticated connection when auth is off (development).
    pub fn anonymous(&self, user: Option<&str>) -> Identity {
        Identity {
            user: user
                .and_then(|u| UserId::parse(u, "user").ok())
                .unwrap_or_else(|| UserId::generated(format!("anon-{}", random_id(8)))),
            roles: vec![Role::Controller, Role::Display, Role::Observer],
            sessions: None,
            name: None,
            expires_at_ms: None,
        }
    }

    /// Whether this gateway can sign tokens: only with `ROOMCAST_JWT_SECRET` (with a public
    /// key it verifies what the application's backend signed, and signs nothing).
    pub fn can_mint(&self) -> bool {
        self.encoding.is_some()
    }

    /// Signs a token with the configured secret (HS256 only: we never hold private keys).
    pub fn mint(&self, args: &TokenArgs) -> Result<String, AuthError> {
        let key = self.encoding.as_ref().ok_or_else(|| {
            AuthError::Invalid(
                "minting needs ROOMCAST_JWT_SECRET (public-key mode cannot sign)".into(),
            )
        })?;
        self.mint_claims(
            key,
            args.sub.clone(),
            args.roles.clone(),
            &args.sessions,
            args.name.clone(),
            args.ttl,
        )
    }

    /// Signs a token expiring at `exp` (Unix seconds), for the REST session routes.
    pub fn mint_until(
        &self,
        sub: String,
        roles: Vec<Role>,
        sessions: &[String],
        name: Option<String>,
        exp: u64,
    ) -> Result<String, AuthError> {
        let key = self.encoding.as_ref().ok_or_else(|| {
            AuthError::Invalid(
                "minting needs ROOMCAST_JWT_SECRET (public-key mode cannot sign)".into(),
            )
        })?;
        let now = now_ms() / 1000;
        let ttl = Duration::from_secs(exp.saturating_sub(now).max(1));
        self.mint_claims(key, sub, roles, sessions, name, ttl)
    }

    fn mint_claims(
        &self,
        key: &EncodingKey,
        sub: String,
        roles: Vec<Role>,
        sessions: &[String],
        name: Option<String>,
        ttl: Duration,
    ) -> Result<String, AuthError> {
        check_claims(&sub, Some(sessions), name.as_deref()).map_err(AuthError::Invalid)?;
        let now = now_ms() / 1000;
        let claims = Claims {
            sub,
            roles,
            sessions: (!sessions.is_empty()).then(|| sessions.to_vec()),
            name,
            exp: now + ttl.as_secs().max(1),
            nbf: Some(now),
            iat: Some(now),
            iss: self.issuer.clone(),
            aud: self.audience.clone().map(Audience::One),
        };
        jsonwebtoken::encode(&Header::new(self.algorithm), &claims, key)
            .map_err(|e| AuthError::Invalid(format!("cannot sign: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(extra: &[(&str, &str)]) -> Authenticator {
        let mut pairs = vec![("jwt-secret", "0123456789abcdef0123456789abcdef")];
        pairs.extend_from_slice(extra);
        Authenticator::from_config(&Config::from_pairs(&pairs).unwrap()).unwrap()
    }

    fn args(ttl: Duration) -> TokenArgs {
        TokenArgs {
            sub: "alice".into(),
            roles: vec![Role::Controller, Role::Display],
            sessions: vec!["s1".into()],
            name: Some("Alice".into()),
            ttl,
        }
    }

    #[test]
    fn mint_then_verify() {
        let a = auth(&[]);
        let token = a.mint(&args(Duration::from_secs(60))).unwrap();
        let id = a.verify(&token).unwrap();
        assert_eq!(id.user, "alice");
        assert_eq!(id.default_role(), Some(Role::Controller));
        assert!(id.may_join("s1"));
        assert!(!id.may_join("s2"));
    }

    #[test]
    fn wrong_secret_is_invalid() {
        let token = auth(&[]).mint(&args(Duration::from_secs(60))).unwrap();
        let other = Authenticator::from_config(
            &Config::from_pairs(&[("jwt-secret", "another-secret-of-enough-length")]).unwrap(),
        )
        .unwrap();
        assert!(matches!(other.verify(&token), Err(AuthError::Invalid(_))));
    }

    #[test]
    fn alg_none_is_refused() {
        use base64_url as b64;
        let header = b64(br#"{"alg":"none","typ":"JWT"}"#);
        let body = b64(br#"{"sub":"eve","roles":["controller"],"exp":99999999999}"#);
        let token = format!("{header}.{body}.");
        assert!(matches!(
            auth(&[]).verify(&token),
            Err(AuthError::Invalid(_))
        ));
    }

    #[test]
    fn audience_and_issuer_are_checked_when_configured() {
        let minter = auth(&[("jwt-audience", "other"), ("jwt-issuer", "me")]);
        let token = minter.mint(&args(Duration::from_secs(60))).unwrap();
        let checker = auth(&[("jwt-audience", "roomcast"), ("jwt-issuer", "me")]);
        assert!(matches!(checker.verify(&token), Err(AuthError::Invalid(_))));
        let same = auth(&[("jwt-audience", "other"), ("jwt-issuer", "me")]);
        assert!(same.verify(&token).is_ok());
    }

    #[test]
    fn garbage_is_invalid() {
        let a = auth(&[]);
        for t in ["", "a.b.c", "not a token", "....."] {
            assert!(matches!(a.verify(t), Err(AuthError::Invalid(_))), "{t}");
        }
    }

    fn public_key_auth(file: &str) -> Authenticator {
        let path = format!("{}/tests/keys/{file}", env!("CARGO_MANIFEST_DIR"));
        Authenticator::from_config(&Config::from_pairs(&[("jwt-public-key", &path)]).unwrap())
            .unwrap()
    }

    fn sign_with(alg: Algorithm, key: EncodingKey, exp_from_now: i64) -> String {
        let now = (now_ms() / 1000) as i64;
        let claims = Claims {
            sub: "kiosk".into(),
            roles: vec![Role::Display],
            sessions: None,
            name: None,
            exp: (now + exp_from_now) as u64,
            nbf: None,
            iat: None,
            iss: None,
            aud: None,
        };
        jsonwebtoken::encode(&Header::new(alg), &claims, &key).unwrap()
    }

    /// Signs `claims` with the tests' shared secret.
    fn signed(claims: &serde_json::Value) -> String {
        let key = EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef");
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &key).unwrap()
    }

    #[test]
    fn exp_and_nbf_allow_the_documented_clock_skew_and_no_more() {
        let a = auth(&[]);
        let now = (now_ms() / 1000) as i64;
        let skew = CLOCK_LEEWAY_S as i64;
        let token = |exp: i64, nbf: i64| {
            signed(&serde_json::json!({"sub": "u", "roles": ["display"], "exp": exp, "nbf": nbf}))
        };
        assert!(
            a.verify(&token(now - skew + 2, now)).is_ok(),
            "expired within the skew"
        );
        assert!(matches!(
            a.verify(&token(now - skew - 2, now)),
            Err(AuthError::Expired)
        ));
        assert!(
            a.verify(&token(now + 60, now + skew - 2)).is_ok(),
            "valid within the skew"
        );
        assert!(a.verify(&token(now + 60, now + skew + 2)).is_err());
    }

    #[test]
    fn a_token_that_allows_no_session_is_forbidden() {
        let a = auth(&[]);
        let exp = now_ms() / 1000 + 60;
        let none = signed(
            &serde_json::json!({"sub": "u", "roles": ["display"], "sessions": [], "exp": exp}),
        );
        assert!(matches!(a.verify(&none), Err(AuthError::Forbidden(_))));
        let one = signed(
            &serde_json::json!({"sub": "u", "roles": ["display"], "sessions": ["s"], "exp": exp}),
        );
        assert!(a.verify(&one).is_ok());
    }

    #[test]
    fn an_audience_array_that_holds_the_configured_one_is_accepted() {
        let a = auth(&[("jwt-audience", "roomcast")]);
        let exp = now_ms() / 1000 + 60;
        let with = |aud: serde_json::Value| {
            signed(&serde_json::json!({"sub": "u", "roles": ["display"], "exp": exp, "aud": aud}))
        };
        assert!(a
            .verify(&with(serde_json::json!(["other", "roomcast"])))
            .is_ok());
        assert!(a.verify(&with(serde_json::json!("roomcast"))).is_ok());
        assert!(matches!(
            a.verify(&with(serde_json::json!(["other"]))),
            Err(AuthError::Invalid(m)) if m == "wrong audience"
        ));
        // The gateway's own tokens name the configured audience and verify.
        let minted = a.mint(&args(Duration::from_secs(60))).unwrap();
        assert!(a.verify(&minted).is_ok());
    }

    fn private_pem(file: &str) -> Vec<u8> {
        std::fs::read(format!("{}/tests/keys/{file}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    #[test]
    fn rs256_and_es256_public_keys_verify_and_pin_their_algorithm() {
        let rsa = public_key_auth("rs256-public.pem");
        let ec = public_key_auth("es256-public.pem");
        let rs_token = sign_with(
            Algorithm::RS256,
            EncodingKey::from_rsa_pem(&private_pem("rs256-private.pem")).unwrap(),
            60,
        );
        let es_token = sign_with(
            Algorithm::ES256,
            EncodingKey::from_ec_pem(&private_pem("es256-private.pem")).unwrap(),
            60,
        );
        assert_eq!(rsa.verify(&rs_token).unwrap().user, "kiosk");
        assert_eq!(ec.verify(&es_token).unwrap().user, "kiosk");
        // Each key accepts only its own algorithm.
        assert!(rsa.verify(&es_token).is_err());
        assert!(ec.verify(&rs_token).is_err());
        // An HS256 token "signed" with the public key's text must not pass (key confusion).
        let public_text = private_pem("rs256-public.pem");
        let confused = sign_with(Algorithm::HS256, EncodingKey::from_secret(&public_text), 60);
        assert!(rsa.verify(&confused).is_err());
        // Expired is reported as such (beyond the 5 s leeway).
        let expired = sign_with(
            Algorithm::ES256,
            EncodingKey::from_ec_pem(&private_pem("es256-private.pem")).unwrap(),
            -60,
        );
        assert_eq!(ec.verify(&expired).unwrap_err(), AuthError::Expired);
        // Public-key mode cannot mint.
        assert!(ec.mint(&args(Duration::from_secs(60))).is_err());
    }

    #[test]
    fn a_non_key_file_is_a_config_error() {
        let path = format!("{}/Cargo.toml", env!("CARGO_MANIFEST_DIR"));
        let config = Config::from_pairs(&[("jwt-public-key", &path)]).unwrap();
        assert!(Authenticator::from_config(&config).is_err());
    }

    /// Unpadded base64url, enough for forging test tokens.
    fn base64_url(bytes: &[u8]) -> String {
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..=chunk.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }

    #[test]
    fn a_token_may_list_exactly_the_maximum_of_sessions() {
        let sessions = |n: usize| (0..n).map(|i| format!("s{i}")).collect::<Vec<_>>();
        assert!(check_claims("ann", Some(&sessions(MAX_TOKEN_SESSIONS)), None).is_ok());
        let e = check_claims("ann", Some(&sessions(MAX_TOKEN_SESSIONS + 1)), None).unwrap_err();
        assert!(e.contains("more than"), "{e}");
    }

    /// Each refusal says why: the reason reaches the client's 401 and the logs.
    #[test]
    fn each_refusal_names_its_reason() {
        let secret = "0123456789abcdef0123456789abcdef";
        let now = (now_ms() / 1000) as i64;
        let claims = |f: &dyn Fn(&mut serde_json::Value)| {
            let mut c = serde_json::json!({
                "sub": "ann", "roles": ["controller"], "exp": now + 60,
                "iss": "me", "aud": "roomcast"
            });
            f(&mut c);
            c
        };
        let sign = |alg: Algorithm, key: &[u8], c: serde_json::Value| {
            jsonwebtoken::encode(&Header::new(alg), &c, &EncodingKey::from_secret(key)).unwrap()
        };
        let a = auth(&[("jwt-issuer", "me"), ("jwt-audience", "roomcast")]);
        let reason = |token: String| match a.verify(&token) {
            Err(AuthError::Invalid(r)) => r,
            other => panic!("expected a refusal, got {other:?}"),
        };
        assert!(a
            .verify(&sign(Algorithm::HS256, secret.as_bytes(), claims(&|_| {})))
            .is_ok());
        let future = claims(&|c| c["nbf"] = (now + 3600).into());
        assert_eq!(
            reason(sign(Algorithm::HS256, secret.as_bytes(), future)),
            "token not valid yet"
        );
        let forged = sign(
            Algorithm::HS256,
            b"another-secret-of-enough-length!",
            claims(&|_| {}),
        );
        assert_eq!(reason(forged), "bad signature");
        let other_alg = sign(Algorithm::HS512, secret.as_bytes(), claims(&|_| {}));
        assert_eq!(reason(other_alg), "algorithm not accepted");
        let issuer = claims(&|c| c["iss"] = "someone-else".into());
        assert_eq!(
            reason(sign(Algorithm::HS256, secret.as_bytes(), issuer)),
            "wrong issuer"
        );
        let audience = claims(&|c| c["aud"] = "another-app".into());
        assert_eq!(
            reason(sign(Algorithm::HS256, secret.as_bytes(), audience)),
            "wrong audience"
        );
        // A configured issuer or audience must be present, not only right when present.
        for claim in ["iss", "aud"] {
            let without = claims(&|c| {
                c.as_object_mut().map(|o| o.remove(claim));
            });
            assert_eq!(
                reason(sign(Algorithm::HS256, secret.as_bytes(), without)),
                format!("missing `{claim}`")
            );
        }
        assert_eq!(reason("x.y.z".into()), "malformed token");
    }

    /// A token lives as long as asked: `ttl` from now (`roomcast token`), or until `exp`
    /// (the REST routes' session tokens).
    #[test]
    fn minted_tokens_expire_when_asked() {
        let a = auth(&[]);
        let now_s = now_ms() / 1000;
        let within = |at_ms: Option<u64>, expected_s: u64| {
            let at_s = at_ms.expect("an expiry") / 1000;
            assert!(
                at_s.abs_diff(expected_s) <= 2,
                "expires at {at_s}, expected about {expected_s}"
            );
        };
        let ttl = a.mint(&args(Duration::from_secs(600))).unwrap();
        within(a.verify(&ttl).unwrap().expires_at_ms, now_s + 600);
        let until = a
            .mint_until("bob".into(), vec![Role::Display], &[], None, now_s + 120)
            .unwrap();
        within(a.verify(&until).unwrap().expires_at_ms, now_s + 120);
    }
}
