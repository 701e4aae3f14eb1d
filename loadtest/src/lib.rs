//! Roomcast load generator (the library behind the `loadtest` binary, whose report types
//! `cargo xtask` reads back): sessions of one controller and N displays against one or more
//! gateways. Controllers publish at a fixed rate with a send timestamp in each message;
//! displays measure publish-to-receive latency and check seq continuity, so every run
//! reports throughput, latency percentiles, and messages lost, duplicated or out of order.
//!
//! One process holds at most a few tens of thousands of sockets (open files are capped per
//! process), so `--workers N` runs N copies of itself, each with every Nth client, starts
//! them publishing together and merges their results (see `worker.rs`).
//!
//! Wire types come from `roomcast-shared`; tokens are minted with the gateway's secret
//! (`--secret`) or omitted when the gateway runs with `ROOMCAST_AUTH=off` (`--no-auth`).
//! `--protocol socketio` drives the Socket.IO peer in `loadtest/peers/socketio` instead.

mod cli;
mod controller;
mod dial;
mod display;
mod proto;
mod readiness;
pub mod report;
mod seq;
mod worker;

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use futures_util::SinkExt;
use tokio::sync::{mpsc, watch};

pub(crate) use crate::cli::Args;
use crate::cli::Placement;
use crate::controller::controller;
use crate::dial::{connect_and_join, Ws};
use crate::display::display;
use crate::proto::{Event, Joined, Proto};
use crate::report::{Partial, Report, Shared};

/// One client's identity and where it dials.
pub(crate) struct Client<'a> {
    args: &'a Args,
    shared: &'a Shared,
    /// The session's name and its index in the run.
    session: &'a str,
    index: usize,
    user: String,
    source: Option<IpAddr>,
    /// The URL (index into `--url`) it is connected to; a reconnect tries the next one.
    url: usize,
    /// Jitter state (xorshift): no shared RNG on this path.
    jitter: u64,
    /// The client's index in the whole run (all workers).
    id: usize,
    /// Churn storms so far (see `--churn-at`).
    churn: watch::Receiver<u32>,
}

impl Client<'_> {
    /// Whether this client takes part in churn storm `k`: a fixed, spread-out choice of
    /// `--churn-fraction` of the clients, different for each storm.
    fn churns(&self, k: u32) -> bool {
        picked(self.id, k, self.args.churn_fraction)
    }
}

/// Whether client `id` is among the `fraction` picked for storm `k`.
fn picked(id: usize, k: u32, fraction: f64) -> bool {
    let mut h = (id as u64) ^ (u64::from(k) << 32);
    h = h.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    h ^= h >> 29;
    ((h % 10_000) as f64) < fraction * 10_000.0
}

impl Client<'_> {
    /// Dials the next URLs in turn with exponential backoff and full jitter until a
    /// join succeeds, or `end` passes (`None`).
    async fn rejoin(&mut self, since: Option<(u64, &str)>, end: Instant) -> Option<(Ws, Joined)> {
        let args = self.args;
        let mut backoff = args.backoff_min.max(Duration::from_millis(1));
        loop {
            // Full jitter: a whole gateway's clients must not come back in one instant.
            self.jitter ^= self.jitter << 13;
            self.jitter ^= self.jitter >> 7;
            self.jitter ^= self.jitter << 17;
            let pause = backoff.mul_f64((self.jitter % 1000) as f64 / 1000.0);
            if Instant::now() + pause >= end {
                return None;
            }
            tokio::time::sleep(pause).await;
            backoff = (backoff * 2).min(args.backoff_max);
            self.url = (self.url + 1) % args.urls.len();
            let url = &args.urls[self.url];
            let join = connect_and_join(
                args,
                url,
                &self.user,
                self.session,
                self.source,
                self.shared,
                since,
            );
            if let Ok(Some(joined)) = tokio::time::timeout(args.join_timeout, join).await {
                return Some(joined);
            }
        }
    }
}

