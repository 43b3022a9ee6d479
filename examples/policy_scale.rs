//! Allowlist scale figures for docs/performance.md: for 10 to 1M synthetic rules, the load time
//! (parse + index), the resident memory the loaded policy adds, and the median decision time.
//! Prints one JSON object per size: `cargo run --release --example policy_scale`.

use std::hint::black_box;
use std::time::Instant;

#[path = "../benches/common/mod.rs"]
mod common;

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Median nanoseconds of `f` over batches of calls.
fn median_ns(mut f: impl FnMut()) -> f64 {
    const BATCH: u32 = 10_000;
    let mut samples: Vec<f64> = (0..51)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..BATCH {
                f();
            }
            t.elapsed().as_nanos() as f64 / f64::from(BATCH)
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn main() {
    for n in common::SIZES {
        let text = common::text(n);
        let before = rss_kib();
        let t = Instant::now();
        let policy = common::load(&text);
        let load_ms = t.elapsed().as_secs_f64() * 1e3;
        let policy_mib = rss_kib().saturating_sub(before) as f64 / 1024.0;
        let p = common::Probes::new(n);
        let exact = median_ns(|| {
            black_box(policy.decide_name(black_box(&p.exact), 443));
        });
        let wildcard = median_ns(|| {
            black_box(policy.decide_name(black_box(&p.wildcard), 443));
        });
        let miss = median_ns(|| {
            black_box(policy.decide_name(black_box(&p.miss), 443));
        });
        let ip = median_ns(|| {
            black_box(policy.decide_ip(black_box(p.ip_hit), 80));
        });
        let ip_miss = median_ns(|| {
            black_box(policy.decide_ip(black_box(p.ip_miss), 80));
        });
        println!(
            "{{\"rules\": {n}, \"load_ms\": {load_ms:.3}, \"policy_mib\": {policy_mib:.1}, \
             \"exact_ns\": {exact:.0}, \"wildcard_ns\": {wildcard:.0}, \"miss_ns\": {miss:.0}, \
             \"ip_ns\": {ip:.0}, \"ip_miss_ns\": {ip_miss:.0}}}"
        );
        drop(policy);
    }
}
