//! The join hook: before a join (WebSocket `join`, REST presence join) the application's
//! backend is asked, signed like a webhook, whether this user may join this session as
//! this role; it may attach a display name and info that presence then shows. Also the
//! one signed POST that webhooks use.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::sign::Signer;
use super::HttpClient;
use crate::config::webhooks::{HookFailure, WebhookConfig};
use crate::metrics as m;

/// The most of an answer that is read (a join hook answer is small).
const ANSWER_MAX: usize = 64 * 1024;
/// The most the info a hook attaches may weigh, as JSON.
pub const INFO_MAX: usize = 4096;

/// A signed POST of `body` (JSON) with the Standard Webhooks headers; answers the status
/// and up to [`ANSWER_MAX`] bytes of the answer, or why there is none.
pub(crate) async fn signed_post(
    client: &HttpClient,
    signer: &Signer,
    url: &hyper::Uri,
    id: &str,
    body: Bytes,
    timeout: Duration,
) -> Result<(hyper::StatusCode, Bytes), String> {
    let timestamp = crate::util::now_ms() / 1000;
    let signature = signer.signature(id, timestamp, &body);
    let request = hyper::Request::post(url.clone())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(
            hyper::header::USER_AGENT,
            concat!("roomcast/", env!("CARGO_PKG_VERSION")),
        )
        .header("webhook-id", id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(Full::new(body))
        .map_err(|e| format!("request: {e}"))?;
    let exchange = async {
        let response = client
            .request(request)
            .await
            .map_err(|e| format!("connection: {}", error_chain(&e)))?;
        let status = response.status();
        let answer = Limited::new(response.into_body(), ANSWER_MAX)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        Ok::<_, String>((status, answer))
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "no answer within {}",
            humantime::format_duration(timeout)
        )),
    }
}

/// An error and its causes on one line ("connection refused" hides under hyper's
/// "client error (Connect)").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// What the hook is asked.
#[derive(Debug, Clone, Serialize)]
pub struct JoinQuestion<'a> {
    pub user: &'a str,
    pub client_id: &'a str,
    pub session: &'a str,
    pub role: roomcast_shared::Role,
    pub name: Option<&'a str>,
}

/// What the hook decided (its failure mode applied).
#[derive(Debug, Clone, PartialEq)]
pub enum JoinVerdict {
    Allow {
        /// Replaces the member's display name.
        name: Option<String>,
        /// Shown in presence as the member's `info`.
        info: Option<Value>,
    },
    /// The reason reaches the client in a `forbidden` error.
    Deny(String),
}

#[derive(Debug, Deserialize)]
struct Answer {
    allow: bool,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    member: Option<AnswerMember>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AnswerMember {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    info: Option<Value>,
}

/// The configured join hook.
pub struct JoinHook {
    url: hyper::Uri,
    client: HttpClient,
    signer: Signer,
    timeout: Duration,
    failure: HookFailure,
}

impl std::fmt::Debug for JoinHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinHook").field("url", &self.url).finish()
    }
}

impl JoinHook {
    pub(crate) fn new(config: &WebhookConfig) -> Result<Option<Self>, String> {
        let Some(url) = &config.join_hook_url else {
            return Ok(None);
        };
        Ok(Some(JoinHook {
            url: url
                .trim()
                .parse()
                .map_err(|e| format!("ROOMCAST_JOIN_HOOK_URL: {e}"))?,
            client: super::http_client()?,
            signer: Signer::new(config.keys().map_err(|e| e.0)?),
            timeout: config.join_hook_timeout,
            failure: config.join_hook_failure,
        }))
    }

    /// Asks the backend; a failure to answer is decided by the failure mode.
    pub async fn ask(&self, q: &JoinQuestion<'_>) -> JoinVerdict {
        let started = Instant::now();
        let id = format!("join_{}", crate::util::random_id(20));
        let body = match serde_json::to_vec(q) {
            Ok(b) => Bytes::from(b),
            Err(e) => return self.failed(started, &e.to_string()),
        };
        let answer = signed_post(
            &self.client,
            &self.signer,
            &self.url,
            &id,
            body,
            self.timeout,
        )
        .await
        .and_then(|(status, bytes)| {
            if status.is_success() {
                parse_answer(&bytes)
            } else {
                Err(format!("answered {status}"))
            }
        });
        match answer {
            Ok(verdict) => {
                let outcome = match verdict {
                    JoinVerdict::Allow { .. } => "allowed",
                    JoinVerdict::Deny(_) => "denied",
                };
                m::join_hook(outcome, started.elapsed());
                verdict
            }
            Err(why) => self.failed(started, &why),
        }
    }

