//! The webhook and join-hook settings (`ROOMCAST_WEBHOOK_*`, `ROOMCAST_JOIN_HOOK_*`;
//! docs/WEBHOOKS.md): parsed by clap into [`WebhookConfig`] and checked by
//! [`WebhookConfig::validate`]; its helpers turn the raw strings into what delivery uses
//! (the signing keys, the event types).

use std::time::Duration;

use base64::Engine;
use clap::Args;

use super::{parse_duration, ConfigError, Secret};

/// Every event type, in the order docs/WEBHOOKS.md lists them.
pub const EVENT_TYPES: [&str; 9] = [
    "session.created",
    "session.inactive",
    "session.active",
    "session.resolved",
    "session.resumed",
    "session.ended",
    "member.joined",
    "member.left",
    "message.published",
];

/// What a join does when the join hook cannot answer (timeout, error, bad answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HookFailure {
    /// Refuse the join (the default): a backend that decides who joins must be asked.
    Closed,
    /// Let the join through as if no hook were configured.
    Open,
}

#[derive(Debug, Clone, Args)]
pub struct WebhookConfig {
    /// Comma-separated http(s) URLs that receive every recorded event. Empty: no event is
    /// recorded, and webhooks cost nothing.
    #[arg(
        long = "webhook-urls",
        env = "ROOMCAST_WEBHOOK_URLS",
        value_delimiter = ','
    )]
    pub urls: Vec<String>,
    /// Comma-separated signing secrets, `whsec_` + base64 (at least 16 bytes). Every
    /// request carries one signature per secret, so a receiver can rotate.
    #[arg(
        long = "webhook-secrets",
        env = "ROOMCAST_WEBHOOK_SECRETS",
        value_delimiter = ','
    )]
    pub secrets: Vec<Secret>,
    /// Comma-separated event types to record; `session.*` and `member.*` name a family.
    /// `message.published` costs a stream write per publish: opt in here for every
    /// session, or per session (`webhooks.messages` at creation or by PATCH).
    #[arg(
        long = "webhook-events",
        env = "ROOMCAST_WEBHOOK_EVENTS",
        value_delimiter = ',',
        default_value = "session.*,member.*"
    )]
    pub events: Vec<String>,
    /// How long one delivery may take before it counts as failed.
    #[arg(long = "webhook-timeout", env = "ROOMCAST_WEBHOOK_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// The first retry's delay; each next one doubles (with jitter) up to the max.
    #[arg(long = "webhook-retry-base", env = "ROOMCAST_WEBHOOK_RETRY_BASE", default_value = "1s", value_parser = parse_duration)]
    pub retry_base: Duration,
    #[arg(long = "webhook-retry-max", env = "ROOMCAST_WEBHOOK_RETRY_MAX", default_value = "5m", value_parser = parse_duration)]
    pub retry_max: Duration,
    /// Tries per event and endpoint before it is dead-lettered.
    #[arg(
        long = "webhook-max-attempts",
        env = "ROOMCAST_WEBHOOK_MAX_ATTEMPTS",
        default_value_t = 12
    )]
    pub max_attempts: u32,
    /// An event older than this is dead-lettered after its next failure, whatever its
    /// tries.
    #[arg(long = "webhook-max-age", env = "ROOMCAST_WEBHOOK_MAX_AGE", default_value = "24h", value_parser = parse_duration)]
    pub max_age: Duration,
    /// Deliveries in flight per endpoint on one instance (sessions go in parallel up to
    /// it; one session's events always go one at a time).
    #[arg(
        long = "webhook-concurrency",
        env = "ROOMCAST_WEBHOOK_CONCURRENCY",
        default_value_t = 64
    )]
    pub concurrency: usize,
    /// A session's delivery or a delivery request left unattended this long (its instance
    /// died) is taken over by another instance.
    #[arg(long = "webhook-claim-idle", env = "ROOMCAST_WEBHOOK_CLAIM_IDLE", default_value = "30s", value_parser = parse_duration)]
    pub claim_idle: Duration,
    /// Undelivered events kept per session (the oldest go first beyond it).
    #[arg(
        long = "webhook-stream-max",
        env = "ROOMCAST_WEBHOOK_STREAM_MAX",
        default_value_t = 10_000
    )]
    pub stream_max: u32,
    /// Consecutive failures that open an endpoint's circuit breaker.
    #[arg(
        long = "webhook-breaker-failures",
        env = "ROOMCAST_WEBHOOK_BREAKER_FAILURES",
        default_value_t = 5
    )]
    pub breaker_failures: u32,
    /// How long an open breaker waits before one probe.
    #[arg(long = "webhook-breaker-cooldown", env = "ROOMCAST_WEBHOOK_BREAKER_COOLDOWN", default_value = "30s", value_parser = parse_duration)]
    pub breaker_cooldown: Duration,
    /// Asked before every join (WebSocket and REST presence): allow, deny, or add member
    /// info. Unset: joins are decided by the token alone.
    #[arg(long = "join-hook-url", env = "ROOMCAST_JOIN_HOOK_URL")]
    pub join_hook_url: Option<String>,
    #[arg(long = "join-hook-timeout", env = "ROOMCAST_JOIN_HOOK_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub join_hook_timeout: Duration,
    /// What a join does when the hook does not answer in time or answers nonsense.
    #[arg(
        long = "join-hook-failure",
        env = "ROOMCAST_JOIN_HOOK_FAILURE",
        value_enum,
        default_value = "closed"
    )]
    pub join_hook_failure: HookFailure,
}

