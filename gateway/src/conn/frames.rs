//! Counts every WebSocket frame a client sends, below tungstenite.
//!
//! Owns the per-connection frame budget (`ROOMCAST_RATE_FRAMES`) and the bound on how many
//! frames one message may be split into ([`MAX_FRAGMENTS`]). tungstenite hands the
//! connection whole messages only: the control frames it answers itself and the
//! continuation frames it assembles never reach the read loop, so a client sending
//! millions of empty continuation frames (or pings) would cost a core without ever being
//! counted. [`FrameGuard`] sits between the socket and tungstenite and reads the frame
//! headers as the bytes go by (never the payloads, which it skips), so every frame counts.
//! On a violation it closes the client with its code (the read loop sees the kill, the
//! writer sends the close frame) and from then on reads and drops the client's input, so
//! tungstenite sees nothing more and the socket is never closed with unread input (the
//! kernel would reset it, which can destroy the close frame before the client reads it).
//! It must not change a byte it passes: tungstenite parses the same stream after it.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use roomcast_shared::CloseCode;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::client::ClientHandle;
use crate::metrics as m;
use crate::ratelimit::TokenBucket;

/// Most frames one message may arrive in (its first frame and its continuations).
pub(crate) const MAX_FRAGMENTS: u32 = 128;

/// Why a client's frames were refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FrameViolation {
    /// More frames than the per-connection budget allows (close 4029).
    #[error("more WebSocket frames than the connection's budget allows")]
    Flood,
    /// A message split into more than [`MAX_FRAGMENTS`] frames (close 1008).
    #[error("a message split into more than {MAX_FRAGMENTS} frames")]
    Fragments,
}

impl FrameViolation {
    /// The code the client is closed with.
    pub(crate) fn close_code(self) -> CloseCode {
        match self {
            FrameViolation::Flood => CloseCode::RateLimited,
            FrameViolation::Fragments => CloseCode::Policy,
        }
    }
}

/// The frame-header reader: where the byte stream is (in a header, or skipping a
/// payload) and what the frames so far have used.
pub(crate) struct FrameCounter {
    header: [u8; 14],
    have: usize,
    /// Payload bytes still to skip before the next header.
    skip: u64,
    /// Frames of the data message being assembled (0 between messages).
    fragments: u32,
    budget: Option<TokenBucket>,
    failed: Option<FrameViolation>,
}

impl FrameCounter {
    pub(crate) fn new(budget: Option<TokenBucket>) -> Self {
        FrameCounter {
            header: [0; 14],
            have: 0,
            skip: 0,
            fragments: 0,
            budget,
            failed: None,
        }
    }

    /// Reads the frame headers in `bytes`, the next bytes of the stream.
    pub(crate) fn feed(&mut self, mut bytes: &[u8], now: Instant) -> Result<(), FrameViolation> {
        if let Some(v) = self.failed {
            return Err(v);
        }
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = usize::try_from(self.skip)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len());
                self.skip -= n as u64;
                bytes = &bytes[n..];
                continue;
            }
            let want = header_len(&self.header[..self.have]);
            let n = (want - self.have).min(bytes.len());
            self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            // The length is known once the first two bytes are in; it may grow then.
            if self.have < header_len(&self.header[..self.have]) {
                continue;
            }
            if let Err(v) = self.frame(now) {
                self.failed = Some(v);
                return Err(v);
            }
        }
        Ok(())
    }

    /// A whole header is in: count the frame, then skip its payload.
    fn frame(&mut self, now: Instant) -> Result<(), FrameViolation> {
        let h = &self.header[..self.have];
        let fin = h[0] & 0x80 != 0;
        let opcode = h[0] & 0x0f;
        let len = match h[1] & 0x7f {
            126 => u64::from(u16::from_be_bytes([h[2], h[3]])),
            127 => u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]]),
            n => u64::from(n),
        };
        self.have = 0;
        self.skip = len;
        if let Some(budget) = &mut self.budget {
            budget.take(now).map_err(|_| FrameViolation::Flood)?;
        }
        match opcode {
            // Continuation.
            0 => {
                self.fragments += 1;
                if self.fragments > MAX_FRAGMENTS {
                    return Err(FrameViolation::Fragments);
                }
            }
            // Text or binary: a message starts.
            1 | 2 => self.fragments = 1,
            // Control frames may come between fragments and change nothing.
            _ => {}
        }
        if fin && opcode < 8 {
            self.fragments = 0;
        }
        Ok(())
    }
}

/// The length of the header that starts with `head` (2 until its second byte is known).
fn header_len(head: &[u8]) -> usize {
    let Some(&second) = head.get(1) else {
        return 2;
    };
    let extended = match second & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if second & 0x80 != 0 { 4 } else { 0 };
    2 + extended + mask
}

/// An upgraded connection whose incoming frames are counted (see the module docs).
pub(crate) struct FrameGuard<IO> {
    io: IO,
    counter: FrameCounter,
    /// Closed with the violation's code when one happens.
    client: ClientHandle,
    /// A violation happened: input is read and dropped from now on.
    draining: bool,
}

impl<IO> FrameGuard<IO> {
    pub(crate) fn new(io: IO, budget: Option<TokenBucket>, client: ClientHandle) -> Self {
        FrameGuard {
            io,
            counter: FrameCounter::new(budget),
            client,
            draining: false,
        }
    }
}

/// Reads dropped per poll while draining before yielding to other tasks.
const DRAIN_READS_PER_POLL: usize = 16;