/// The `loadtest` command: parses the arguments, runs the load (or a worker's share of
/// it), prints the report and exits with the documented status.
pub fn main() {
    let args = Args::parse();
    let usage = |msg: &str| -> ! {
        eprintln!("loadtest: {msg}");
        std::process::exit(64);
    };
    if args.proto() == Proto::SocketIo {
        // The peer has no authentication.
    } else if !args.no_auth && args.secret.is_none() {
        usage("give --secret (or ROOMCAST_JWT_SECRET), or --no-auth");
    }
    if Proto::parse(&args.protocol).is_none() {
        usage("--protocol is json, msgpack or socketio");
    }
    if args.workers == 0 || args.rate < 0.0 || !args.rate.is_finite() {
        usage("--workers must be at least 1 and --rate a finite number >= 0");
    }
    if args.reconnect && args.proto() == Proto::SocketIo {
        usage("--reconnect needs a Roomcast protocol: the Socket.IO peer has no recovery");
    }
    if !args.churn_at.is_empty() && !args.reconnect {
        usage("--churn-at needs --reconnect");
    }
    if !(0.0..=1.0).contains(&args.churn_fraction) {
        usage("--churn-fraction is between 0 and 1");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadtest: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Some(index) = args.worker_index {
        // A worker: run its share in lockstep with the parent, print the partial result.
        std::process::exit(runtime.block_on(worker::serve(args, index)));
    }
    let partial = if args.workers > 1 {
        match runtime.block_on(worker::spawn_all(&args)) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("loadtest: {e}");
                std::process::exit(1);
            }
        }
    } else {
        runtime.block_on(run(args.clone(), None, None))
    };
    let report = Report::build(&args, partial);
    print!("{}", report.table());
    if let Some(path) = &args.json {
        if let Err(e) = std::fs::write(path, report.json()) {
            eprintln!("loadtest: cannot write {}: {e}", path.display());
            std::process::exit(1);
        }
    }
    if args.fail_on_loss && report.unexplained > 0 {
        eprintln!(
            "loadtest: {} message(s) lost, duplicated or reordered without a reset or a window to explain them",
            report.unexplained
        );
        std::process::exit(3);
    }
}

/// Runs this process's share of a load test: every client when `share` is `None`, else
/// the clients whose global index is `i` modulo `n` for `share = Some((i, n))`. A worker
/// passes its `gate`: once its clients have joined it reports ready and waits for the
/// parent's go, so all workers start publishing together.
pub(crate) async fn run(
    args: Args,
    share: Option<(usize, usize)>,
    gate: Option<worker::Gate>,
) -> Partial {
    let args = Arc::new(args);
    let shared = Arc::new(Shared::new(args.sessions));
    let (mine, of) = share.unwrap_or((0, 1));
    let total = args.sessions * (args.displays + 1);
    let clients = (0..total).filter(|i| i % of == mine).count();
    // Each client reports once it has joined (or failed to), then waits for the go.
    let (arrived_tx, mut arrived_rx) = mpsc::unbounded_channel::<()>();
    let (go_tx, go_rx) = watch::channel(false);
    let (churn_tx, churn_rx) = watch::channel(0u32);
    let limit = Arc::new(tokio::sync::Semaphore::new(args.concurrency.max(1)));
    let ramp_step = if total > 0 {
        args.ramp / total as u32
    } else {
        Duration::ZERO
    };
    let connecting = Instant::now();
    let mut tasks = Vec::with_capacity(clients);
    let mut index = 0usize;
    for s in 0..args.sessions {
        let session = format!("{}-{s}", args.prefix);
        for d in 0..=args.displays {
            let this = index;
            index += 1;
            if this % of != mine {
                continue;
            }
            let is_controller = d == 0;
            let url = match args.placement {
                Placement::Client => this,
                Placement::Session => s,
            } % args.urls.len();
            let source = (!args.source.is_empty()).then(|| args.source[this % args.source.len()]);
            let delay = ramp_step * this as u32;
            let (args, shared, limit, session) =
                (args.clone(), shared.clone(), limit.clone(), session.clone());
            let (arrived, mut go) = (arrived_tx.clone(), go_rx.clone());
            let churn = churn_rx.clone();
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let user = if is_controller {
                    format!("{session}-ctl")
                } else {
                    format!("{session}-d{d}")
                };
                let ws = {
                    let _permit = limit.acquire().await;
                    let join = connect_and_join(
                        &args,
                        &args.urls[url],
                        &user,
                        &session,
                        source,
                        &shared,
                        None,
                    );
                    match tokio::time::timeout(args.join_timeout, join).await {
                        Ok(ws) => ws,
                        Err(_) => {
                            shared.error("join: timed out");
                            None
                        }
                    }
                };
                let _ = arrived.send(());
                if go.wait_for(|go| *go).await.is_err() {
                    return;
                }
                let Some((ws, joined)) = ws else { return };
                let mut client = Client {
                    args: &args,
                    shared: &shared,
                    session: &session,
                    index: s,
                    user,
                    source,
                    url,
                    jitter: (this as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
                    id: this,
                    churn,
                };
                if is_controller {
                    controller(ws, joined, &mut client).await;
                } else {
                    display(ws, joined, &mut client).await;
                }
            }));
        }
    }
    drop(arrived_tx);
    let progress = {
        let shared = shared.clone();
        let enabled = args.progress;
        let label = share.map(|(i, _)| format!("[w{i}] ")).unwrap_or_default();
        tokio::spawn(async move {
            let started = Instant::now();
            let mut last = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let now = shared.received.load(Ordering::Relaxed);
                if enabled {
                    eprintln!(
                        "{label}[{:>4.0}s] joined {:>6} sent {:>9} received {:>10} ({:>8}/s) lost {} reconnects {} errors {}",
                        started.elapsed().as_secs_f64(),
                        shared.joined.load(Ordering::Relaxed),
                        shared.sent.load(Ordering::Relaxed),
                        now,
                        now - last,
                        shared.lost.load(Ordering::Relaxed),
                        shared.reconnects.load(Ordering::Relaxed),
                        shared.error_count()
                    );
                }
                last = now;
            }
        })
    };
    for _ in 0..clients {
        if arrived_rx.recv().await.is_none() {
            break;
        }
    }
    let connect_phase = connecting.elapsed();
    if let Some(gate) = gate {
        gate.open().await;
    }
    shared.start_clock();
    let _ = go_tx.send(true);
    let started = Instant::now();
    if let (Some(path), 0) = (&args.started_file, mine) {
        if let Err(e) = std::fs::write(path, b"") {
            eprintln!("loadtest: cannot write {}: {e}", path.display());
        }
    }
    let churns = {
        let at = args.churn_at.clone();
        tokio::spawn(async move {
            for (k, t) in at.into_iter().enumerate() {
                tokio::time::sleep_until((started + t).into()).await;
                let _ = churn_tx.send(k as u32 + 1);
            }
            // Keep the sender: a dropped one would wake every display's select.
            std::future::pending::<()>().await;
        })
    };
    // One process watches readiness (workers share the gateways).
    let readiness = (mine == 0 && !args.ready_urls.is_empty())
        .then(|| tokio::spawn(readiness::watch(args.ready_urls.clone(), shared.clone())));
    for task in tasks {
        let _ = task.await;
    }
    progress.abort();
    churns.abort();
    if let Some(watch) = readiness {
        watch.abort();
    }
    shared.partial(started.elapsed(), connect_phase)
}

