//! In-process cost of the delivery hot path, without sockets or Redis: decoding a pub/sub
//! payload, encoding the `message` frame once per format, and offering it to every member's
//! send queue (what a session pump does per message), then each writer's take.
//! `cargo bench -p roomcast-gateway --bench fanout`; numbers in BENCHMARKS.md.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use gateway::client::{ClientHandle, Outbox, SharedFrame};
use gateway::envelope::{encode_entry_tail, Envelope};
use roomcast_shared::{Format, From, Role, ServerFrame};
use serde_json::json;
use std::hint::black_box;

/// A pub/sub payload as publish.lua emits it: `[1, [seq, ts, from, data]]`.
fn payload(pad: usize) -> Vec<u8> {
    let from = From {
        client_id: "c0ffee0000000001".into(),
        user: "presenter".into(),
        role: Role::Controller,
        name: Some("Stage remote".into()),
    };
    let data = json!({"t": 1_763_800_000_000_000u64, "n": 42, "pad": "x".repeat(pad)});
    let tail = encode_entry_tail(1_763_800_000_000, &from, &data)
        .map(|t| t.bytes)
        .unwrap_or_default();
    let mut out = vec![0x92, 1, 0x96, 0xcd, 0x30, 0x39]; // seq 12345 as uint16
    out.extend(tail);
    // `prev`, as publish.lua appends it.
    out.extend([0xac]);
    out.extend(b"0123456789ab");
    out
}

fn frame_of(bytes: &[u8]) -> SharedFrame {
    match Envelope::decode(bytes) {
        Ok(Envelope::Message(e, _)) => SharedFrame::new(ServerFrame::Message {
            session: "bench".into(),
            seq: e.seq,
            id: e.id,
            ts: e.ts,
            from: e.from,
            data: e.data,
        }),
        other => panic!("payload does not decode: {other:?}"),
    }
}

fn encode(c: &mut Criterion) {
    let bytes = payload(64);
    let mut g = c.benchmark_group("encode");
    g.bench_function("decode_payload", |b| {
        b.iter(|| Envelope::decode(black_box(&bytes)))
    });
    for (name, format) in [("json", Format::Json), ("msgpack", Format::Msgpack)] {
        g.bench_function(BenchmarkId::new("message_frame", name), |b| {
            b.iter(|| frame_of(black_box(&bytes)).message(format))
        });
    }
    g.finish();
}

/// Clients with room for one frame each: every round is offered and then taken by the
/// writer's end, as a live writer keeps its queue near empty.
fn clients(n: usize) -> Vec<(ClientHandle, Outbox)> {
    (0..n)
        .map(|i| {
            let format = if i % 4 == 0 {
                Format::Msgpack
            } else {
                Format::Json
            };
            ClientHandle::new(format!("c{i}"), format!("u{i}"), format, 64)
        })
        .collect()
}

/// One message to every member: decode, encode once per format, offer to each queue,
/// then each writer's take (the queue round trip a delivery costs before the socket).
fn fanout(c: &mut Criterion) {
    let bytes = payload(64);
    let mut g = c.benchmark_group("fanout");
    for members in [10usize, 100, 1000] {
        let set = clients(members);
        g.throughput(Throughput::Elements(members as u64));
        g.bench_function(BenchmarkId::new("deliver", members), |b| {
            b.iter(|| {
                let frame = frame_of(black_box(&bytes));
                for (client, _) in &set {
                    if let Some(msg) = frame.message(client.format()) {
                        client.offer(msg);
                    }
                }
                for (_, rx) in &set {
                    black_box(rx.try_recv());
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, encode, fanout);
criterion_main!(benches);
