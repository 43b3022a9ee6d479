//! The `process_*` metrics every Prometheus exporter serves (CPU seconds, resident and virtual
//! memory, open and maximum descriptors, start time), read from `/proc/self` at each scrape, so
//! a dashboard can watch the warden itself with the queries it uses for any other exporter.

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// What `/proc/self` says about the warden.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    pub cpu_seconds: f64,
    pub resident_bytes: i64,
    pub virtual_bytes: i64,
    pub open_fds: i64,
    pub max_fds: i64,
    pub start_time_seconds: f64,
}

/// Reads [`Usage`]; `None` where `/proc` is not mounted (the metrics are then left out).
pub fn usage() -> Option<Usage> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let boot = std::fs::read_to_string("/proc/stat").ok()?;
    let btime = boot
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse::<u64>()
        .ok()?;
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|t| *t > 0)? as f64;
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .filter(|p| *p > 0)?;
    let fields = parse_stat(&stat)?;
    let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as i64;
    let max_fds = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(soft, _)| i64::try_from(soft).unwrap_or(i64::MAX))
        .ok()?;
    Some(Usage {
        cpu_seconds: (fields.utime + fields.stime) as f64 / ticks,
        resident_bytes: fields.rss_pages.saturating_mul(page),
        virtual_bytes: i64::try_from(fields.vsize).unwrap_or(i64::MAX),
        open_fds,
        max_fds,
        start_time_seconds: btime as f64 + fields.starttime as f64 / ticks,
    })
}

/// The fields of `/proc/self/stat` used here.
#[derive(Debug, PartialEq, Eq)]
struct StatFields {
    utime: u64,
    stime: u64,
    starttime: u64,
    vsize: u64,
    rss_pages: i64,
}

/// Parses `/proc/PID/stat`: fields after the command name, which is in parentheses and may
/// itself hold spaces and parentheses (so the last `)` ends it).
fn parse_stat(text: &str) -> Option<StatFields> {
    let rest = &text[text.rfind(')')? + 1..];
    // After the name: field 3 (state) is index 0 here.
    let f: Vec<&str> = rest.split_whitespace().collect();
    let at = |n: usize| f.get(n - 3).copied();
    Some(StatFields {
        utime: at(14)?.parse().ok()?,
        stime: at(15)?.parse().ok()?,
        starttime: at(22)?.parse().ok()?,
        vsize: at(23)?.parse().ok()?,
        rss_pages: at(24)?.parse().ok()?,
    })
}

/// Encodes [`usage`] at each scrape.
#[derive(Debug, Default)]
pub struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let Some(u) = usage() else {
            return Ok(());
        };
        let cpu = ConstCounter::new(u.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            cpu.metric_type(),
        )?)?;
        let gauges: [(&str, &str, f64); 5] = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                u.resident_bytes as f64,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                u.virtual_bytes as f64,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                u.open_fds as f64,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors",
                u.max_fds as f64,
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch in seconds",
                u.start_time_seconds,
            ),
        ];
        for (name, help, value) in gauges {
            let g = ConstGauge::new(value);
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_survive_a_command_name_with_spaces_and_parentheses() {
        let line = "4242 (egress (war) den) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    250 50 0 0 20 0 9 0 123456 987654321 2048 18446744073709551615";
        assert_eq!(
            parse_stat(line),
            Some(StatFields {
                utime: 250,
                stime: 50,
                starttime: 123456,
                vsize: 987654321,
                rss_pages: 2048,
            })
        );
        assert_eq!(parse_stat("4242 (truncated) S 1 2"), None);
    }

    #[test]
    fn this_process_reads_as_itself() {
        let u = usage().expect("/proc is mounted here");
        assert!(u.resident_bytes > 0 && u.virtual_bytes >= u.resident_bytes);
        assert!(u.open_fds >= 3 && u.max_fds >= u.open_fds);
        assert!(u.cpu_seconds >= 0.0 && u.start_time_seconds > 1.6e9);
    }
}
