//! The indexes that span sessions, in their `{b<n>}` buckets (ARCHITECTURE.md, "Redis
//! layout"): the lifecycle clock's due index (lease, reschedule, unschedule), the session
//! index by activity (touch, prune, listing, statuses), the per-user indexes (sessions by
//! activity, sessions owned against the cap), and the migration of the unbucketed indexes
//! of earlier versions. Writes here are separate, idempotent commands (or single-key
//! scripts: `due_claim.lua`, `due_reschedule.lua`, `owned_claim.lua`), never part of a
//! session's scripts: they live on other slots.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use fred::interfaces::{HashesInterface, KeysInterface, SortedSetsInterface};
use fred::types::Value;

use super::{SessionStatus, Store, StoreError, TOMBSTONE};
use crate::keys::{bucket_of, Keys, INDEX_BUCKETS};
use crate::metrics as m;

/// The cross-session indexes.
impl Store {
    /// Takes up to `limit` sessions of one index bucket whose lifecycle check is due,
    /// leased for `lease` so other instances take others. Answers the lease score and
    /// (id, due time) pairs.
    pub async fn claim_due(
        &self,
        bucket: u16,
        now_ms: u64,
        limit: usize,
        lease: Duration,
    ) -> Result<(u64, Vec<(String, u64)>), StoreError> {
        let reply = self
            .eval(
                "due_claim",
                &self.scripts.due_claim,
                vec![self.keys.sessions_due(bucket)],
                vec![
                    (now_ms as i64).into(),
                    (limit as i64).into(),
                    (lease.as_millis() as i64).into(),
                ],
            )
            .await?;
        let flat = reply.into_array();
        let due = flat
            .chunks(2)
            .filter_map(|pair| {
                let id = pair.first()?.as_string()?;
                let at = pair.get(1)?.as_f64()?;
                Some((id, at.max(0.0) as u64))
            })
            .collect();
        Ok((now_ms + lease.as_millis() as u64, due))
    }

    /// Files the next due time of sessions leased by [`Store::claim_due`] (0: drop them),
    /// each in its own bucket.
    pub async fn reschedule_due(
        &self,
        lease_score: u64,
        next: &[(String, u64)],
    ) -> Result<(), StoreError> {
        let mut by_bucket: BTreeMap<u16, Vec<Value>> = BTreeMap::new();
        for (id, at) in next {
            let args = by_bucket
                .entry(bucket_of(id))
                .or_insert_with(|| vec![(lease_score as i64).into()]);
            args.push(id.as_str().into());
            args.push((*at as i64).into());
        }
        for (bucket, args) in by_bucket {
            self.eval(
                "due_reschedule",
                &self.scripts.due_reschedule,
                vec![self.keys.sessions_due(bucket)],
                args,
            )
            .await?;
        }
        Ok(())
    }

    /// Moves what earlier versions left in the unbucketed indexes into the buckets (a
    /// rolling upgrade: old instances may still write there). Idempotent; nothing to do
    /// costs two reads of absent keys.
    pub async fn migrate_legacy_indexes(&self) -> Result<usize, StoreError> {
        use fred::types::sorted_sets::Ordering;
        let (sessions, due) = self.keys.legacy_session_indexes();
        let client = self.client()?;
        let mut moved = 0;
        // A session in both places keeps its latest activity and its earliest due time
        // (the clock looks, then reschedules it).
        for (legacy, bucketed, keep) in [
            (
                sessions,
                Keys::sessions as fn(&Keys, u16) -> String,
                Ordering::GreaterThan,
            ),
            (due, Keys::sessions_due, Ordering::LessThan),
        ] {
            let entries: Vec<(String, f64)> = client
                .zrange(&legacy, 0, 999, None, false, None, true)
                .await?;
            if entries.is_empty() {
                continue;
            }
            let pipe = client.pipeline();
            for (id, score) in &entries {
                let _: () = pipe
                    .zadd(
                        bucketed(&self.keys, bucket_of(id)),
                        None,
                        Some(keep.clone()),
                        false,
                        false,
                        (*score, id.as_str()),
                    )
                    .await?;
            }
            let _: Vec<Value> = pipe.all().await?;
            let ids: Vec<&str> = entries.iter().map(|(id, _)| id.as_str()).collect();
            let _: i64 = client.zrem(&legacy, ids).await?;
            moved += entries.len();
        }
        Ok(moved)
    }

    /// Takes a session out from under the lifecycle clock (it has ended).
    pub async fn unschedule(&self, session: &str) -> Result<(), StoreError> {
        let _: i64 = self
            .client()?
            .zrem(self.keys.sessions_due(bucket_of(session)), session)
            .await?;
        Ok(())
    }

    /// Records activity in the session index, and the user's when given; files the
    /// session under the lifecycle clock at `due` when given. Cross-slot, so not atomic
    /// with the scripts; every step is idempotent.
    pub async fn touch_indexes(
        &self,
        session: &str,
        now_ms: u64,
        user: Option<&str>,
        due: Option<u64>,
    ) -> Result<(), StoreError> {
        let started = Instant::now();
        let pipe = self.client()?.pipeline();
        let now = now_ms as f64;
        let bucket = bucket_of(session);
        let _: () = pipe
            .zadd(
                self.keys.sessions(bucket),
                None,
                None,
                false,
                false,
                (now, session),
            )
            .await?;
        if let Some(due) = due {
            let _: () = pipe
                .zadd(
                    self.keys.sessions_due(bucket),
                    None,
                    Some(fred::types::sorted_sets::Ordering::LessThan),
                    false,
                    false,
                    (due as f64, session),
                )
                .await?;
        }
        if let Some(user) = user {
            self.file_user_session(&pipe, user, session, now_ms).await?;
        }
        let _: Vec<Value> = pipe.all().await?;
        m::redis_command("touch_indexes", started.elapsed());
        Ok(())
    }

