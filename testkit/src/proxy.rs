//! The fault proxy: a TCP proxy between gateways and Redis that adds latency, partitions
//! and cuts. The integration tests and `make chaos` (`cargo xtask chaos`) run it in
//! process ([`Proxy`]).
//!
//! Faults, each whenever the caller says:
//! - **delay**: every chunk Redis sends back waits that long (requests pass at once, so the
//!   round trip grows by the delay, not twice it); each direction keeps its byte order;
//! - **blackhole**, then **heal**: a partition. Nothing is forwarded, and new connections
//!   are accepted but reach Redis only after the heal, so clients see timeouts, not
//!   errors. The heal closes the connections that were open when the partition began
//!   (they died in it, as TCP connections do when a partition outlasts their timeouts);
//! - **cut**, then **restore**: every connection dropped at once, new ones refused.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What the proxy does to traffic now, shared by every connection.
struct Faults {
    /// Added to everything coming back from upstream, in microseconds.
    delay_us: AtomicU64,
    /// True during a partition: nothing is forwarded, new connections wait.
    blackhole: watch::Sender<bool>,
    /// Held by each connection forwarding now; cancelled by a heal, which so closes the
    /// connections a partition caught.
    partition: Mutex<CancellationToken>,
    /// Held by every connection; cancelled by a cut, which drops them all.
    cut: Mutex<CancellationToken>,
}

impl Faults {
    fn delay(&self) -> Duration {
        Duration::from_micros(self.delay_us.load(Ordering::Relaxed))
    }

    fn token(slot: &Mutex<CancellationToken>) -> CancellationToken {
        slot.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn replace(slot: &Mutex<CancellationToken>) -> CancellationToken {
        std::mem::take(&mut *slot.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// A TCP proxy in front of `upstream` with faults to switch on and off (see the module).
pub struct Proxy {
    pub addr: SocketAddr,
    faults: Arc<Faults>,
    stop: CancellationToken,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Proxy {
        Proxy::start_delayed(upstream, Duration::ZERO).await
    }

    /// A proxy that holds every chunk coming back from `upstream` for `delay`: a slow
    /// network between the gateway and Redis.
    pub async fn start_delayed(upstream: SocketAddr, delay: Duration) -> Proxy {
        let local = SocketAddr::from(([127, 0, 0, 1], 0));
        let proxy = Proxy::bind(local, upstream).await.expect("bind proxy");
        proxy.set_delay(delay);
        proxy
    }

    /// A proxy listening on `listen` (port 0: any free port).
    pub async fn bind(listen: SocketAddr, upstream: SocketAddr) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let faults = Arc::new(Faults {
            delay_us: AtomicU64::new(0),
            blackhole: watch::Sender::new(false),
            partition: Mutex::new(CancellationToken::new()),
            cut: Mutex::new(CancellationToken::new()),
        });
        let stop = CancellationToken::new();
        let (accepting, stopped) = (faults.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = stopped.cancelled() => return,
                    a = listener.accept() => a,
                };
                if let Ok((inbound, _)) = accepted {
                    tokio::spawn(serve(accepting.clone(), inbound, upstream));
                }
            }
        });
        Ok(Proxy { addr, faults, stop })
    }

    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Every chunk read from upstream from now on waits `delay` before it is sent on.
    pub fn set_delay(&self, delay: Duration) {
        let us = u64::try_from(delay.as_micros()).unwrap_or(u64::MAX);
        self.faults.delay_us.store(us, Ordering::Relaxed);
    }

    /// A partition begins: nothing is forwarded, new connections wait for the heal.
    pub fn blackhole(&self) {
        self.faults.blackhole.send_replace(true);
    }

    /// The partition ends: the connections it caught are closed, new ones go through.
    pub fn heal(&self) {
        // A fresh token first, so that connections let through below never hold the old one.
        Faults::replace(&self.faults.partition).cancel();
        self.faults.blackhole.send_replace(false);
    }

    /// Drops every proxied connection and refuses new ones.
    pub fn cut(&self) {
        Faults::token(&self.faults.cut).cancel();
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        Faults::replace(&self.faults.cut);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.cut();
    }
}

/// One proxied connection, until either side ends it or a fault does.
async fn serve(faults: Arc<Faults>, inbound: TcpStream, upstream: SocketAddr) {
    let cut = Faults::token(&faults.cut);
    if cut.is_cancelled() {
        return;
    }
    // Accepted during a partition: it reaches upstream only once the partition heals.
    let mut open = faults.blackhole.subscribe();
    tokio::select! {
        _ = cut.cancelled() => return,
        healed = open.wait_for(|hole| !*hole) => if healed.is_err() { return },
    }
    let partition = Faults::token(&faults.partition);
    let Ok(outbound) = TcpStream::connect(upstream).await else {
        return;
    };
    let (in_read, in_write) = inbound.into_split();
    let (out_read, out_write) = outbound.into_split();
    // One direction ending ends the connection, as does a cut or a heal. Biased: a heal
    // cancels before it opens the way, so a connection it caught never writes again.
    tokio::select! {
        biased;
        _ = cut.cancelled() => {}
        _ = partition.cancelled() => {}
        _ = forward(in_read, out_write, &faults, false) => {}
        _ = forward(out_read, in_write, &faults, true) => {}
    }
}

