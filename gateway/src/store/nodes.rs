//! The node registry: heartbeats in bucketed sorted sets, the pruning of dead nodes, the
//! per-node connection counts, the cluster's totals, and the readiness PING.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use fred::interfaces::{ClientLike, HashesInterface, SortedSetsInterface};
use fred::types::Value;

use super::{Store, StoreError};
use crate::keys::{bucket_of, INDEX_BUCKETS};
use crate::metrics as m;

impl Store {
    /// Records this node's heartbeat (in its bucket of the registry), then forgets nodes
    /// silent for `forget_after` and the connection counts of unregistered nodes, in every
    /// bucket (`node_prune.lua`; a bucket whose nodes all died has nobody else to clean it).
    pub async fn node_heartbeat(
        &self,
        node: &str,
        now_ms: u64,
        forget_after: Duration,
    ) -> Result<(), StoreError> {
        let started = Instant::now();
        let _: i64 = self
            .client()?
            .zadd(
                self.keys.nodes(bucket_of(node)),
                None,
                None,
                false,
                false,
                (now_ms as f64, node),
            )
            .await?;
        let horizon = now_ms.saturating_sub(forget_after.as_millis() as u64) as i64;
        let prunes = (0..INDEX_BUCKETS).map(|bucket| {
            self.eval(
                "node_prune",
                &self.scripts.node_prune,
                vec![self.keys.nodes(bucket), self.keys.node_connections(bucket)],
                vec![horizon.into()],
            )
        });
        for pruned in futures_util::future::join_all(prunes).await {
            pruned?;
        }
        m::redis_command("node_heartbeat", started.elapsed());
        Ok(())
    }

    /// Removes this node from the registry (clean shutdown).
    pub async fn node_remove(&self, node: &str) -> Result<(), StoreError> {
        let client = self.client()?;
        let bucket = bucket_of(node);
        let _: i64 = client.zrem(self.keys.nodes(bucket), node).await?;
        let _: i64 = client
            .hdel(self.keys.node_connections(bucket), node)
            .await?;
        Ok(())
    }

    /// PING with a deadline: the readiness signal.
    pub async fn ping(&self, timeout: Duration) -> Result<(), StoreError> {
        let started = Instant::now();
        let client = self.pool.next_connected();
        let result = tokio::time::timeout(timeout, client.ping::<String>(None)).await;
        m::redis_command("ping", started.elapsed());
        match result {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(StoreError::Unavailable("PING timed out".into())),
        }
    }

    /// Records this node's connection count for cluster stats.
    pub async fn node_connections(&self, node: &str, count: usize) -> Result<(), StoreError> {
        let _: i64 = self
            .client()?
            .hset(
                self.keys.node_connections(bucket_of(node)),
                (node, count as i64),
            )
            .await?;
        Ok(())
    }

    /// Live nodes (heartbeat within `within`) and their total connections, over every
    /// bucket of the registry.
    pub async fn cluster(&self, now_ms: u64, within: Duration) -> Result<(u64, u64), StoreError> {
        let since = now_ms.saturating_sub(within.as_millis() as u64) as f64;
        let pipe = self.client()?.pipeline();
        for bucket in 0..INDEX_BUCKETS {
            let _: () = pipe
                .zrangebyscore(self.keys.nodes(bucket), since, f64::INFINITY, false, None)
                .await?;
            let _: () = pipe.hgetall(self.keys.node_connections(bucket)).await?;
        }
        let replies: Vec<Value> = pipe.all().await?;
        let mut nodes = 0u64;
        let mut total = 0u64;
        for pair in replies.chunks(2) {
            let [live, counts] = pair else { continue };
            let live: Vec<String> = live.clone().convert()?;
            let counts: HashMap<String, i64> = counts.clone().convert()?;
            nodes += live.len() as u64;
            total += live
                .iter()
                .filter_map(|n| counts.get(n))
                .map(|c| (*c).max(0) as u64)
                .sum::<u64>();
        }
        Ok((nodes, total))
    }
}