impl WebhookConfig {
    /// Whether events are recorded and delivered.
    pub fn enabled(&self) -> bool {
        !self.urls.is_empty()
    }

    /// The types recorded, each named once.
    pub fn event_types(&self) -> Result<Vec<&'static str>, ConfigError> {
        let mut out = Vec::new();
        for raw in &self.events {
            let name = raw.trim();
            let matched: Vec<&'static str> = match name.strip_suffix(".*") {
                Some(family) => EVENT_TYPES
                    .iter()
                    .copied()
                    .filter(|t| t.split('.').next() == Some(family))
                    .collect(),
                None => EVENT_TYPES.iter().copied().filter(|t| *t == name).collect(),
            };
            if matched.is_empty() {
                return Err(ConfigError(format!(
                    "ROOMCAST_WEBHOOK_EVENTS: `{name}` is no event type ({}, or a family such as session.*)",
                    EVENT_TYPES.join(", ")
                )));
            }
            for t in matched {
                if !out.contains(&t) {
                    out.push(t);
                }
            }
        }
        Ok(out)
    }

    /// The signing keys, decoded from `whsec_<base64>`.
    pub fn keys(&self) -> Result<Vec<Vec<u8>>, ConfigError> {
        self.secrets
            .iter()
            .map(|s| decode_secret(s.expose()))
            .collect()
    }

    /// Checks ranges and combinations; `redis_timeout` bounds how soon work may be
    /// taken over.
    pub fn validate(&self, redis_timeout: Duration) -> Result<(), ConfigError> {
        let fail = |m: String| Err(ConfigError(m));
        for url in &self.urls {
            check_url("ROOMCAST_WEBHOOK_URLS", url)?;
        }
        if let Some(url) = &self.join_hook_url {
            check_url("ROOMCAST_JOIN_HOOK_URL", url)?;
        }
        let hooked = self.enabled() || self.join_hook_url.is_some();
        if hooked && self.secrets.is_empty() {
            return fail(
                "ROOMCAST_WEBHOOK_SECRETS is required with ROOMCAST_WEBHOOK_URLS or ROOMCAST_JOIN_HOOK_URL".into(),
            );
        }
        self.keys()?;
        self.event_types()?;
        if self.timeout < Duration::from_millis(10)
            || self.join_hook_timeout < Duration::from_millis(10)
        {
            return fail(
                "ROOMCAST_WEBHOOK_TIMEOUT and ROOMCAST_JOIN_HOOK_TIMEOUT must be at least 10ms"
                    .into(),
            );
        }
        if self.retry_base < Duration::from_millis(10) || self.retry_max < self.retry_base {
            return fail(
                "ROOMCAST_WEBHOOK_RETRY_BASE must be at least 10ms and at most ROOMCAST_WEBHOOK_RETRY_MAX".into(),
            );
        }
        if self.max_attempts == 0 {
            return fail("ROOMCAST_WEBHOOK_MAX_ATTEMPTS must be at least 1".into());
        }
        if !(1..=10_000).contains(&self.concurrency) {
            return fail("ROOMCAST_WEBHOOK_CONCURRENCY must be 1 to 10000".into());
        }
        if self.stream_max < 100 {
            return fail("ROOMCAST_WEBHOOK_STREAM_MAX must be at least 100".into());
        }
        if self.breaker_failures == 0 || self.breaker_cooldown < Duration::from_millis(100) {
            return fail(
                "ROOMCAST_WEBHOOK_BREAKER_FAILURES must be at least 1 and ROOMCAST_WEBHOOK_BREAKER_COOLDOWN at least 100ms".into(),
            );
        }
        // A lease shorter than a request could lapse while its owner still waits for
        // the answer: another instance would send the same events meanwhile.
        if self.claim_idle < self.timeout * 2 {
            return fail(
                "ROOMCAST_WEBHOOK_CLAIM_IDLE must be at least twice ROOMCAST_WEBHOOK_TIMEOUT"
                    .into(),
            );
        }
        // Work is taken over only once no command of its old owner can still be running:
        // a script is waited for at most twice the Redis timeout (two attempts).
        if self.claim_idle < self.settle(redis_timeout) {
            return fail(format!(
                "ROOMCAST_WEBHOOK_CLAIM_IDLE must be at least 4 × ROOMCAST_REDIS_TIMEOUT ({})",
                humantime::format_duration(self.settle(redis_timeout))
            ));
        }
        Ok(())
    }

    /// How long after a delivery request was filed the session it names may still get
    /// events from the change it announced: a script is waited for at most two attempts
    /// of the Redis timeout; twice that is the margin.
    pub fn settle(&self, redis_timeout: Duration) -> Duration {
        redis_timeout * 4
    }
}

