//! The Redis key schema of SPEC.md "Redis layout", in one place.
//!
//! Every key of one session shares the hash tag `{s:<id>}`, so each Lua script touches one
//! slot and the layout runs unchanged on Redis Cluster. Nothing else formats key names.

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
    pub channel: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.to_string(),
        }
    }

    pub fn session(&self, id: &str) -> SessionKeys {
        let base = format!("{}:{{s:{id}}}", self.prefix);
        SessionKeys {
            meta: format!("{base}:meta"),
            seq: format!("{base}:seq"),
            hist: format!("{base}:hist"),
            pres: format!("{base}:pres"),
            pinfo: format!("{base}:pinfo"),
            channel: format!("{base}:ch"),
        }
    }

    /// The session's pub/sub channel.
    pub fn session_channel(&self, id: &str) -> String {
        format!("{}:{{s:{id}}}:ch", self.prefix)
    }

    /// The session id a channel name belongs to, if it is one of ours.
    pub fn session_of_channel<'a>(&self, channel: &'a str) -> Option<&'a str> {
        channel
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(":{s:")?
            .strip_suffix("}:ch")
    }

    /// The node registry: node id scored by its last heartbeat (ms).
    pub fn nodes(&self) -> String {
        format!("{}:nodes", self.prefix)
    }

    /// Connections per node (HASH node id → count), written with the heartbeat.
    pub fn node_connections(&self) -> String {
        format!("{}:nodes:conns", self.prefix)
    }

    /// The sliding-window log of one rate-limit scope and key.
    pub fn rate_limit(&self, scope: &str, key: &str) -> String {
        format!("{}:rl:{{{scope}:{key}}}", self.prefix)
    }

    /// A join code → session id.
    pub fn code(&self, code: &str) -> String {
        format!("{}:code:{{{code}}}", self.prefix)
    }

    /// Every session, scored by last activity (stats, listing).
    pub fn sessions(&self) -> String {
        format!("{}:sessions", self.prefix)
    }

    /// Sessions not yet ended, scored by when the lifecycle clock next needs to look at
    /// them (an inactivity warning or timeout, or the end of life), in ms.
    pub fn sessions_due(&self) -> String {
        format!("{}:sessions:due", self.prefix)
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
        assert_eq!(k.nodes(), "rc:nodes");
        assert_eq!(k.code("ABC234"), "rc:code:{ABC234}");
        assert_eq!(k.sessions(), "rc:sessions");
        assert_eq!(k.rate_limit("api", "10.0.0.1"), "rc:rl:{api:10.0.0.1}");
        assert_eq!(k.user_sessions("bob"), "rc:{u:bob}:sess");
        assert_eq!(k.user_channel("bob"), "rc:{u:bob}:ch");
        assert_eq!(k.user_owned("bob"), "rc:{u:bob}:owned");
        assert_eq!(k.sessions_due(), "rc:sessions:due");
        assert_eq!(k.user_of_channel("rc:{u:bob}:ch"), Some("bob"));
        assert_eq!(k.user_of_channel("rc:{s:bob}:ch"), None);
    }

    #[test]
    fn channel_round_trip() {
        let k = Keys::new("rc");
        assert_eq!(k.session_of_channel(&k.session_channel("x-1")), Some("x-1"));
        assert_eq!(k.session_of_channel("other:{s:x}:ch"), None);
        assert_eq!(k.session_of_channel("rc:{s:x}:meta"), None);
    }
}
