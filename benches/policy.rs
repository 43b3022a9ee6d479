//! Policy engine at scale: load (parse + index) and decision time for allowlists of 10 to 1M
//! rules. `cargo bench --bench policy`; `examples/policy_scale.rs` adds memory.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use std::hint::black_box;

mod common;

fn decisions(c: &mut Criterion) {
    let mut group = c.benchmark_group("decide");
    for n in common::SIZES {
        let policy = common::load(&common::text(n));
        let p = common::Probes::new(n);
        assert!(policy.decide_name(&p.exact, 443).is_allow());
        assert!(policy.decide_name(&p.wildcard, 443).is_allow());
        assert!(!policy.decide_name(&p.miss, 443).is_allow());
        assert!(policy.decide_ip(p.ip_hit, 80).is_allow());
        assert!(!policy.decide_ip(p.ip_miss, 80).is_allow());
        group.bench_with_input(BenchmarkId::new("exact_name", n), &n, |b, _| {
            b.iter(|| policy.decide_name(black_box(&p.exact), 443))
        });
        group.bench_with_input(BenchmarkId::new("wildcard_name", n), &n, |b, _| {
            b.iter(|| policy.decide_name(black_box(&p.wildcard), 443))
        });
        group.bench_with_input(BenchmarkId::new("name_miss", n), &n, |b, _| {
            b.iter(|| policy.decide_name(black_box(&p.miss), 443))
        });
        group.bench_with_input(BenchmarkId::new("ip_hit", n), &n, |b, _| {
            b.iter(|| policy.decide_ip(black_box(p.ip_hit), 80))
        });
        group.bench_with_input(BenchmarkId::new("ip_miss", n), &n, |b, _| {
            b.iter(|| policy.decide_ip(black_box(p.ip_miss), 80))
        });
    }
    group.finish();
}

fn loading(c: &mut Criterion) {
    let mut group = c.benchmark_group("load");
    group.sample_size(10);
    for n in common::SIZES {
        let text = common::text(n);
        group.bench_with_input(BenchmarkId::from_parameter(n), &text, |b, text| {
            b.iter(|| common::load(black_box(text)))
        });
    }
    group.finish();
}

criterion_group!(benches, decisions, loading);
criterion_main!(benches);
