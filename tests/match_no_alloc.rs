//! Proves that `DomainMatcher::lookup` never touches the allocator.
// A global allocator wrapper is inherently `unsafe`; the library itself stays `unsafe`-free.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::hint::black_box;

use dnsward::lists::{DomainMatcherBuilder, RuleKind};

/// Counts per thread: the test harness's own threads allocate at will, and only the
/// thread doing lookups matters.
struct CountingAllocator;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count() {
    // `try_with` because allocations also happen while thread-locals are torn down.
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
}

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

#[test]
fn lookups_do_not_allocate() {
    let mut builder = DomainMatcherBuilder::new();
    for i in 0..10_000u32 {
        let kind = if i % 3 == 0 {
            RuleKind::Subdomains
        } else {
            RuleKind::Domain
        };
        builder
            .insert(&format!("host{i}.zone{}.example", i % 97), kind, i + 1)
            .unwrap();
    }
    let matcher = builder.build();
    let queries: Vec<String> = (0..1_000u32)
        .flat_map(|i| {
            [
                format!("host{i}.zone{}.example", i % 97),
                format!("a.b.c.d.e.host{i}.zone{}.example", i % 97),
                format!("miss{i}.zone{}.example", i % 97),
                format!("deep.miss.{i}.nowhere.org"),
            ]
        })
        .collect();

    // Sanity check that the queries exercise hits and misses both, outside the count.
    let hits = queries
        .iter()
        .filter(|q| matcher.lookup(q).is_some())
        .count();
    assert!(hits > 1_000 && hits < queries.len(), "{hits}");

    // The counter itself must see allocations, or a zero below would prove nothing.
    let probe_start = allocations();
    black_box(String::from("probe"));
    assert!(allocations() > probe_start);

    let before = allocations();
    for _ in 0..25 {
        for qname in &queries {
            black_box(matcher.lookup(black_box(qname)));
        }
    }
    let after = allocations();
    assert_eq!(
        after - before,
        0,
        "lookups allocated {} times",
        after - before
    );
}
