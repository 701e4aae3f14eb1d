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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::Duration;

    use crate::config::{Config, Rate};
    use crate::ratelimit::Scope;
    use crate::store::{redis_builder, Store};
    use crate::test_redis::Redis;

    /// The admin peek counts the window (now - window, now], like the script: an
    /// admission exactly one window old is out.
    #[tokio::test]
    async fn a_peek_counts_the_open_window_and_finds_its_oldest_admission() {
        let redis = Redis::start();
        let config = Config::from_pairs(&[("redis-url", &redis.url()), ("auth", "off")]).unwrap();
        let pool = redis_builder(&config, 32).unwrap().build_pool(1).unwrap();
        let _connection = fred::interfaces::ClientLike::init(&pool).await.unwrap();
        let store = Store::new(pool, &config);
        let log = store.keys().rate_limit(Scope::Publish.name(), "ann");
        let now = 1_000_000u64;
        for (score, member) in [(990_000, "out"), (990_001, "oldest"), (995_000, "newer")] {
            redis
                .cmd(&["ZADD", &log, &score.to_string(), member])
                .unwrap();
        }
        let rate = Rate {
            count: 3,
            window: Duration::from_secs(10),
        };
        let d = store
            .rate_peek(Scope::Publish, "ann", rate, now)
            .await
            .unwrap();
        assert_eq!(
            (d.admitted, d.remaining),
            (true, 1),
            "two admissions in the window"
        );
        assert_eq!(
            d.reset,
            Duration::from_millis(1),
            "the oldest counted one leaves in 1 ms"
        );
        let full = Rate { count: 2, ..rate };
        let d = store
            .rate_peek(Scope::Publish, "ann", full, now)
            .await
            .unwrap();
        assert_eq!(
            (d.admitted, d.remaining),
            (false, 0),
            "a full window admits nothing"
        );
    }
}
