//! Rate limits in Redis: `ratelimit.lua` counts and decides in one script (exact sliding
//! windows on Redis' clock); the admin peek and reset.

use fred::interfaces::{KeysInterface, SortedSetsInterface};

use super::{Store, StoreError};
use crate::config::Rate;
use crate::ratelimit::{Decision, Scope};

/// Rate limits.
impl Store {
    /// Runs `ratelimit.lua`: counts this attempt if the window has room.
    pub async fn rate_check(
        &self,
        scope: Scope,
        key: &str,
        rate: Rate,
    ) -> Result<Decision, StoreError> {
        let member = crate::util::random_id(12);
        let reply = self
            .eval(
                "ratelimit",
                &self.scripts.ratelimit,
                vec![self.keys.rate_limit(scope.name(), key)],
                vec![
                    (rate.window.as_millis() as i64).into(),
                    i64::from(rate.count).into(),
                    member.into(),
                ],
            )
            .await?;
        let v: Vec<u64> = reply
            .into_array()
            .into_iter()
            .map(|v| v.as_u64().unwrap_or(0))
            .collect();
        let [admitted, count, oldest, now] = v[..] else {
            return Err(StoreError::Internal(
                "ratelimit.lua answered something else".into(),
            ));
        };
        Ok(Decision::from_log(
            scope,
            rate,
            admitted == 1,
            count,
            oldest,
            now,
        ))
    }

    /// The current state of a key without counting an attempt (admin).
    pub async fn rate_peek(
        &self,
        scope: Scope,
        key: &str,
        rate: Rate,
        now_ms: u64,
    ) -> Result<Decision, StoreError> {
        let log = self.keys.rate_limit(scope.name(), key);
        let client = self.client()?;
        let since = now_ms.saturating_sub(rate.window.as_millis() as u64);
        let count: u64 = client
            .zcount(&log, (since + 1) as f64, f64::INFINITY)
            .await?;
        let first: Vec<(String, f64)> = client
            .zrangebyscore(&log, (since + 1) as f64, f64::INFINITY, true, Some((0, 1)))
            .await?;
        let oldest = first.first().map(|(_, score)| *score as u64).unwrap_or(0);
        Ok(Decision::from_log(
            scope,
            rate,
            count < u64::from(rate.count),
            count,
            oldest,
            now_ms,
        ))
    }

    /// Forgets a key's log (admin reset); true when there was one.
    pub async fn rate_reset(&self, scope: Scope, key: &str) -> Result<bool, StoreError> {
        let removed: i64 = self
            .client()?
            .del(self.keys.rate_limit(scope.name(), key))
            .await?;
        Ok(removed > 0)
    }
}
