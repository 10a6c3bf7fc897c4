//! Audit log benchmarks: writer throughput (records/s through the real writer thread), and
//! search/summary over a generated log (1M records by default; set `AUDIT_BENCH_RECORDS` for
//! the 10M run). The generated log is kept under `$CARGO_TARGET_TMPDIR/audit-bench-<n>` between
//! runs.

use std::{
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant, SystemTime},
};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use dnsward::{
    audit::{
        self, AuditLog, AuditSettings, Filter, InstanceId, TimeRange,
        query::{ClientFilter, DomainFilter},
    },
    policy::decision::DecisionRecord,
};
use hickory_proto::rr::RecordType;

#[path = "../tests/audit_common/mod.rs"]
mod audit_common;
use audit_common::BASE_SECS;

/// Query `i` of `n`, spread over one hour: 1000 clients, 10,000 names, every tenth a blocked
/// `www.binance.com.`.
fn decision(i: u64, n: u64) -> DecisionRecord {
    let micros = i * 3_600_000_000 / n.max(1);
    audit_common::query_record(
        SystemTime::UNIX_EPOCH + Duration::from_secs(BASE_SECS) + Duration::from_micros(micros),
        SocketAddr::from(([10, 0, (i / 7 % 4) as u8, (i % 250) as u8], 40000)),
        "udp",
        &format!("host{}.example{}.org.", i % 100, i % 97),
        RecordType::A,
        i.is_multiple_of(10),
        250,
    )
}

/// Writes `records` through the real writer; returns the elapsed time.
fn write(dir: PathBuf, records: &[DecisionRecord]) -> Duration {
    let settings = AuditSettings {
        dir,
        queue_capacity: records.len(),
        ..AuditSettings::default()
    };
    let start = Instant::now();
    let (handle, writer) = AuditLog::open(&settings, InstanceId::random()).expect("open");
    for record in records {
        handle.record(record.clone());
    }
    writer.shutdown().expect("shutdown");
    assert_eq!(handle.dropped(), 0);
    start.elapsed()
}

fn writer_throughput(c: &mut Criterion) {
    const N: u64 = 200_000;
    let records: Vec<DecisionRecord> = (0..N).map(|i| decision(i, N)).collect();
    let mut group = c.benchmark_group("audit_writer");
    group.sample_size(10);
    group.throughput(Throughput::Elements(N));
    group.bench_function("write_200k", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let tmp = tempfile::tempdir().expect("tempdir");
                total += write(tmp.path().to_owned(), &records);
            }
            total
        });
    });
    group.finish();
}

/// The generated log (written once, reused by later runs).
fn generated_log(n: u64) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("audit-bench-{n}"));
    let done = dir.join("complete");
    if !done.exists() {
        let _ = std::fs::remove_dir_all(&dir);
        let settings = AuditSettings {
            dir: dir.clone(),
            queue_capacity: 1 << 16,
            ..AuditSettings::default()
        };
        let start = Instant::now();
        let (handle, writer) = AuditLog::open(&settings, InstanceId::random()).expect("open");
        for i in 0..n {
            // Generation must not drop: wait while the queue is full.
            assert!(handle.record_wait(decision(i, n)));
        }
        writer.shutdown().expect("shutdown");
        eprintln!("generated {n} records in {:?}", start.elapsed());
        std::fs::write(&done, b"").expect("marker");
    }
    dir
}

fn search_and_summary(c: &mut Criterion) {
    let n: u64 = std::env::var("AUDIT_BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = generated_log(n);
    let mut group = c.benchmark_group(format!("audit_query_{n}"));
    group.sample_size(10);
    group.throughput(Throughput::Elements(n));
    let domain_client = Filter {
        domain: Some(DomainFilter::parse("binance.com").unwrap()),
        client: Some(ClientFilter::parse("10.0.0.0/24").expect("cidr")),
        ..Filter::default()
    };
    group.bench_function("search_domain_client", |b| {
        b.iter(|| audit::search(&dir, &domain_client).expect("search").count());
    });
    let rare = Filter {
        domain: Some(DomainFilter::parse("=host1.example1.org").unwrap()),
        ..Filter::default()
    };
    group.bench_function("search_rare_name", |b| {
        b.iter(|| audit::search(&dir, &rare).expect("search").count());
    });
    group.bench_function("summary_all", |b| {
        b.iter(|| audit::summary(&dir, &TimeRange::default()).expect("summary"));
    });
    let ten_minutes = TimeRange {
        from: Some(audit::Timestamp::from_micros(
            (BASE_SECS as i64 + 1800) * 1_000_000,
        )),
        to: Some(audit::Timestamp::from_micros(
            (BASE_SECS as i64 + 2400) * 1_000_000,
        )),
    };
    group.bench_function("summary_10min_window", |b| {
        b.iter(|| audit::summary(&dir, &ten_minutes).expect("summary"));
    });
    group.finish();
}

/// One query record line as the writer thread makes it: members by hand, chain hash, hex.
fn record_encoding(c: &mut Criterion) {
    let records: Vec<DecisionRecord> = (0..1000).map(|i| decision(i, 1000)).collect();
    let mut group = c.benchmark_group("audit_encoding");
    group.throughput(Throughput::Elements(1));
    let mut buf = Vec::with_capacity(1 << 20);
    let mut head = [0u8; 32];
    let mut index = 0;
    group.bench_function("query_line", |b| {
        b.iter(|| {
            if buf.len() > (1 << 20) - 4096 {
                buf.clear();
            }
            let record = &records[index % records.len()];
            index += 1;
            head = audit::segment::encode_line(
                &mut buf,
                index as u64,
                &head,
                audit::Timestamp::from_system_time(record.time),
                "f7df2c10dcc75c4b",
                |out| {
                    audit::record::write_query_members(out, record, "10.0.0.1:40000");
                    Ok(())
                },
            )
            .expect("encode");
        });
    });
    group.finish();
}

criterion_group!(
    benches,
    record_encoding,
    writer_throughput,
    search_and_summary
);
criterion_main!(benches);
