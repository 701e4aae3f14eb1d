//! The network edge: the HTTP accept loops, what a connection may hold before it has a
//! request, and the client's address.
//!
//! Owns how connections are accepted and served (hyper with its timer armed; `axum::serve`
//! does not arm it) and the defences of a socket that has not yet earned anything:
//! - a connection must complete a request head within `ROOMCAST_HEADER_TIMEOUT` of its
//!   accept (or of its previous response, when kept alive), or it is closed: a socket that
//!   never sends a byte holds a descriptor like any other;
//! - each address may hold at most `ROOMCAST_MAX_PENDING_PER_IP` connections that are not
//!   yet WebSockets (trusted proxies excepted), answered 429 beyond it;
//! - client listeners never accept past the descriptor budget (the open-files limit less
//!   a reserve), answering 503 instead, so the Redis pool, the subscriber and the ops
//!   listener (which has its own small share of the reserve) always find a descriptor
//!   and probes keep answering;
//! - accept errors (EMFILE and the like) back off exponentially and are logged at most
//!   every 10 s with a count, never in a tight loop.
//!
//! It also decides which address a request is counted against: the socket peer, or the
//! `X-Forwarded-For` client when the peer is a trusted proxy.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, Request};
use axum::Router;
use dashmap::DashMap;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;

use crate::metrics as m;

/// Largest request head (request line plus headers) accepted; more gets 431. hyper also
/// answers 431 to more than 100 header lines.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Descriptors held back from client connections: at least this many, or 2 % of the
/// open-files limit if that is more.
const FD_RESERVE_MIN: usize = 64;

/// Connections the ops listener holds at once, out of the reserve: probes and scrapes
/// are few and short.
pub(crate) const OPS_CONNECTIONS: usize = 16;

/// Canned answers written to a connection refused before hyper sees it. Best effort: one
/// non-blocking write, then the socket is closed.
const TOO_MANY_PENDING: &[u8] = b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
const OVER_CAPACITY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/// The connection rules of one listener.
#[derive(Debug, Clone)]
pub(crate) struct EdgeConfig {
    /// How long a connection may go without a request in progress.
    pub header_timeout: Duration,
    /// Connections one address may hold before they upgrade; 0: no cap.
    pub max_pending_per_ip: usize,
    /// Peers exempt from the per-address cap (load balancers).
    pub proxies: TrustedProxies,
}

/// Connections held by the whole process, against its descriptor budget. Shared by every
/// listener: a WebSocket keeps its slot until its socket closes.
#[derive(Debug)]
pub(crate) struct Capacity {
    open: AtomicUsize,
    budget: usize,
}

impl Capacity {
    /// A budget of the process's open-files limit less the reserve (no budget when the
    /// limit cannot be read).
    pub(crate) fn from_rlimit() -> Arc<Capacity> {
        let budget = open_files_limit()
            .map(|limit| limit.saturating_sub(FD_RESERVE_MIN.max(limit / 50)))
            .unwrap_or(usize::MAX);
        Arc::new(Capacity {
            open: AtomicUsize::new(0),
            budget,
        })
    }

    /// A fixed number of connections, apart from the process budget: the ops listener's
    /// share of the reserve.
    pub(crate) fn fixed(budget: usize) -> Arc<Capacity> {
        Arc::new(Capacity {
            open: AtomicUsize::new(0),
            budget,
        })
    }

    /// The connections this process accepts at most.
    pub(crate) fn budget(&self) -> usize {
        self.budget
    }

    /// Connections open now.
    #[cfg(test)]
    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// A slot for one more connection, unless the budget is spent.
    fn take(self: &Arc<Self>) -> Option<Slot> {
        let taken = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.budget).then_some(n + 1)
            })
            .is_ok();
        taken.then(|| Slot(self.clone()))
    }
}

/// One connection's hold on the budget, released when the socket is dropped.
#[derive(Debug)]
struct Slot(Arc<Capacity>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The soft open-files limit, from /proc (no unsafe `getrlimit` needed).
fn open_files_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    parse_open_files_limit(&limits)
}

