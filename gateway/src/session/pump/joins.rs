//! The pump's joins: the join scripts of a batch run together (one round trip), the
//! instance's baseline is checked against their replies (a restart or fork found here
//! goes to `renumber`), and each member is answered `joined` with its history and added
//! with the seq its own script read.

use roomcast_shared::ServerFrame;

use super::{LocalMember, Pump, JOIN_BATCH};
use crate::envelope::{decode_entry, ids_differ, Entry, MemberInfo};
use crate::session::{Command, JoinError, JoinRequest, PumpStore, Subscriptions};
use crate::store::{JoinArgs, JoinReply};
use crate::util::now_ms;

impl<S: PumpStore, B: Subscriptions> Pump<S, B> {
    /// Handles `first` and the joins queued right behind it as one batch, then the first
    /// other command it took from the mailbox, so mailbox order is kept.
    pub(super) async fn joins(&mut self, first: JoinRequest) {
        let mut batch = vec![first];
        let mut next = None;
        while batch.len() < JOIN_BATCH {
            match self.rx.try_recv() {
                Ok(Command::Join(req)) => batch.push(*req),
                Ok(other) => {
                    next = Some(other);
                    break;
                }
                Err(_) => break,
            }
        }
        self.join_batch(batch).await;
        if let Some(cmd) = next {
            self.handle(cmd).await;
        }
    }

    /// Runs the join scripts of a batch concurrently (pipelined on the pool: one round
    /// trip for the batch, not one per join), then admits each member.
    ///
    /// Equivalent to running them one after another: no payload is handled until every
    /// reply is in, so each member's baseline is the seq its own script read and every
    /// later message is still queued for it. The instance's last seq starts from the
    /// lowest of those baselines, so no member's messages are taken for duplicates.
    pub(super) async fn join_batch(&mut self, batch: Vec<JoinRequest>) {
        // Handled, whatever the outcome: an empty pump may retire from now on.
        self.joined_once = true;
        if batch.len() > 1 {
            tracing::debug!(session = %self.session, joins = batch.len(), "join batch");
        }
        let now = now_ms();
        let expiry_ms = self.presence_expiry(now);
        let presence_list_max = self.env.settings.presence_list_max;
        let infos: Vec<Vec<u8>> = batch.iter().map(|req| req.join.info.encode()).collect();
        let (store, session) = (&*self.env.store, self.session.as_str());
        let replies =
            futures_util::future::join_all(batch.iter().zip(&infos).map(|(req, info)| {
                store.join(
                    session,
                    JoinArgs {
                        client_id: req.join.client.id(),
                        info,
                        expiry_ms,
                        now_ms: now,
                        since: req.join.since.as_ref().map(|s| s.seq),
                        epoch: req.join.since.as_ref().and_then(|s| s.epoch.as_deref()),
                        since_id: req.join.since.as_ref().and_then(|s| s.id.as_deref()),
                        presence_list_max,
                        create: req.join.create,
                        activity: req.join.info.role.can_write(),
                        owner: &req.join.info.user,
                    },
                )
            }))
            .await;
        if let Some(lowest) = replies.iter().flatten().min_by_key(|r| r.seq) {
            let (seq, tip, epoch) = (lowest.seq, lowest.tip.clone(), lowest.epoch.clone());
            match self.last_seq {
                None => self.start_at(seq, tip, epoch),
                // Another numbering (the keys were lost and it started over, maybe past
                // our seq already), or ours went backwards or has another message at our
                // seq (a failover lost writes): what we delivered is not its history.
                Some(last)
                    if ids_differ(&epoch, &self.epoch)
                        || seq < last
                        || (seq == last && ids_differ(&tip, &self.last_id)) =>
                {
                    self.renumber(seq, tip, epoch).await
                }
                Some(_) => {}
            }
        }
        for (req, reply) in batch.into_iter().zip(replies) {
            match reply {
                Ok(reply) => self.admit(req, reply, now).await,
                Err(e) => {
                    let _ = req.reply.send(Err(JoinError::Store(e)));
                }
            }
        }
    }

    /// Answers `joined` and adds the member with the seq its join read as its baseline.
    async fn admit(&mut self, req: JoinRequest, reply: JoinReply, now: u64) {
        let JoinRequest {
            join,
            reply: answer,
        } = req;
        let mut history: Vec<Entry> = reply
            .history
            .iter()
            .filter_map(|b| decode_entry(b).ok())
            .collect();
        history.reverse();
        let recovered = match join.since.as_ref().map(|s| s.seq) {
            None => true,
            // Another numbering: the session's keys were lost and it started over, so the
            // client's seqs mean nothing here (even where the new ones passed them).
            Some(_) if !reply.same_numbering => false,
            // A since past the top means the session was reset.
            Some(since) if since > reply.seq => false,
            Some(since) => {
                history.retain(|e| e.seq > since);
                history.len() as u64 == reply.seq - since
            }
        };
        let idle_after = self.env.settings.idle_after_ms;
        let presence = reply
            .members
            .iter()
            .filter_map(|b| MemberInfo::decode(b).ok())
            .map(|i| i.to_member(now, idle_after))
            .collect();
        let joined = ServerFrame::Joined {
            session: self.session.clone(),
            seq: reply.seq,
            epoch: reply.epoch.clone(),
            seq_id: reply.tip.clone(),
            recovered,
            history: history.into_iter().map(Entry::into_history).collect(),
            presence,
            reference: join.reference,
        };
        join.client.send(&joined);
        let client_id = join.client.id().to_string();
        self.members.insert(
            client_id.clone(),
            LocalMember {
                client: join.client,
                info: join.info,
                last_seq: reply.seq,
            },
        );
        if answer.send(Ok(reply.created)).is_err() {
            // The connection gave up waiting (or is gone): undo the join.
            self.leave_member(&client_id).await;
        }
    }
}
