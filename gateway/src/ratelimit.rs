//! Rate limits: exact sliding windows shared by every instance through Redis, and the
//! per-connection token bucket for ephemeral frames.
//!
//! Owns the scopes of README "Security" (rate limits), their keys (`rc:rl:{SCOPE:KEY}`),
//! the decision type both HTTP and WebSocket answers are built from, the IETF
//! `RateLimit-Policy` / `RateLimit` header values, the one `check` both the REST
//! middleware and the WebSocket side call, and the 429 answer. When Redis cannot answer,
//! callers decide: publishes fail closed (they could not be stored anyway), connection and
//! API checks fail open.

use std::time::{Duration, Instant};

use std::net::IpAddr;

use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use roomcast_shared::ErrorCode;

use crate::config::{Config, Rate};
use crate::metrics as m;
use crate::problem::problem;
use crate::App;

/// A limited scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Publishes per user.
    Publish,
    /// Publishes per IP.
    PublishIp,
    /// WebSocket connections per IP.
    Connect,
    /// REST requests per IP.
    Api,
    /// Session creation and joining per IP.
    ApiStrict,
    /// Any request or connection per IP, over a short window.
    Burst,
    /// Sessions a user creates implicitly by joining one that does not exist.
    Create,
}

impl Scope {
    pub const ALL: [Scope; 7] = [
        Scope::Publish,
        Scope::PublishIp,
        Scope::Connect,
        Scope::Api,
        Scope::ApiStrict,
        Scope::Burst,
        Scope::Create,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scope::Publish => "publish",
            Scope::PublishIp => "publish_ip",
            Scope::Connect => "connect",
            Scope::Api => "api",
            Scope::ApiStrict => "api_strict",
            Scope::Burst => "burst",
            Scope::Create => "create",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|scope| scope.name() == s)
    }

    pub fn rate(self, config: &Config) -> Rate {
        match self {
            Scope::Publish => config.rate_publish,
            Scope::PublishIp => config.rate_publish_ip,
            Scope::Connect => config.rate_connect,
            Scope::Api => config.rate_api,
            Scope::ApiStrict => config.rate_api_strict,
            Scope::Burst => config.rate_burst,
            Scope::Create => config.rate_create,
        }
    }
}

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub scope: Scope,
    pub admitted: bool,
    pub limit: u32,
    pub window: Duration,
    /// Admissions left in the current window.
    pub remaining: u32,
    /// Until the oldest counted admission leaves the window (the next free slot).
    pub reset: Duration,
}

impl Decision {
    /// From the script's answer: admitted, count after, oldest admission, now (all ms).
    pub fn from_log(
        scope: Scope,
        rate: Rate,
        admitted: bool,
        count: u64,
        oldest_ms: u64,
        now_ms: u64,
    ) -> Self {
        let window_ms = rate.window.as_millis() as u64;
        let reset_ms = if oldest_ms == 0 {
            0
        } else {
            (oldest_ms + window_ms).saturating_sub(now_ms)
        };
        Decision {
            scope,
            admitted,
            limit: rate.count,
            window: rate.window,
            remaining: rate
                .count
                .saturating_sub(count.min(u64::from(u32::MAX)) as u32),
            reset: Duration::from_millis(reset_ms),
        }
    }

    /// How long a refused client should wait.
    pub fn retry_after(&self) -> Duration {
        if self.admitted {
            Duration::ZERO
        } else {
            self.reset.max(Duration::from_millis(1))
        }
    }

    /// `RateLimit-Policy: "<scope>";q=<limit>;w=<window s>` (IETF draft, structured field).
    pub fn policy_header(&self) -> String {
        format!(
            "\"{}\";q={};w={}",
            self.scope.name(),
            self.limit,
            self.window.as_secs().max(1)
        )
    }

    /// `RateLimit: "<scope>";r=<remaining>;t=<seconds to reset>`.
    pub fn limit_header(&self) -> String {
        format!(
            "\"{}\";r={};t={}",
            self.scope.name(),
            self.remaining,
            ceil_secs(self.reset)
        )
    }
}

/// Whole seconds, rounded up (`Retry-After` must not invite an early retry).
pub(crate) fn ceil_secs(d: Duration) -> u64 {
    d.as_millis().div_ceil(1000) as u64
}