fn check_url(setting: &str, url: &str) -> Result<(), ConfigError> {
    let parsed: Result<hyper::Uri, _> = url.trim().parse();
    match parsed {
        Ok(uri)
            if matches!(uri.scheme_str(), Some("http") | Some("https"))
                && uri.host().is_some_and(|h| !h.is_empty()) =>
        {
            Ok(())
        }
        _ => Err(ConfigError(format!(
            "{setting}: `{url}` is not an http:// or https:// URL"
        ))),
    }
}

/// `whsec_<base64>` to the key bytes (the Standard Webhooks form).
pub fn decode_secret(secret: &str) -> Result<Vec<u8>, ConfigError> {
    let bad = || {
        ConfigError(
            "ROOMCAST_WEBHOOK_SECRETS: each secret is whsec_ followed by base64 of at least 16 bytes"
                .into(),
        )
    };
    let encoded = secret.trim().strip_prefix("whsec_").ok_or_else(bad)?;
    let key = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| bad())?;
    if key.len() < 16 {
        return Err(bad());
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn with(pairs: &[(&str, &str)]) -> Result<Config, String> {
        let mut all = vec![("jwt-secret", "0123456789abcdef0123")];
        all.extend_from_slice(pairs);
        Config::from_pairs(&all).map_err(|e| e.to_string())
    }

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    #[test]
    fn families_expand_and_unknown_types_are_named() {
        let c = with(&[
            ("webhook-urls", "http://127.0.0.1:9/hook"),
            ("webhook-secrets", SECRET),
            ("webhook-events", "member.*,message.published,member.left"),
        ])
        .unwrap();
        assert_eq!(
            c.webhooks.event_types().unwrap(),
            ["member.joined", "member.left", "message.published"]
        );
        let e = with(&[
            ("webhook-urls", "http://127.0.0.1:9/hook"),
            ("webhook-secrets", SECRET),
            ("webhook-events", "member.typo"),
        ])
        .unwrap_err();
        assert!(
            e.contains("ROOMCAST_WEBHOOK_EVENTS") && e.contains("member.typo"),
            "{e}"
        );
    }

    #[test]
    fn bad_settings_name_the_setting() {
        let cases: [(&[(&str, &str)], &str); 7] = [
            (
                &[("webhook-urls", "http://127.0.0.1:9/")],
                "ROOMCAST_WEBHOOK_SECRETS is required",
            ),
            (&[("join-hook-url", "ftp://x/")], "ROOMCAST_JOIN_HOOK_URL"),
            (
                &[
                    ("webhook-urls", "http://h/"),
                    ("webhook-secrets", "not-whsec"),
                ],
                "ROOMCAST_WEBHOOK_SECRETS",
            ),
            (
                &[
                    ("webhook-urls", "http://h/"),
                    ("webhook-secrets", "whsec_c2hvcnQ="),
                ],
                "at least 16 bytes",
            ),
            (
                &[
                    ("webhook-urls", "http://h/"),
                    ("webhook-secrets", SECRET),
                    ("webhook-claim-idle", "1s"),
                ],
                "ROOMCAST_WEBHOOK_CLAIM_IDLE",
            ),
            (
                &[
                    ("webhook-urls", "http://h/"),
                    ("webhook-secrets", SECRET),
                    ("webhook-concurrency", "0"),
                ],
                "ROOMCAST_WEBHOOK_CONCURRENCY",
            ),
            (
                &[
                    ("webhook-urls", "http://h/"),
                    ("webhook-secrets", SECRET),
                    ("webhook-timeout", "20s"),
                ],
                "twice ROOMCAST_WEBHOOK_TIMEOUT",
            ),
        ];
        for (pairs, want) in cases {
            let e = with(pairs).unwrap_err();
            assert!(e.contains(want), "{pairs:?}: {e}");
        }
    }

    #[test]
    fn off_by_default_and_cheap() {
        let c = with(&[]).unwrap();
        assert!(!c.webhooks.enabled());
        assert!(c.webhooks.join_hook_url.is_none());
    }
}
