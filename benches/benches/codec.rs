//! The hot encode/decode path: a request body becoming a validated job
//! (`JobRequest` → `into_job`), and a job crossing the broker (`Job::encode` /
//! `Job::decode`).
//!
//! `cargo bench -p surge-benches --bench codec`

#![forbid(unsafe_code)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde_json::json;
use surge_common::job::{Job, JobRequest};
use surge_common::kinds::builtin::BuiltinKind;
use surge_common::kinds::KindRegistry;

fn request_bodies() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        (
            "sleep",
            br#"{"kind":"sleep","payload":{"ms":1000}}"#.to_vec(),
        ),
        (
            "hash",
            br#"{"kind":"hash","payload":{"rounds":1000,"data":"surge"},"key":"tenant-42"}"#
                .to_vec(),
        ),
        (
            "echo-1KiB",
            serde_json::to_vec(&json!({"kind": "echo", "payload": {"text": "x".repeat(1024)}}))
                .expect("serialisable"),
        ),
    ]
}

fn decode_and_validate(c: &mut Criterion) {
    let mut group = c.benchmark_group("request→job");
    let kinds = KindRegistry::builtin();
    for (name, body) in request_bodies() {
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                let request: JobRequest =
                    serde_json::from_slice(black_box(&body)).expect("valid request");
                request.into_job(&kinds).expect("valid job")
            })
        });
    }
    group.finish();
}

fn encode_decode(c: &mut Criterion) {
    let mut job = Job::new(BuiltinKind::Sleep, json!({"ms": 1000}), None);
    job.traceparent = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned());
    let encoded = job.encode();
    let mut group = c.benchmark_group("job wire format");
    group.throughput(Throughput::Bytes(encoded.len() as u64));
    group.bench_function("encode", |b| b.iter(|| black_box(&job).encode()));
    group.bench_function("decode", |b| {
        b.iter(|| Job::decode(black_box(&encoded)).expect("valid job"))
    });
    group.finish();
}

criterion_group!(benches, decode_and_validate, encode_decode);
criterion_main!(benches);