fn parse_open_files_limit(limits: &str) -> Option<usize> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A TCP stream that holds a budget slot for as long as it lives (through an upgrade).
struct Counted {
    stream: TcpStream,
    _slot: Slot,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Connections per address that have not upgraded (or closed) yet.
#[derive(Debug, Default)]
struct Pending(DashMap<IpAddr, usize>);

impl Pending {
    /// Counts one more for `ip`, unless it already holds `cap`.
    fn enter(self: &Arc<Self>, ip: IpAddr, cap: usize) -> Option<PendingGuard> {
        let mut count = self.0.entry(ip).or_insert(0);
        if *count >= cap {
            return None;
        }
        *count += 1;
        Some(PendingGuard(self.clone(), ip))
    }
}

/// Releases a pending count when the connection's HTTP phase ends.
struct PendingGuard(Arc<Pending>, IpAddr);

impl Drop for PendingGuard {
    fn drop(&mut self) {
        if let Some(mut count) = self.0 .0.get_mut(&self.1) {
            *count = count.saturating_sub(1);
        }
        // Forget addresses with nothing pending, under the entry's lock.
        self.0 .0.remove_if(&self.1, |_, n| *n == 0);
    }
}

/// The key an address is capped under: IPv4 as is, IPv6 by its /64 (one subscriber holds
/// a whole /64, like the rate limits' keys).
fn cap_key(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & (u128::MAX << 64);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

/// Whether a connection has a request in progress, and since when it has been idle.
#[derive(Debug)]
struct Activity {
    started: Instant,
    busy: AtomicUsize,
    /// Milliseconds after `started` when the last request finished (0: accept).
    idle_since_ms: AtomicU64,
}

impl Activity {
    fn new() -> Arc<Self> {
        Arc::new(Activity {
            started: Instant::now(),
            busy: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
        })
    }

    fn begin(self: &Arc<Self>) -> RequestGuard {
        self.busy.fetch_add(1, Ordering::AcqRel);
        RequestGuard(self.clone())
    }

    /// When an idle connection must have started its next request.
    fn deadline(&self, timeout: Duration) -> Instant {
        self.started + Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire)) + timeout
    }

    /// Resolves when the connection has been idle for `timeout`.
    async fn idle_for(&self, timeout: Duration) {
        loop {
            tokio::time::sleep_until(self.deadline(timeout)).await;
            if self.busy.load(Ordering::Acquire) == 0 && Instant::now() >= self.deadline(timeout) {
                return;
            }
            if self.busy.load(Ordering::Acquire) > 0 {
                // A request is running; look again after another timeout at the latest.
                tokio::time::sleep(timeout).await;
            }
        }
    }
}

/// Marks the end of a request (also when its future is dropped).
struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let a = &self.0;
        a.idle_since_ms
            .store(a.started.elapsed().as_millis() as u64, Ordering::Release);
        a.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Exponential backoff and a rate-limited log for accept errors.
#[derive(Debug, Default)]
struct AcceptErrors {
    consecutive: u32,
    suppressed: u64,
    last_log: Option<std::time::Instant>,
}

/// At most one accept-error log line per this interval.
const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(10);

impl AcceptErrors {
    /// Records an error: how long to back off, and whether to log now (with how many
    /// errors were not logged since the last line).
    fn failed(&mut self, now: std::time::Instant) -> (Duration, Option<u64>) {
        self.consecutive = self.consecutive.saturating_add(1);
        let delay = Duration::from_millis(10)
            .saturating_mul(1 << self.consecutive.min(8).saturating_sub(1))
            .min(Duration::from_secs(1));
        if self
            .last_log
            .is_none_or(|t| now.duration_since(t) >= ACCEPT_LOG_EVERY)
        {
            self.last_log = Some(now);
            let skipped = std::mem::take(&mut self.suppressed);
            (delay, Some(skipped))
        } else {
            self.suppressed += 1;
            (delay, None)
        }
    }

    fn succeeded(&mut self) {
        self.consecutive = 0;
    }
}