    /// Queues the writes that list `session` for `user`: the entry, the key's lifetime,
    /// and the removal of entries too old to name a session that still exists (their
    /// session ended by its lifetime, and its meta is gone). Without that removal an
    /// active user's listing would only ever grow while its TTL kept being pushed.
    async fn file_user_session(
        &self,
        pipe: &fred::clients::Pipeline<fred::clients::Client>,
        user: &str,
        session: &str,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let key = self.keys.user_sessions(user);
        let lives = self.max_lifetime_ms.max(self.ttl_ms);
        let stale = now_ms.saturating_sub(lives + TOMBSTONE.as_millis() as u64);
        let _: () = pipe
            .zadd(&key, None, None, false, false, (now_ms as f64, session))
            .await?;
        let _: () = pipe
            .zremrangebyscore(&key, f64::NEG_INFINITY, stale as f64)
            .await?;
        let _: () = pipe.pexpire(&key, lives as i64, None).await?;
        Ok(())
    }

    /// Records that `user` is in `session` (their sessions listing) without counting it
    /// as the session's activity (an observer).
    pub async fn remember_user_session(
        &self,
        user: &str,
        session: &str,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let pipe = self.client()?.pipeline();
        self.file_user_session(&pipe, user, session, now_ms).await?;
        let _: Vec<Value> = pipe.all().await?;
        Ok(())
    }

    /// Counts a session against the cap of sessions its creator may hold (`owned_claim.lua`);
    /// false when the user is at the cap.
    pub async fn claim_owned(
        &self,
        user: &str,
        session: &str,
        now_ms: u64,
        expires_at: u64,
        cap: u32,
    ) -> Result<bool, StoreError> {
        let reply = self
            .eval(
                "owned_claim",
                &self.scripts.owned_claim,
                vec![self.keys.user_owned(user)],
                vec![
                    (now_ms as i64).into(),
                    session.into(),
                    (expires_at as i64).into(),
                    i64::from(cap).into(),
                ],
            )
            .await?;
        Ok(reply.as_i64() == Some(1))
    }

    /// Stops counting an ended session against its creator's cap.
    pub async fn disown(&self, user: &str, session: &str) -> Result<(), StoreError> {
        let _: i64 = self
            .client()?
            .zrem(self.keys.user_owned(user), session)
            .await?;
        Ok(())
    }

    /// A user's most recently active sessions.
    pub async fn user_session_ids(
        &self,
        user: &str,
        limit: i64,
    ) -> Result<Vec<String>, StoreError> {
        Ok(self
            .client()?
            .zrevrange(self.keys.user_sessions(user), 0, limit - 1, false)
            .await?)
    }

    /// Every indexed session id, from every bucket.
    pub async fn all_session_ids(&self) -> Result<Vec<String>, StoreError> {
        let pipe = self.client()?.pipeline();
        for bucket in 0..INDEX_BUCKETS {
            let _: () = pipe
                .zrange(self.keys.sessions(bucket), 0, -1, None, false, None, false)
                .await?;
        }
        let buckets: Vec<Vec<String>> = pipe.all().await?;
        Ok(buckets.into_iter().flatten().collect())
    }

    /// The status of each session (`None` when its meta expired), pipelined.
    pub async fn statuses(&self, ids: &[String]) -> Result<Vec<Option<SessionStatus>>, StoreError> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(500) {
            let pipe = self.client()?.pipeline();
            for id in chunk {
                let _: () = pipe.hget(self.keys.session(id).meta, "status").await?;
            }
            let values: Vec<Value> = pipe.all().await?;
            out.extend(
                values
                    .into_iter()
                    .map(|v| v.as_string().and_then(|s| SessionStatus::parse(&s))),
            );
        }
        Ok(out)
    }

    /// Drops sessions idle since before `horizon` from the session index.
    pub async fn prune_sessions(&self, horizon_ms: u64) -> Result<(), StoreError> {
        let pipe = self.client()?.pipeline();
        for bucket in 0..INDEX_BUCKETS {
            let _: () = pipe
                .zremrangebyscore(
                    self.keys.sessions(bucket),
                    f64::NEG_INFINITY,
                    horizon_ms as f64,
                )
                .await?;
        }
        let _: Vec<Value> = pipe.all().await?;
        Ok(())
    }

    /// Forgets index entries of sessions whose keys expired.
    pub async fn forget_sessions(&self, ids: &[String]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut by_bucket: BTreeMap<u16, Vec<&str>> = BTreeMap::new();
        for id in ids {
            by_bucket.entry(bucket_of(id)).or_default().push(id);
        }
        let pipe = self.client()?.pipeline();
        for (bucket, ids) in by_bucket {
            let _: () = pipe.zrem(self.keys.sessions(bucket), ids.clone()).await?;
            let _: () = pipe.zrem(self.keys.sessions_due(bucket), ids).await?;
        }
        let _: Vec<Value> = pipe.all().await?;
        Ok(())
    }
}
