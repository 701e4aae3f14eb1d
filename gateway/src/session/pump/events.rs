//! The pump's events and presence: signals, session events and presence changes
//! broadcast to the local members (each at most once, none to the member it came from),
//! and the periodic presence refresh, which also announces the members whose entries
//! expired.

use roomcast_shared::{CloseCode, PresenceEvent, ServerFrame, SessionEvent};

use super::{offer, Pump};
use crate::client::SharedFrame;
use crate::envelope::{kind, Event, MemberInfo};
use crate::metrics as m;
use crate::session::{PumpStore, Subscriptions};
use crate::util::now_ms;

impl<S: PumpStore, B: Subscriptions> Pump<S, B> {
    pub(super) fn on_event(&mut self, event: Event) {
        match event {
            Event::Signal { from, data, to } => {
                let sender = from.client_id.clone();
                let frame = SharedFrame::new(ServerFrame::Signal {
                    session: self.session.clone(),
                    from,
                    data,
                });
                match to {
                    // Never back to the sender (the connection refuses that already).
                    Some(target) if target != sender => {
                        if let Some(member) = self.members.get(&target) {
                            offer(&frame, &member.client);
                        }
                    }
                    Some(_) => {}
                    None => self.broadcast(&frame, Some(&sender)),
                }
            }
            Event::Typing { from, active } => {
                let sender = from.client_id.clone();
                let frame = SharedFrame::new(ServerFrame::Typing {
                    session: self.session.clone(),
                    from,
                    active,
                });
                self.broadcast(&frame, Some(&sender));
            }
            // User-channel traffic never arrives on a session channel.
            Event::Direct { .. } => m::pubsub_dropped("bad_payload", 1),
        }
    }

    /// A lifecycle event; `ended` then closes every member with 4000.
    pub(super) fn on_session_event(
        &mut self,
        event: SessionEvent,
        reason: Option<String>,
        at: u64,
    ) {
        let frame = SharedFrame::new(ServerFrame::Session {
            session: self.session.clone(),
            event,
            reason,
            at,
        });
        self.broadcast(&frame, None);
        if event == SessionEvent::Ended {
            for member in self.members.values() {
                member.client.close_after_queue(CloseCode::SessionEnded);
            }
        }
    }

    pub(super) fn presence(&mut self, event: PresenceEvent, info: MemberInfo) {
        let idle_after = self.env.settings.idle_after_ms;
        let subject = info.client_id.clone();
        let frame = SharedFrame::new(ServerFrame::Presence {
            session: self.session.clone(),
            event,
            member: info.to_member(now_ms(), idle_after),
        });
        // A member learns about itself from `joined`, not from its own presence events.
        self.broadcast(&frame, Some(&subject));
    }

    pub(super) fn broadcast(&self, frame: &SharedFrame, except: Option<&str>) {
        let mut count = 0;
        for (id, member) in &self.members {
            if Some(id.as_str()) != except {
                offer(frame, &member.client);
                count += 1;
            }
        }
        m::delivered(count);
    }

    pub(super) async fn refresh_presence(&mut self) {
        // A member whose writer has ended is gone even if its leave never reached us
        // (a saturated mailbox): stop refreshing it so it cannot linger as a ghost.
        let gone: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| m.client.is_gone())
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            self.leave_member(&id).await;
        }
        let now = now_ms();
        let expiry = self.presence_expiry(now);
        let ids = self.members.keys().cloned().collect::<Vec<_>>();
        let missing = match self
            .env
            .store
            .refresh_presence(&self.session, now, expiry, ids)
            .await
        {
            Ok(missing) => missing,
            Err(e) => {
                tracing::debug!(session = %self.session, error = %e, "presence refresh failed");
                return;
            }
        };
        // Swept while this node was stalled, yet still connected: put them back.
        for id in missing {
            if let Some(member) = self.members.get(&id) {
                let info = member.info.encode();
                if let Err(e) = self
                    .env
                    .store
                    .presence_set(&self.session, &id, expiry, &info, kind::JOIN, now)
                    .await
                {
                    tracing::debug!(error = %e, "presence re-add failed");
                }
            }
        }
    }
}