    /// The member's name and info after the hook (its name wins over `name`), or the
    /// reason of a refusal. Without a hook, `name` as it is and no info.
    pub async fn decide(
        hook: Option<&JoinHook>,
        q: &JoinQuestion<'_>,
        name: Option<String>,
    ) -> Result<(Option<String>, Option<Value>), String> {
        let Some(hook) = hook else {
            return Ok((name, None));
        };
        match hook.ask(q).await {
            JoinVerdict::Allow { name: named, info } => Ok((named.or(name), info)),
            JoinVerdict::Deny(reason) => Err(reason),
        }
    }

    fn failed(&self, started: Instant, why: &str) -> JoinVerdict {
        tracing::warn!(error = %why, mode = ?self.failure, "join hook failed");
        match self.failure {
            HookFailure::Open => {
                m::join_hook("failed_open", started.elapsed());
                JoinVerdict::Allow {
                    name: None,
                    info: None,
                }
            }
            HookFailure::Closed => {
                m::join_hook("failed_closed", started.elapsed());
                JoinVerdict::Deny(
                    "the application could not be asked whether you may join; try again".into(),
                )
            }
        }
    }
}

/// An answer's verdict, or why it is not a valid answer.
fn parse_answer(bytes: &[u8]) -> Result<JoinVerdict, String> {
    let answer: Answer =
        serde_json::from_slice(bytes).map_err(|e| format!("the answer is not valid: {e}"))?;
    if !answer.allow {
        let reason = answer
            .reason
            .filter(|r| !r.trim().is_empty())
            .unwrap_or_else(|| "the application refused the join".into());
        return Ok(JoinVerdict::Deny(reason.chars().take(200).collect()));
    }
    let (name, info) = match answer.member {
        None => (None, None),
        Some(member) => (member.name, member.info),
    };
    if let Some(n) = &name {
        if let Some(problem) = crate::util::name_problem(n) {
            return Err(format!("member.name {problem}"));
        }
    }
    if let Some(info) = &info {
        if !info.is_object() {
            return Err("member.info must be a JSON object".into());
        }
        if info.to_string().len() > INFO_MAX {
            return Err(format!("member.info is over {INFO_MAX} bytes"));
        }
    }
    Ok(JoinVerdict::Allow {
        name,
        info: info.filter(|i| i.as_object().is_some_and(|o| !o.is_empty())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn answers_parse_into_verdicts() {
        assert_eq!(
            parse_answer(br#"{"allow": true}"#).unwrap(),
            JoinVerdict::Allow {
                name: None,
                info: None
            }
        );
        assert_eq!(
            parse_answer(br#"{"allow": true, "member": {"name": "Desk 4", "info": {"seat": 4}}}"#)
                .unwrap(),
            JoinVerdict::Allow {
                name: Some("Desk 4".into()),
                info: Some(json!({"seat": 4}))
            }
        );
        assert_eq!(
            parse_answer(br#"{"allow": false, "reason": "not your desk"}"#).unwrap(),
            JoinVerdict::Deny("not your desk".into())
        );
        assert!(matches!(
            parse_answer(br#"{"allow": false}"#).unwrap(),
            JoinVerdict::Deny(_)
        ));
    }

    #[test]
    fn bad_answers_are_failures_not_verdicts() {
        for bad in [
            &b"nope"[..],
            br#"{"allowed": true}"#,
            br#"{"allow": true, "member": {"info": [1]}}"#,
            br#"{"allow": true, "member": {"name": ""}}"#,
            br#"{"allow": true, "member": {"nick": "x"}}"#,
        ] {
            assert!(
                parse_answer(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let big = format!(
            r#"{{"allow": true, "member": {{"info": {{"x": "{}"}}}}}}"#,
            "a".repeat(5000)
        );
        assert!(parse_answer(big.as_bytes()).unwrap_err().contains("4096"));
    }
}
