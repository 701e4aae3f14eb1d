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
    }

    #[test]
    fn channel_round_trip() {
        let k = Keys::new("rc");
        assert_eq!(k.session_of_channel(&k.session_channel("x-1")), Some("x-1"));
        assert_eq!(k.session_of_channel("other:{s:x}:ch"), None);
        assert_eq!(k.session_of_channel("rc:{s:x}:meta"), None);
    }
}