/// Why a client stopped reading one connection.
enum Stop {
    /// The run is over.
    End,
    /// The connection closed (with its close code) or failed, and why.
    Dropped(Option<u16>, String),
    /// A seq or an ack at or below one already had: a duplicate, or the session's
    /// numbering started over. A rejoin tells which.
    Suspect,
    /// A churn storm picked this client: it leaves and comes back.
    Churn,
}

/// What controllers and displays do alike with an event: answer Socket.IO pings, and
/// stop on one that ends the connection (`Some`); others are ignored (`None`).
async fn housekeeping(ws: &mut Ws, event: Option<Event>) -> Option<Stop> {
    let clip = |e: String| e.chars().take(40).collect::<String>();
    let Some(event) = event else {
        return Some(Stop::Dropped(None, "ended".into()));
    };
    match event {
        Event::Ping => ws
            .send(proto::pong())
            .await
            .is_err()
            .then(|| Stop::Dropped(None, "pong failed".into())),
        Event::Closed(code) => Some(Stop::Dropped(code, format!("closed {code:?}"))),
        Event::Broken(e) => Some(Stop::Dropped(None, clip(e))),
        Event::Malformed(e) => Some(Stop::Dropped(None, format!("malformed {}", clip(e)))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::picked;

    #[test]
    fn a_churn_storm_picks_about_its_fraction_and_another_set_each_time() {
        let first: Vec<usize> = (0..2000).filter(|&i| picked(i, 1, 0.2)).collect();
        let second: Vec<usize> = (0..2000).filter(|&i| picked(i, 2, 0.2)).collect();
        for storm in [&first, &second] {
            assert!((340..=460).contains(&storm.len()), "{}", storm.len());
        }
        let both = first.iter().filter(|i| second.contains(i)).count();
        assert!(both < 150, "storms pick different clients: {both} in both");
        assert!(!(0..100).any(|i| picked(i, 1, 0.0)));
        assert!((0..100).all(|i| picked(i, 1, 1.0)));
    }
}
