//! The Redis key schema (ARCHITECTURE.md "Redis layout"), in one place.
//!
//! Every key of one session shares the hash tag `{s:<id>}`, so each Lua script touches one
//! slot and the layout runs unchanged on Redis Cluster. The indexes that span sessions or
//! nodes (session listing, lifecycle clock, node registry) are split over
//! [`INDEX_BUCKETS`] keys tagged `{b<n>}`, so that on a cluster their writes spread over
//! the shards instead of all landing on one. Nothing else formats key names.

/// How many buckets each cross-session index is split into. Sixteen tags spread over the
/// shards of any small cluster; readers (stats, the sweeper) visit all of them.
pub(crate) const INDEX_BUCKETS: u16 = 16;

/// The index bucket of a session or node id: fixed by the id, so every writer agrees.
pub(crate) fn bucket_of(id: &str) -> u16 {
    fred::util::redis_keyslot(id.as_bytes()) % INDEX_BUCKETS
}

/// Key builder for one configured prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

/// All keys of one session.
#[derive(Debug, Clone)]
pub struct SessionKeys {
    pub meta: String,
    pub seq: String,
    pub hist: String,
    pub pres: String,
    pub pinfo: String,
    /// REST members (`rest-…` client ids) by expiry: what bounds them per session.
    pub rest: String,
    pub channel: String,
    /// Webhook events of the session not yet delivered everywhere (STREAM, `events.lua`).
    pub events: String,
    /// Per endpoint, the last event it is done with (HASH endpoint id → stream id).
    pub event_cursors: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.to_string(),
        }
    }

    pub fn session(&self, id: &str) -> SessionKeys {
        SessionKeys {
            meta: self.session_key(id, &["meta"]),
            seq: self.session_key(id, &["seq"]),
            hist: self.session_key(id, &["hist"]),
            pres: self.session_key(id, &["pres"]),
            pinfo: self.session_key(id, &["pinfo"]),
            rest: self.session_key(id, &["rest"]),
            channel: self.session_key(id, &["ch"]),
            events: self.session_key(id, &["ev"]),
            event_cursors: self.session_key(id, &["evc"]),
        }
    }

    /// The keys `publish.lua` takes, in its order: seq, hist, meta, ch, ev and the
    /// publish's idempotency key; room for `extra` more (the limits' logs). Only these:
    /// a publish is the hot path, and each key is one allocation.
    pub fn publish(&self, id: &str, key: Option<&str>, extra: usize) -> Vec<String> {
        let mut keys = Vec::with_capacity(6 + extra);
        for suffix in ["seq", "hist", "meta", "ch", "ev"] {
            keys.push(self.session_key(id, &[suffix]));
        }
        keys.push(self.idempotency(id, key));
        keys
    }

    /// A keyed publish's seq (STRING, for `ROOMCAST_IDEMPOTENCY_WINDOW`); without a key,
    /// a name in the session's slot that is never written (scripts declare their keys).
    pub fn idempotency(&self, session: &str, key: Option<&str>) -> String {
        self.session_key(session, &["idem:", key.unwrap_or("")])
    }

    /// `<prefix>:{s:<id>}:<suffix…>`, allocated once at its length.
    fn session_key(&self, id: &str, suffix: &[&str]) -> String {
        let len = self.prefix.len() + id.len() + 6 + suffix.iter().map(|s| s.len()).sum::<usize>();
        let mut k = String::with_capacity(len);
        k.push_str(&self.prefix);
        k.push_str(":{s:");
        k.push_str(id);
        k.push_str("}:");
        for s in suffix {
            k.push_str(s);
        }
        k
    }

    /// Who delivers a session's events to one endpoint (STRING owner token, with a TTL).
    pub fn event_lease(&self, session: &str, endpoint: &str) -> String {
        format!("{}:{{s:{session}}}:evl:{endpoint}", self.prefix)
    }

    /// One bucket of the webhook delivery requests (STREAM of session ids, read by the
    /// consumer group every instance belongs to).
    pub fn event_kicks(&self, bucket: u16) -> String {
        format!("{}:wh:kick:{{b{bucket}}}", self.prefix)
    }

    /// Events an endpoint never acknowledged (STREAM).
    pub fn dead_letters(&self) -> String {
        format!("{}:wh:dead", self.prefix)
    }

    /// The session's pub/sub channel.
    pub fn session_channel(&self, id: &str) -> String {
        self.session_key(id, &["ch"])
    }

    /// The session id a channel name belongs to, if it is one of ours.
    pub fn session_of_channel<'a>(&self, channel: &'a str) -> Option<&'a str> {
        channel
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(":{s:")?
            .strip_suffix("}:ch")
    }

    /// One bucket of the node registry: node id scored by its last heartbeat (ms).
    pub fn nodes(&self, bucket: u16) -> String {
        format!("{}:nodes:{{b{bucket}}}", self.prefix)
    }

    /// Connections per node (HASH node id → count), written with the heartbeat; bucketed
    /// like [`Keys::nodes`].
    pub fn node_connections(&self, bucket: u16) -> String {
        format!("{}:nodes:conns:{{b{bucket}}}", self.prefix)
    }

    /// The sliding-window log of one rate-limit scope and key.
    pub fn rate_limit(&self, scope: &str, key: &str) -> String {
        format!("{}:rl:{{{scope}:{key}}}", self.prefix)
    }

    /// A join code → session id.
    pub fn code(&self, code: &str) -> String {
        format!("{}:code:{{{code}}}", self.prefix)
    }

    /// One bucket of the session index: sessions scored by last activity (stats, listing).
    pub fn sessions(&self, bucket: u16) -> String {
        format!("{}:sessions:{{b{bucket}}}", self.prefix)
    }

    /// One bucket of the lifecycle index: sessions not yet ended, scored by when the
    /// lifecycle clock next needs to look at them (an inactivity warning or timeout, or the
    /// end of life), in ms.
    pub fn sessions_due(&self, bucket: u16) -> String {
        format!("{}:sessions:due:{{b{bucket}}}", self.prefix)
    }

    /// The unbucketed indexes of earlier versions (`rc:sessions`, `rc:sessions:due`):
    /// the sweeper moves what it finds there into the buckets.
    pub fn legacy_session_indexes(&self) -> (String, String) {
        (
            format!("{}:sessions", self.prefix),
            format!("{}:sessions:due", self.prefix),
        )
    }

    /// Sessions a user created implicitly, scored by the end of their lifetime: the
    /// per-user cap counts the ones still alive.
    pub fn user_owned(&self, user: &str) -> String {
        format!("{}:{{u:{user}}}:owned", self.prefix)
    }

    /// A user's sessions scored by last activity.
    pub fn user_sessions(&self, user: &str) -> String {
        format!("{}:{{u:{user}}}:sess", self.prefix)
    }

    /// A user's direct-message channel.
    pub fn user_channel(&self, user: &str) -> String {
        format!("{}:{{u:{user}}}:ch", self.prefix)
    }

    /// The user a channel name belongs to, if it is a user channel of ours.
    pub fn user_of_channel<'a>(&self, channel: &'a str) -> Option<&'a str> {
        channel
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(":{u:")?
            .strip_suffix("}:ch")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_spec() {
        let k = Keys::new("rc");
        let s = k.session("abc");
        assert_eq!(s.meta, "rc:{s:abc}:meta");
        assert_eq!(s.seq, "rc:{s:abc}:seq");
        assert_eq!(s.hist, "rc:{s:abc}:hist");
        assert_eq!(s.pres, "rc:{s:abc}:pres");
        assert_eq!(s.pinfo, "rc:{s:abc}:pinfo");
        assert_eq!(s.channel, "rc:{s:abc}:ch");
        assert_eq!(s.events, "rc:{s:abc}:ev");
        assert_eq!(s.event_cursors, "rc:{s:abc}:evc");
        assert_eq!(k.event_lease("abc", "e1"), "rc:{s:abc}:evl:e1");
        assert_eq!(k.event_kicks(7), "rc:wh:kick:{b7}");
        assert_eq!(k.dead_letters(), "rc:wh:dead");
        assert_eq!(k.idempotency("abc", Some("k1")), "rc:{s:abc}:idem:k1");
        // A suffix longer than the rest of the name (a 64-character key, a 1-character id).
        let long = "k".repeat(64);
        assert_eq!(
            k.idempotency("a", Some(&long)),
            format!("rc:{{s:a}}:idem:{long}")
        );
        assert_eq!(
            k.publish("abc", None, 0),
            [
                s.seq.as_str(),
                &s.hist,
                &s.meta,
                &s.channel,
                &s.events,
                "rc:{s:abc}:idem:"
            ]
        );
        assert_eq!(k.nodes(3), "rc:nodes:{b3}");
        assert_eq!(k.node_connections(3), "rc:nodes:conns:{b3}");
        assert_eq!(k.code("ABC234"), "rc:code:{ABC234}");
        assert_eq!(k.sessions(0), "rc:sessions:{b0}");
        assert_eq!(k.rate_limit("api", "10.0.0.1"), "rc:rl:{api:10.0.0.1}");
        assert_eq!(k.user_sessions("bob"), "rc:{u:bob}:sess");
        assert_eq!(k.user_channel("bob"), "rc:{u:bob}:ch");
        assert_eq!(k.user_owned("bob"), "rc:{u:bob}:owned");
        assert_eq!(k.sessions_due(15), "rc:sessions:due:{b15}");
        assert_eq!(k.user_of_channel("rc:{u:bob}:ch"), Some("bob"));
        assert_eq!(k.user_of_channel("rc:{s:bob}:ch"), None);
    }

    #[test]
    fn buckets_are_fixed_by_the_id_and_all_used() {
        assert_eq!(bucket_of("abc"), bucket_of("abc"));
        let used: std::collections::HashSet<u16> =
            (0..400).map(|i| bucket_of(&format!("s-{i}"))).collect();
        assert_eq!(used.len(), INDEX_BUCKETS as usize);
        assert!(used.iter().all(|b| *b < INDEX_BUCKETS));
    }

    #[test]
    fn channel_round_trip() {
        let k = Keys::new("rc");
        assert_eq!(k.session_of_channel(&k.session_channel("x-1")), Some("x-1"));
        assert_eq!(k.session_of_channel("other:{s:x}:ch"), None);
        assert_eq!(k.session_of_channel("rc:{s:x}:meta"), None);
    }
}
