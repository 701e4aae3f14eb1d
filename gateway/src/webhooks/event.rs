//! What a receiver gets: a recorded event (as `events.lua` stores it) rendered into the
//! body `{id, type, timestamp, session, data}` (docs/WEBHOOKS.md, "Events").

use serde::Serialize;
use serde_json::{json, Value};

use crate::envelope::{decode_entry, MemberInfo};
use crate::store::StoredEvent;

/// One event's body, as signed and sent.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct EventBody {
    /// Unique per event; the `webhook-id` header, the same on every retry.
    pub id: String,
    /// `session.created`, `member.joined`, `message.published`, …
    #[serde(rename = "type")]
    pub kind: String,
    /// When the change happened (ms since the epoch).
    pub timestamp: u64,
    pub session: String,
    /// The type's payload (docs/WEBHOOKS.md lists each).
    #[schema(value_type = Object)]
    pub data: Value,
}

/// Renders a stored event; an error names what was malformed (the event is then
/// dead-lettered rather than retried forever).
pub fn render(session: &str, e: &StoredEvent) -> Result<EventBody, String> {
    let id = e.text("id").ok_or("no id")?.to_string();
    let kind = e.text("type").ok_or("no type")?.to_string();
    let timestamp = e
        .text("ts")
        .and_then(|t| t.parse().ok())
        .ok_or("no timestamp")?;
    let data = if let Some(d) = e.field("data") {
        serde_json::from_slice(d).map_err(|err| format!("data is not JSON: {err}"))?
    } else if let Some(m) = e.field("m") {
        let info = MemberInfo::decode(m).map_err(|err| format!("member info: {err}"))?;
        let mut member = member_json(&info);
        if let (Some(reason), Value::Object(map)) = (e.text("r"), &mut member) {
            map.insert("reason".into(), reason.into());
        }
        member
    } else if let Some(entry) = e.field("e") {
        let message = decode_entry(entry)
            .map_err(|err| format!("history entry: {err}"))?
            .into_history();
        serde_json::to_value(message).map_err(|err| err.to_string())?
    } else {
        return Err("no payload".into());
    };
    Ok(EventBody {
        id,
        kind,
        timestamp,
        session: session.to_string(),
        data,
    })
}

/// A member as events show it.
fn member_json(info: &MemberInfo) -> Value {
    let mut v = json!({
        "client_id": info.client_id,
        "user": info.user,
        "role": info.role,
        "name": info.name,
        "node": info.node,
        "joined_at": info.joined_at,
    });
    if let (Some(extra), Value::Object(map)) = (&info.info, &mut v) {
        map.insert("info".into(), extra.clone());
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn stored(fields: &[(&str, &[u8])]) -> StoredEvent {
        StoredEvent {
            stream_id: "1-0".into(),
            fields: fields
                .iter()
                .map(|(k, v)| (k.to_string(), Bytes::copy_from_slice(v)))
                .collect(),
        }
    }

    #[test]
    fn a_member_event_shows_the_member_and_why_it_left() {
        let info = MemberInfo {
            client_id: "c1".into(),
            user: "ann".into(),
            role: roomcast_shared::Role::Display,
            name: Some("Ann".into()),
            node: "n1".into(),
            joined_at: 5,
            active_at: 6,
            info: Some(json!({"seat": 4})),
        };
        let e = stored(&[
            ("id", b"evt_a_1"),
            ("type", b"member.left"),
            ("ts", b"77"),
            ("m", &info.encode()),
            ("r", b"expired"),
        ]);
        let body = render("s1", &e).unwrap();
        assert_eq!(body.kind, "member.left");
        assert_eq!(body.timestamp, 77);
        assert_eq!(
            body.data,
            json!({"client_id": "c1", "user": "ann", "role": "display", "name": "Ann",
                   "node": "n1", "joined_at": 5, "info": {"seat": 4}, "reason": "expired"})
        );
    }

    #[test]
    fn malformed_events_say_what_is_wrong() {
        assert!(render("s", &stored(&[("type", b"x"), ("ts", b"1")])).is_err());
        let e = stored(&[
            ("id", b"i"),
            ("type", b"x"),
            ("ts", b"1"),
            ("data", b"{nope"),
        ]);
        assert!(render("s", &e).unwrap_err().contains("JSON"));
    }
}
