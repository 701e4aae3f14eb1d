//! Presence as the REST API reads it: who is present in a session (entries not expired)
//! and their stored infos. Writes go through the presence scripts (`Store::presence_set`
//! and friends in `mod.rs`).

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
