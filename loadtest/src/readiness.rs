//! Readiness watching (`--ready-url`): polls each gateway's readiness endpoint every
//! 100 ms during a run, so a fault's report says how long each gateway answered anything
//! but 200, and the timeline how many were not ready in each second.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::http::Uri;

use crate::report::Shared;

const EVERY: Duration = Duration::from_millis(100);
/// A probe that takes longer counts as not ready (Kubernetes' probes time out too).
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Polls until aborted.
pub(crate) async fn watch(urls: Vec<String>, shared: Arc<Shared>) {
    let mut ready = vec![true; urls.len()];
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = Instant::now();
    loop {
        tick.tick().await;
        let since = last.elapsed();
        last = Instant::now();
        let answers = join_all(
            urls.iter()
                .map(|u| tokio::time::timeout(PROBE_TIMEOUT, status(u))),
        )
        .await;
        let mut down = 0;
        for (i, answer) in answers.into_iter().enumerate() {
            let ok = matches!(answer, Ok(Ok(200)));
            shared.readiness(&urls[i], ok, ready[i], since);
            ready[i] = ok;
            down += u64::from(!ok);
        }
        shared.not_ready_now(down);
    }
}

/// The HTTP status `GET url` answers (plain HTTP/1.1, which is all a probe needs).
async fn status(url: &str) -> Result<u16, String> {
    let uri: Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let host = uri.host().ok_or("no host")?;
    let port = uri.port_u16().unwrap_or(80);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut stream = TcpStream::connect((host, port))
        .await
        .map_err(|e| e.to_string())?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut head = [0u8; 32];
    let mut got = 0;
    while got < 12 {
        let n = stream
            .read(&mut head[got..])
            .await
            .map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        got += n;
    }
    parse_status(&head[..got]).ok_or_else(|| "not HTTP".to_string())
}

/// `HTTP/1.1 503 ...` → 503.
fn parse_status(head: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(head.get(..12)?).ok()?;
    text.strip_prefix("HTTP/1.")?.get(2..5)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(parse_status(b"HTTP/1.0 503 Service Unavailable"), Some(503));
        assert_eq!(parse_status(b"HTTP/1.1 20"), None);
        assert_eq!(parse_status(b"SSH-2.0-OpenSSH_9"), None);
    }
}