/// Serves `router` on `listener` until `stop` fires, then lets in-flight requests finish
/// (upgraded WebSockets are tracked elsewhere). Returns the tracker of HTTP connections.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    edge: EdgeConfig,
    capacity: Arc<Capacity>,
    stop: CancellationToken,
) -> TaskTracker {
    let connections = TaskTracker::new();
    // HTTP/1.1 only. Cleartext HTTP/2 (h2c) would multiplex up to hundreds of streams,
    // each with a body in flight, over one connection the per-address and header rules
    // here count once; nothing a client of this API needs (WebSockets and REST are both
    // HTTP/1.1), so a prior-knowledge h2 preface is refused like any malformed request.
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(edge.header_timeout)
        .max_header_size(MAX_HEAD_BYTES)
        .max_buf_size(MAX_HEAD_BYTES);
    let pending = Arc::new(Pending::default());
    let mut errors = AcceptErrors::default();
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => {
                    errors.succeeded();
                    accepted
                }
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning, and
                    // say so without flooding the log.
                    m::accept_error();
                    let (delay, log) = errors.failed(std::time::Instant::now());
                    if let Some(skipped) = log {
                        tracing::warn!(error = %e, not_logged_since_last = skipped, backoff_ms = delay.as_millis() as u64, "accept failed");
                    }
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    continue;
                }
            },
        };
        let Some(slot) = capacity.take() else {
            m::connection_refused("capacity");
            let _ = stream.try_write(OVER_CAPACITY);
            continue;
        };
        let guard = if edge.max_pending_per_ip == 0 || edge.proxies.trusts(canonical(peer.ip())) {
            None
        } else {
            match pending.enter(cap_key(peer.ip()), edge.max_pending_per_ip) {
                Some(guard) => Some(guard),
                None => {
                    m::connection_refused("per_ip");
                    let _ = stream.try_write(TOO_MANY_PENDING);
                    continue;
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let activity = Activity::new();
        let router = router.clone();
        let requests = activity.clone();
        let service = tower_service_fn(move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            let mut router = router.clone();
            let request = requests.begin();
            async move {
                let response = router.call(req).await;
                drop(request);
                response
            }
        });
        let builder = builder.clone();
        let stop = stop.clone();
        let timeout = edge.header_timeout;
        let io = Counted {
            stream,
            _slot: slot,
        };
        connections.spawn(async move {
            // Held until the HTTP phase ends: closed, or handed over as a WebSocket.
            let _pending = guard;
            let conn = builder
                .serve_connection(TokioIo::new(io), TowerToHyperService::new(service))
                .with_upgrades();
            tokio::pin!(conn);
            let result = tokio::select! {
                result = conn.as_mut() => result,
                _ = activity.idle_for(timeout) => {
                    m::connection_refused("header_timeout");
                    tracing::debug!(peer = %peer, "no request in time; closing");
                    return;
                }
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                // hyper's own head timer (armed at the first byte) may fire before ours.
                if e.is_timeout() {
                    m::connection_refused("header_timeout");
                }
                tracing::debug!(error = %e, peer = %peer, "connection ended with an error");
            }
        });
    }
    connections.close();
    connections
}

/// A `tower::Service` from a closure (kept local to avoid pulling in tower's util).
fn tower_service_fn<F, Fut>(f: F) -> ServiceFn<F>
where
    F: FnMut(Request<Incoming>) -> Fut,
    Fut: std::future::Future<Output = Result<axum::response::Response, Infallible>>,
{
    ServiceFn(f)
}

#[derive(Clone)]
struct ServiceFn<F>(F);

impl<F, Fut> Service<Request<Incoming>> for ServiceFn<F>
where
    F: FnMut(Request<Incoming>) -> Fut,
    Fut: std::future::Future<Output = Result<axum::response::Response, Infallible>>,
{
    type Response = axum::response::Response;
    type Error = Infallible;
    type Future = Fut;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Fut {
        (self.0)(req)
    }
}

