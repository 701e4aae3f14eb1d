//! `webhook-sink`: the receiving end of the webhook benchmarks (BENCHMARKS.md,
//! "Webhooks"). An HTTP/1.1 server on loopback that answers every event 204 at once and
//! measures, per event, the lag from its recording (the body's `timestamp`) to its
//! arrival; it counts duplicates (by id) and, for `message.published`, seqs that arrive
//! out of order per session. `/join` answers the join hook `{"allow": true}` after
//! `--join-delay`. It stops after `--idle` without a request (once one came) or on
//! SIGTERM, and prints its report (`roomcast_loadtest::report::SinkReport`; also to
//! `--json`).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use hdrhistogram::Histogram;
use roomcast_loadtest::report::{Lag, SinkReport};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Parser)]
#[command(
    name = "webhook-sink",
    about = "Receive Roomcast webhooks and measure their lag"
)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Written with the bound address once listening (for scripts).
    #[arg(long)]
    addr_file: Option<std::path::PathBuf>,
    /// How long the join hook takes to answer.
    #[arg(long, default_value = "1ms", value_parser = humantime::parse_duration)]
    join_delay: Duration,
    /// Stop after this long without a request, once one came.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    idle: Duration,
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

#[derive(Default)]
struct Stats {
    events: u64,
    joins: u64,
    duplicates: u64,
    out_of_order: u64,
    ids: HashSet<String>,
    last_seq: HashMap<String, u64>,
    by_type: HashMap<String, u64>,
    first: Option<Instant>,
    last: Option<Instant>,
    lag_us: Option<Histogram<u64>>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Stats {
    fn event(&mut self, body: &[u8]) {
        let arrived = now_ms();
        let now = Instant::now();
        self.first.get_or_insert(now);
        self.last = Some(now);
        let Ok(v) = serde_json::from_slice::<Value>(body) else {
            return;
        };
        self.events += 1;
        let id = v["id"].as_str().unwrap_or_default().to_string();
        if !self.ids.insert(id) {
            self.duplicates += 1;
            return;
        }
        let kind = v["type"].as_str().unwrap_or_default().to_string();
        if kind == "message.published" {
            let session = v["session"].as_str().unwrap_or_default().to_string();
            let seq = v["data"]["seq"].as_u64().unwrap_or(0);
            let last = self.last_seq.entry(session).or_insert(0);
            if seq != *last + 1 && *last != 0 {
                self.out_of_order += 1;
            }
            *last = seq;
        }
        *self.by_type.entry(kind).or_insert(0) += 1;
        let lag_ms = arrived.saturating_sub(v["timestamp"].as_u64().unwrap_or(arrived));
        if let Some(h) = self.lag_us.as_mut() {
            let _ = h.record((lag_ms * 1000).max(1));
        }
    }

    fn report(&self) -> SinkReport {
        let span = match (self.first, self.last) {
            (Some(a), Some(b)) => b.duration_since(a).as_secs_f64(),
            _ => 0.0,
        };
        let unique = self.ids.len() as u64;
        let q = |p: f64| {
            self.lag_us
                .as_ref()
                .map_or(0.0, |h| h.value_at_quantile(p) as f64 / 1000.0)
        };
        SinkReport {
            events: self.events,
            unique,
            duplicates: self.duplicates,
            out_of_order: self.out_of_order,
            by_type: self.by_type.clone(),
            joins: self.joins,
            span_s: span,
            events_per_s: if span > 0.0 {
                unique as f64 / span
            } else {
                0.0
            },
            lag_ms: Lag {
                p50: q(0.5),
                p90: q(0.9),
                p99: q(0.99),
                max: self
                    .lag_us
                    .as_ref()
                    .map_or(0.0, |h| h.max() as f64 / 1000.0),
            },
        }
    }
}

async fn serve(mut stream: TcpStream, stats: Arc<Mutex<Stats>>, join_delay: Duration) {
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 16 * 1024];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + length {
            let mut chunk = [0u8; 16 * 1024];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let join = head.starts_with("post /join");
        let response: &[u8] = if join {
            tokio::time::sleep(join_delay).await;
            if let Ok(mut s) = stats.lock() {
                s.joins += 1;
            }
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 14\r\n\r\n{\"allow\":true}"
        } else {
            if let Ok(mut s) = stats.lock() {
                s.event(&buf[head_end..head_end + length]);
            }
            b"HTTP/1.1 204 No Content\r\n\r\n"
        };
        buf.drain(..head_end + length);
        if stream.write_all(response).await.is_err() {
            return;
        }
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let listener = TcpListener::bind(args.listen).await?;
    let addr = listener.local_addr()?;
    if let Some(f) = &args.addr_file {
        std::fs::write(f, addr.to_string())?;
    }
    eprintln!("webhook-sink listening on {addr}");
    let stats = Arc::new(Mutex::new(Stats {
        lag_us: Histogram::new_with_bounds(1, 3_600_000_000, 3).ok(),
        ..Stats::default()
    }));
    let s = stats.clone();
    let delay = args.join_delay;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(serve(stream, s.clone(), delay));
        }
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = term.recv() => break,
        }
        let idle = stats
            .lock()
            .ok()
            .and_then(|s| s.last)
            .is_some_and(|l| l.elapsed() >= args.idle);
        if idle {
            break;
        }
    }
    let report = stats.lock().map(|s| s.report()).unwrap_or_default();
    let text = serde_json::to_string_pretty(&report).unwrap_or_default();
    println!("{text}");
    if let Some(f) = &args.json {
        std::fs::write(f, text)?;
    }
    Ok(())
}