/// An in-memory token bucket, for one connection's `signal` and `typing` frames.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    capacity: f64,
    per_sec: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// `rate.count` tokens refilled over `rate.window`, burst of `rate.count`. `None` when
    /// the rate is disabled.
    pub(crate) fn new(rate: Rate) -> Option<Self> {
        if rate.is_disabled() {
            return None;
        }
        let capacity = f64::from(rate.count);
        Some(TokenBucket {
            capacity,
            per_sec: capacity / rate.window.as_secs_f64(),
            tokens: capacity,
            last: Instant::now(),
        })
    }

    /// Takes a token, or answers how long until one is available.
    pub(crate) fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.capacity);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.per_sec))
        }
    }
}

pub(crate) static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
pub(crate) static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// Checks one scope for `key`, failing open: `None` when the scope is disabled or Redis
/// did not answer (refusing everyone while Redis blinks would turn an outage of the
/// limiter into an outage of the service). Publishes fail closed instead: their windows
/// are checked with the publish itself (`Store::publish_limited`).
pub(crate) async fn check(app: &App, scope: Scope, key: &str) -> Option<Decision> {
    let rate = scope.rate(&app.config);
    if rate.is_disabled() {
        return None;
    }
    match app.store.rate_check(scope, key, rate).await {
        Ok(decision) => {
            if !decision.admitted {
                m::rate_limited(scope.name());
            }
            Some(decision)
        }
        Err(e) => {
            m::rate_limit_unavailable(scope.name());
            tracing::debug!(scope = scope.name(), error = %e, "rate limit check skipped (fail open)");
            None
        }
    }
}

/// Adds the IETF headers of a decision to a response.
pub(crate) fn add_headers(headers: &mut HeaderMap, decision: &Decision) {
    if let Ok(v) = HeaderValue::from_str(&decision.policy_header()) {
        headers.insert(RATELIMIT_POLICY.clone(), v);
    }
    if let Ok(v) = HeaderValue::from_str(&decision.limit_header()) {
        headers.insert(RATELIMIT.clone(), v);
    }
}

/// The 429 answer for a refused decision.
pub(crate) fn refusal(decision: &Decision, what: &str) -> Response {
    let mut response = problem(
        StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::RateLimited,
        &format!(
            "{what}: limit {} per {}s ({}); retry after {} ms",
            decision.limit,
            decision.window.as_secs().max(1),
            decision.scope.name(),
            decision.retry_after().as_millis()
        ),
    );
    let headers = response.headers_mut();
    add_headers(headers, decision);
    if let Ok(v) = HeaderValue::from_str(&ceil_secs(decision.retry_after()).max(1).to_string()) {
        headers.insert(header::RETRY_AFTER, v);
    }
    response
}

/// The rate-limit key of an address: IPv4 as is, IPv6 by its /64 (one subscriber
/// usually holds a whole /64, so a /128 key would let it rotate past every limit).
pub(crate) fn ip_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(count: u32, secs: u64) -> Rate {
        Rate {
            count,
            window: Duration::from_secs(secs),
        }
    }

    #[test]
    fn scopes_round_trip() {
        for s in Scope::ALL {
            assert_eq!(Scope::parse(s.name()), Some(s));
        }
        assert_eq!(Scope::parse("nope"), None);
    }

    #[test]
    fn decisions_and_headers() {
        let d = Decision::from_log(Scope::Api, rate(100, 900), true, 40, 1_000, 61_000);
        assert_eq!(d.remaining, 60);
        assert_eq!(d.reset, Duration::from_secs(840));
        assert_eq!(d.policy_header(), "\"api\";q=100;w=900");
        assert_eq!(d.limit_header(), "\"api\";r=60;t=840");
        assert_eq!(d.retry_after(), Duration::ZERO);
        let refused = Decision::from_log(Scope::Burst, rate(10, 1), false, 10, 1_000, 1_400);
        assert_eq!(refused.remaining, 0);
        assert_eq!(refused.retry_after(), Duration::from_millis(600));
        assert_eq!(ceil_secs(refused.retry_after()), 1);
    }

    #[test]
    fn bucket_refills_at_its_rate() {
        let start = Instant::now();
        let mut b = TokenBucket::new(rate(2, 1)).unwrap();
        assert!(b.take(start).is_ok());
        assert!(b.take(start).is_ok());
        let wait = b.take(start).unwrap_err();
        assert!(
            wait > Duration::from_millis(400) && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        // Half a token back after 250 ms: the other half takes 250 ms more.
        let wait = b.take(start + Duration::from_millis(250)).unwrap_err();
        assert!(
            wait > Duration::from_millis(240) && wait <= Duration::from_millis(250),
            "{wait:?}"
        );
        assert!(b.take(start + Duration::from_millis(500)).is_ok());
        assert!(TokenBucket::new(Rate {
            count: 0,
            window: Duration::from_secs(1)
        })
        .is_none());
    }
}