/// An address block: an IP with a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    fn parse(s: &str) -> Result<Cidr, String> {
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, p)) => (ip, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = ip
            .trim()
            .parse()
            .map_err(|_| format!("`{s}` is not an IP or CIDR"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{s}` has a bad prefix length"))?,
            None => max,
        };
        Ok(Cidr { addr, prefix })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// IPv4-mapped IPv6 addresses count as the IPv4 address they carry.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// The configured trusted proxies (`ROOMCAST_TRUSTED_PROXIES`).
#[derive(Debug, Clone, Default)]
pub(crate) struct TrustedProxies(Vec<Cidr>);

impl TrustedProxies {
    pub(crate) fn parse(list: &[String]) -> Result<Self, String> {
        list.iter()
            .map(|s| Cidr::parse(s))
            .collect::<Result<_, _>>()
            .map(TrustedProxies)
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }

    /// The client's address: the peer, unless the peer is a trusted proxy; then the
    /// right-most `X-Forwarded-For` entry that is not itself a trusted proxy (entries to
    /// its left could be forged by the client).
    pub(crate) fn client_ip(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical(peer.ip());
        if !self.trusts(peer) {
            return peer;
        }
        let forwarded = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect::<Vec<_>>();
        for hop in forwarded.iter().rev() {
            match hop.parse::<IpAddr>() {
                Ok(ip) if self.trusts(ip) => continue,
                Ok(ip) => return canonical(ip),
                // A garbled hop: stop trusting the chain there.
                Err(_) => return peer,
            }
        }
        peer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", xff.parse().unwrap());
        h
    }

    fn peer(ip: &str) -> SocketAddr {
        SocketAddr::new(ip.parse().unwrap(), 443)
    }

    #[test]
    fn open_files_limit_is_read_from_proc() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max cpu time              unlimited            unlimited            seconds\n\
                      Max open files            20000                20000                files\n";
        assert_eq!(parse_open_files_limit(limits), Some(20000));
        assert_eq!(parse_open_files_limit("nothing here"), None);
        assert!(open_files_limit().is_some(), "this is Linux");
    }

    #[test]
    fn the_budget_holds_back_a_reserve_and_slots_are_returned() {
        let capacity = Arc::new(Capacity {
            open: AtomicUsize::new(0),
            budget: 2,
        });
        let a = capacity.take().expect("first");
        let _b = capacity.take().expect("second");
        assert!(capacity.take().is_none(), "over budget");
        drop(a);
        assert_eq!(capacity.open(), 1);
        assert!(capacity.take().is_some());
    }

    #[test]
    fn pending_connections_are_capped_per_address_and_v6_by_its_64() {
        let pending = Arc::new(Pending::default());
        let ip: IpAddr = "203.0.113.9".parse().unwrap();
        let first = pending.enter(cap_key(ip), 2).expect("1");
        let _second = pending.enter(cap_key(ip), 2).expect("2");
        assert!(pending.enter(cap_key(ip), 2).is_none());
        drop(first);
        assert!(pending.enter(cap_key(ip), 2).is_some());
        let a = cap_key("2001:db8:1:2::1".parse().unwrap());
        let b = cap_key("2001:db8:1:2:ffff::9".parse().unwrap());
        assert_eq!(a, b);
        assert_eq!(
            cap_key("::ffff:10.0.0.1".parse().unwrap()),
            cap_key("10.0.0.1".parse().unwrap())
        );
        drop(pending.enter(a, 1));
        assert!(
            pending.0.get(&a).is_none(),
            "an address with nothing pending is forgotten"
        );
    }

    #[test]
    fn accept_errors_back_off_and_log_at_most_every_ten_seconds() {
        let mut errors = AcceptErrors::default();
        let t0 = std::time::Instant::now();
        let (d1, log1) = errors.failed(t0);
        assert_eq!((d1, log1), (Duration::from_millis(10), Some(0)));
        let mut last = d1;
        for i in 1..1000 {
            let (d, log) = errors.failed(t0 + Duration::from_millis(i));
            assert!(d >= last && d <= Duration::from_secs(1));
            assert_eq!(log, None, "error {i} is counted, not logged");
            last = d;
        }
        assert_eq!(last, Duration::from_secs(1));
        let (_, log) = errors.failed(t0 + Duration::from_secs(10));
        assert_eq!(log, Some(999));
        errors.succeeded();
        assert_eq!(
            errors.failed(t0 + Duration::from_secs(11)).0,
            Duration::from_millis(10)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_times_out_from_accept_and_after_each_request() {
        let timeout = Duration::from_secs(3);
        let activity = Activity::new();
        let started = Instant::now();
        activity.idle_for(timeout).await;
        assert_eq!(started.elapsed(), timeout, "silent from accept");
        // A request in progress is never idle, however long it takes.
        let request = activity.begin();
        let waiting = tokio::spawn({
            let activity = activity.clone();
            async move { activity.idle_for(timeout).await }
        });
        tokio::time::sleep(timeout * 4).await;
        assert!(!waiting.is_finished());
        let ended = Instant::now();
        drop(request);
        waiting.await.unwrap();
        assert!(ended.elapsed() >= timeout && ended.elapsed() <= timeout * 2);
    }

    #[test]
    fn cidrs() {
        let net = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(net.contains("10.1.200.3".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.0.9".parse().unwrap()));
        assert!(Cidr::parse("fd00::/8")
            .unwrap()
            .contains("fd12::1".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        for bad in ["10.0.0.0/33", "banana", "10.0.0.0/x", "::/129"] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn forwarded_for_only_through_trusted_proxies() {
        let trusted = TrustedProxies::parse(&["10.0.0.0/8".into(), "127.0.0.1".into()]).unwrap();
        let h = headers("198.51.100.7, 203.0.113.9, 10.0.0.2");
        // Trusted peer: the right-most untrusted hop.
        assert_eq!(
            trusted.client_ip(peer("10.0.0.1"), &h),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        // Untrusted peer: the header is ignored.
        assert_eq!(
            trusted.client_ip(peer("192.0.2.1"), &h),
            "192.0.2.1".parse::<IpAddr>().unwrap()
        );
        // No header, or a garbled one: the peer.
        assert_eq!(
            trusted.client_ip(peer("10.0.0.1"), &HeaderMap::new()),
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            trusted.client_ip(peer("10.0.0.1"), &headers("nonsense")),
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
        // Nothing trusted at all: always the peer.
        let none = TrustedProxies::default();
        assert_eq!(
            none.client_ip(peer("10.0.0.1"), &h),
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
    }
}
