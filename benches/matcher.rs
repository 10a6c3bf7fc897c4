//! Benchmarks of the list module: lookup latency at 10k/100k/1M rules, 1M-line load time,
//! and bytes per rule.

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use dnsward::lists::{DomainMatcher, DomainMatcherBuilder, OnInvalid, RuleKind, load_str};

/// Deterministic xorshift, so runs compare and no rand dependency is needed.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

const TLDS: [&str; 8] = ["com", "net", "org", "io", "info", "de", "ru", "xyz"];

/// Names of 2 to 4 labels, like real block lists, about 20 bytes on average.
fn rule_names(count: usize) -> Vec<String> {
    let mut noise = Noise(0x9e37_79b9_7f4a_7c15);
    (0..count)
        .map(|i| {
            let r = noise.next();
            let tld = TLDS[(r % 8) as usize];
            match (r >> 8) % 4 {
                0 | 1 => format!("site{i:x}{}.{tld}", r >> 40),
                2 => format!("ads.site{i:x}.{tld}"),
                _ => format!("t{}.cdn{i:x}.track.{tld}", (r >> 20) % 10),
            }
        })
        .collect()
}

fn build(names: &[String]) -> DomainMatcher {
    let mut builder = DomainMatcherBuilder::with_capacity(names.len());
    for (line, name) in names.iter().enumerate() {
        builder
            .insert(name, RuleKind::Domain, line as u32 + 1)
            .expect("generated names fit the matcher");
    }
    builder.build()
}

const QUERIES: usize = 4096;

fn lookups(c: &mut Criterion) {
    let mut group = c.benchmark_group("lookup");
    for size in [10_000, 100_000, 1_000_000] {
        let names = rule_names(size);
        let matcher = build(&names);
        println!(
            "rules={size} distinct={} heap_bytes={} bytes_per_rule={:.1}",
            matcher.len(),
            matcher.heap_bytes(),
            matcher.heap_bytes() as f64 / matcher.len() as f64
        );
        let mut noise = Noise(42);
        let mut pick = || &names[(noise.next() % size as u64) as usize];
        let exact: Vec<String> = (0..QUERIES).map(|_| pick().clone()).collect();
        let deep: Vec<String> = (0..QUERIES)
            .map(|_| format!("a.b.c.d.e.{}", pick()))
            .collect();
        let miss: Vec<String> = (0..QUERIES)
            .map(|i| format!("www.unlisted{i}.example.{}", TLDS[i % 8]))
            .collect();
        assert!(exact.iter().all(|q| matcher.lookup(q).is_some()));
        assert!(deep.iter().all(|q| matcher.lookup(q).is_some()));
        assert!(miss.iter().all(|q| matcher.lookup(q).is_none()));

        for (case, queries) in [("hit_exact", &exact), ("hit_deep5", &deep), ("miss", &miss)] {
            group.bench_with_input(BenchmarkId::new(case, size), queries, |b, queries| {
                let mut i = 0;
                b.iter(|| {
                    i = (i + 1) % QUERIES;
                    black_box(matcher.lookup(black_box(&queries[i])))
                });
            });
        }
    }
    group.finish();
}

fn load(c: &mut Criterion) {
    let mut text = String::with_capacity(24 << 20);
    for name in rule_names(1_000_000) {
        text.push_str(&name);
        text.push('\n');
    }
    let mut group = c.benchmark_group("load");
    group.sample_size(10);
    group.bench_function("load_str_1M_plain", |b| {
        b.iter(|| {
            load_str(Path::new("bench.txt"), black_box(&text), OnInvalid::Fail)
                .expect("generated list is valid")
        });
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
}

criterion_group! {
    name = benches;
    config = config();
    targets = lookups, load
}
criterion_main!(benches);