/// Copies one direction in order. Chunks from upstream (`delayed`) wait the delay set
/// when they were read, each from its own read time, so a delay adds latency, not a
/// throughput limit; during a partition nothing is written.
async fn forward(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, faults: &Faults, delayed: bool) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let read = async move {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n @ 1..) = from.read(&mut buf).await {
            let delay = if delayed {
                faults.delay()
            } else {
                Duration::ZERO
            };
            if tx
                .send((Instant::now() + delay, buf[..n].to_vec()))
                .is_err()
            {
                return;
            }
        }
    };
    let write = async {
        let mut open = faults.blackhole.subscribe();
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if open.wait_for(|hole| !*hole).await.is_err() || to.write_all(&chunk).await.is_err() {
                return;
            }
        }
    };
    tokio::join!(read, write);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An upstream that answers every chunk with the same bytes.
    async fn echo() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n @ 1..) = s.read(&mut buf).await {
                        if s.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    /// Sends `ping` and waits up to `within` for it back: the round trip, or `None`.
    async fn round_trip(s: &mut TcpStream, within: Duration) -> Option<Duration> {
        let started = std::time::Instant::now();
        s.write_all(b"ping").await.ok()?;
        let mut buf = [0u8; 4];
        match tokio::time::timeout(within, s.read_exact(&mut buf)).await {
            Ok(Ok(_)) if &buf == b"ping" => Some(started.elapsed()),
            _ => None,
        }
    }

    /// Whether the peer closed `s` within `within`.
    async fn closed(s: &mut TcpStream, within: Duration) -> bool {
        let mut buf = [0u8; 16];
        matches!(
            tokio::time::timeout(within, s.read(&mut buf)).await,
            Ok(Ok(0) | Err(_))
        )
    }

    #[tokio::test]
    async fn a_delay_lengthens_each_round_trip_by_it() {
        let proxy = Proxy::start(echo().await).await;
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        let delay = Duration::from_millis(200);
        let fast = round_trip(&mut s, Duration::from_secs(5)).await.unwrap();
        assert!(fast < delay, "{fast:?} without a delay");
        proxy.set_delay(delay);
        let slow = round_trip(&mut s, Duration::from_secs(5)).await.unwrap();
        assert!(slow >= delay, "{slow:?} with 200 ms");
        proxy.set_delay(Duration::ZERO);
        assert!(round_trip(&mut s, Duration::from_secs(5)).await.is_some());
    }

    #[tokio::test]
    async fn a_partition_holds_traffic_and_its_heal_closes_the_connections_it_caught() {
        let proxy = Proxy::start(echo().await).await;
        let mut caught = TcpStream::connect(proxy.addr).await.unwrap();
        assert!(round_trip(&mut caught, Duration::from_secs(5))
            .await
            .is_some());
        proxy.blackhole();
        assert_eq!(
            round_trip(&mut caught, Duration::from_millis(300)).await,
            None,
            "nothing crosses a partition"
        );
        // Accepted, but it reaches upstream only after the heal.
        let mut during = TcpStream::connect(proxy.addr).await.unwrap();
        during.write_all(b"ping").await.unwrap();
        proxy.heal();
        assert!(closed(&mut caught, Duration::from_secs(5)).await);
        let mut buf = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(5), during.read_exact(&mut buf))
            .await
            .expect("answered after the heal")
            .unwrap();
        assert_eq!(&buf, b"ping");
        let mut after = TcpStream::connect(proxy.addr).await.unwrap();
        assert!(round_trip(&mut after, Duration::from_secs(5))
            .await
            .is_some());
    }

    #[tokio::test]
    async fn a_cut_drops_every_connection_until_restored() {
        let proxy = Proxy::start(echo().await).await;
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        assert!(round_trip(&mut s, Duration::from_secs(5)).await.is_some());
        proxy.cut();
        assert!(closed(&mut s, Duration::from_secs(5)).await);
        let mut refused = TcpStream::connect(proxy.addr).await.unwrap();
        assert!(closed(&mut refused, Duration::from_secs(5)).await);
        proxy.restore();
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        assert!(round_trip(&mut s, Duration::from_secs(5)).await.is_some());
    }
}
