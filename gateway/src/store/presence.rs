//! Presence: the scripts that write it (refresh and sweep, a member's info set, counted
//! against the REST member cap for REST members) and the REST API's reads, who is
//! present in a session (entries not expired) and their stored infos.

use bytes::Bytes;
use fred::interfaces::{HashesInterface, SortedSetsInterface};
use fred::types::Value;

use super::{bytes_list, Store, StoreError};

impl Store {
    /// Member infos of everyone present (entries not expired).
    pub async fn presence_members(
        &self,
        session: &str,
        now_ms: u64,
    ) -> Result<Vec<Bytes>, StoreError> {
        let ids = self.presence_ids(session, now_ms).await?;
        self.presence_infos(session, ids).await
    }

    /// The client ids of the members present at `now_ms`.
    pub async fn presence_ids(
        &self,
        session: &str,
        now_ms: u64,
    ) -> Result<Vec<String>, StoreError> {
        let k = self.keys.session(session);
        Ok(self
            .client()?
            .zrangebyscore(&k.pres, (now_ms + 1) as f64, f64::INFINITY, false, None)
            .await?)
    }

    /// The stored infos of `ids` (those still there).
    pub async fn presence_infos(
        &self,
        session: &str,
        ids: Vec<String>,
    ) -> Result<Vec<Bytes>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let k = self.keys.session(session);
        let infos: Vec<Value> = self.client()?.hmget(&k.pinfo, ids).await?;
        Ok(bytes_list(Some(Value::Array(infos))))
    }

    /// One member's stored info.
    pub async fn presence_info(
        &self,
        session: &str,
        client_id: &str,
    ) -> Result<Option<Bytes>, StoreError> {
        let value: Value = self
            .client()?
            .hget(self.keys.session(session).pinfo, client_id)
            .await?;
        Ok(bytes_list(Some(Value::Array(vec![value]))).pop())
    }
}

// The presence scripts' writes.
impl Store {
    /// Runs `presence_refresh.lua`; answers the listed ids that were no longer present and
    /// how many expired entries were swept.
    pub async fn refresh_presence(
        &self,
        session: &str,
        now_ms: u64,
        expiry_ms: u64,
        client_ids: impl Iterator<Item = String>,
    ) -> Result<(Vec<String>, u64), StoreError> {
        let k = self.keys.session(session);
        let mut args: Vec<Value> = vec![
            (now_ms as i64).into(),
            (expiry_ms as i64).into(),
            (self.ttl_ms as i64).into(),
            self.presence_events_max.into(),
            self.events_spec(),
        ];
        args.extend(client_ids.map(Value::from));
        self.events_intent(session, &["member.left"]).await?;
        let reply = self
            .eval(
                "presence_refresh",
                &self.scripts.presence_refresh,
                vec![k.pres, k.pinfo, k.channel, k.seq, k.events],
                args,
            )
            .await?;
        let mut parts = reply.into_array().into_iter();
        let missing = parts
            .next()
            .map(Value::into_array)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|v| v.as_str().map(|s| s.to_string()))
            .collect();
        let swept = parts.next().and_then(|v| v.as_u64()).unwrap_or(0);
        if swept > 0 {
            self.events_recorded(session, &["member.left"]);
        }
        Ok((missing, swept))
    }

    /// Runs `presence_set.lua`: writes a member's info and announces it with `kind`
    /// (0: silently).
    pub async fn presence_set(
        &self,
        session: &str,
        client_id: &str,
        expiry_ms: u64,
        info: &[u8],
        kind: u8,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        self.presence_write(session, client_id, expiry_ms, info, kind, now_ms, None)
            .await
            .map(drop)
    }

    /// `presence_set.lua` for a REST member (join, activity): counted against `max` REST
    /// members per session. `Ok(Err(at))` when a new member is refused: `at` is when the
    /// soonest REST member expires (ms).
    #[allow(clippy::too_many_arguments)]
    pub async fn rest_presence_set(
        &self,
        session: &str,
        client_id: &str,
        expiry_ms: u64,
        info: &[u8],
        kind: u8,
        now_ms: u64,
        max: u32,
    ) -> Result<Result<(), u64>, StoreError> {
        self.presence_write(session, client_id, expiry_ms, info, kind, now_ms, Some(max))
            .await
    }

    /// `presence_set.lua`, counting the member as a REST one when `rest_max` is given.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn presence_write(
        &self,
        session: &str,
        client_id: &str,
        expiry_ms: u64,
        info: &[u8],
        kind: u8,
        now_ms: u64,
        rest_max: Option<u32>,
    ) -> Result<Result<(), u64>, StoreError> {
        let k = self.keys.session(session);
        let mut keys = vec![k.pres, k.pinfo, k.channel, k.meta, k.events];
        let args: Vec<Value> = vec![
            client_id.into(),
            (expiry_ms as i64).into(),
            Value::Bytes(Bytes::copy_from_slice(info)),
            i64::from(kind).into(),
            (self.ttl_ms as i64).into(),
            (now_ms as i64).into(),
            self.presence_events_max.into(),
            i64::from(rest_max.unwrap_or(0)).into(),
            self.events_spec(),
        ];
        if rest_max.is_some() {
            keys.push(k.rest);
        }
        if kind == 4 {
            self.events_intent(session, &["member.joined"]).await?;
        }
        let reply = self
            .eval("presence_set", &self.scripts.presence_set, keys, args)
            .await?;
        if kind == 4 {
            self.events_recorded(session, &["member.joined"]);
        }
        match reply {
            Value::Array(parts) => Ok(Err(parts
                .get(1)
                .and_then(Value::as_i64)
                .map_or(now_ms, |at| at.max(0) as u64))),
            _ => Ok(Ok(())),
        }
    }
}