impl<IO: AsyncRead + Unpin> AsyncRead for FrameGuard<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.draining {
            return this.drain(cx);
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let fresh = &buf.filled()[before..];
                match this.counter.feed(fresh, Instant::now()) {
                    Ok(()) => Poll::Ready(Ok(())),
                    Err(v) => {
                        // Nothing of this read reaches tungstenite: the connection ends.
                        buf.set_filled(before);
                        if v == FrameViolation::Flood {
                            m::rate_limited("frames");
                        }
                        tracing::debug!(violation = %v, "closing the connection");
                        this.client.kill(v.close_code());
                        this.draining = true;
                        this.drain(cx)
                    }
                }
            }
            other => other,
        }
    }
}

impl<IO: AsyncRead + Unpin> FrameGuard<IO> {
    /// Reads and drops input until none is waiting (then waits), or the end of the stream
    /// (then reports it).
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut scratch = [0u8; 2048];
        for _ in 0..DRAIN_READS_PER_POLL {
            let mut dropped = ReadBuf::new(&mut scratch);
            match Pin::new(&mut self.io).poll_read(cx, &mut dropped) {
                Poll::Ready(Ok(())) if dropped.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => continue,
                other => return other,
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for FrameGuard<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use super::*;
    use crate::config::Rate;

    /// A client frame: FIN flag, opcode, masked payload of `len` bytes.
    fn frame(fin: bool, opcode: u8, len: usize) -> Vec<u8> {
        let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
        match len {
            0..=125 => out.push(0x80 | len as u8),
            126..=65535 => {
                out.push(0x80 | 126);
                out.extend((len as u16).to_be_bytes());
            }
            _ => {
                out.push(0x80 | 127);
                out.extend((len as u64).to_be_bytes());
            }
        }
        out.extend([1, 2, 3, 4]);
        out.extend(std::iter::repeat_n(b'x', len));
        out
    }

    fn budget(count: u32) -> Option<TokenBucket> {
        TokenBucket::new(Rate {
            count,
            window: Duration::from_secs(1),
        })
    }

    /// Counts frames through a counter, fed in pieces of `chunk` bytes.
    fn feed(counter: &mut FrameCounter, bytes: &[u8], chunk: usize) -> Result<(), FrameViolation> {
        let now = Instant::now();
        bytes.chunks(chunk).try_for_each(|c| counter.feed(c, now))
    }

    #[test]
    fn every_frame_counts_whatever_its_kind_or_how_the_bytes_arrive() {
        let mut stream = Vec::new();
        stream.extend(frame(true, 1, 5)); // text
        stream.extend(frame(true, 9, 0)); // ping
        stream.extend(frame(false, 1, 300)); // fragmented text: 3 frames
        stream.extend(frame(false, 0, 0));
        stream.extend(frame(true, 0, 70_000));
        stream.extend(frame(true, 10, 3)); // pong
        for chunk in [1, 2, 7, 1000, usize::MAX] {
            let mut exact = FrameCounter::new(budget(6));
            assert_eq!(feed(&mut exact, &stream, chunk), Ok(()), "chunk {chunk}");
            let mut short = FrameCounter::new(budget(5));
            assert_eq!(
                feed(&mut short, &stream, chunk),
                Err(FrameViolation::Flood),
                "the 6th frame is one too many (chunk {chunk})"
            );
        }
    }

    #[test]
    fn empty_continuations_count_and_a_message_has_at_most_max_fragments() {
        let mut stream = frame(false, 1, 1);
        for _ in 1..MAX_FRAGMENTS - 1 {
            stream.extend(frame(false, 0, 0));
        }
        stream.extend(frame(true, 0, 0));
        // Control frames between fragments are counted but are not fragments.
        stream.extend(frame(false, 2, 1));
        stream.extend(frame(true, 9, 0));
        let mut ok = FrameCounter::new(None);
        assert_eq!(
            feed(&mut ok, &stream, 3),
            Ok(()),
            "{MAX_FRAGMENTS} frames are fine"
        );
        let mut over = FrameCounter::new(None);
        let mut stream = frame(false, 1, 1);
        for _ in 0..MAX_FRAGMENTS {
            stream.extend(frame(false, 0, 0));
        }
        assert_eq!(feed(&mut over, &stream, 3), Err(FrameViolation::Fragments));
        // Once refused, always refused: the stream is not parsed past the violation.
        assert_eq!(
            over.feed(&frame(true, 1, 1), Instant::now()),
            Err(FrameViolation::Fragments)
        );
    }

    #[tokio::test]
    async fn the_guard_passes_bytes_through_and_closes_the_client_on_a_violation() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut peer, server) = tokio::io::duplex(1 << 16);
        let (handle, _outbox) =
            ClientHandle::new("c".into(), "u".into(), roomcast_shared::Format::Json, 8);
        let mut guard = FrameGuard::new(server, budget(2), handle.clone());
        let two = [frame(true, 1, 3), frame(true, 2, 2)].concat();
        peer.write_all(&two).await.unwrap();
        let mut got = vec![0; two.len()];
        guard.read_exact(&mut got).await.unwrap();
        assert_eq!(got, two, "bytes unchanged");
        assert!(!handle.killed().is_cancelled());
        // The third frame is one too many: the client is closed 4029, and what follows
        // is dropped, not handed on, until the peer closes.
        peer.write_all(&frame(true, 9, 0)).await.unwrap();
        peer.write_all(&two).await.unwrap();
        drop(peer);
        assert_eq!(
            guard.read(&mut got).await.unwrap(),
            0,
            "nothing, then the end"
        );
        assert!(handle.killed().is_cancelled());
        assert_eq!(handle.close_code(), CloseCode::RateLimited);
    }
}
