//! The server's RSS over the soak: samples, the CSV and table of the curve, and the verdict on
//! whether it stayed flat.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use super::session::Counters;
use crate::common;

#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub elapsed_s: f64,
    pub rss_mib: f64,
    /// The anonymous part of the RSS (the heap, not the mapped binary or SQLite's shared memory).
    pub rss_anon_mib: f64,
    /// The server's threads (tokio's workers and blocking pool, SQLite's connection threads):
    /// each may bring an allocator arena of its own.
    pub server_threads: u64,
    /// Client messages sent so far.
    pub sent: u64,
    /// Relayed messages received by the peer so far.
    pub delivered: u64,
    /// Captures complete so far (201, and `capture.created` at both ends).
    pub captures: u64,
    pub errors: u64,
    /// The server's CPU since the previous sample, % of one core.
    pub server_cpu_pct: f64,
    /// The machine's 1-minute load average.
    pub load1: f64,
}

/// The curve's columns: CSV name, table heading, table width.
const COLUMNS: [(&str, &str, usize); 10] = [
    ("elapsed_s", "elapsed s", 9),
    ("rss_mib", "RSS MiB", 8),
    ("rss_anon_mib", "anon", 7),
    ("server_threads", "threads", 7),
    ("sent", "sent", 10),
    ("delivered", "delivered", 10),
    ("captures", "captures", 8),
    ("errors", "errors", 6),
    ("server_cpu_pct", "CPU %", 6),
    ("load1", "load", 5),
];

impl Sample {
    fn cells(&self) -> [String; COLUMNS.len()] {
        [
            format!("{:.0}", self.elapsed_s),
            format!("{:.1}", self.rss_mib),
            format!("{:.1}", self.rss_anon_mib),
            self.server_threads.to_string(),
            self.sent.to_string(),
            self.delivered.to_string(),
            self.captures.to_string(),
            self.errors.to_string(),
            format!("{:.0}", self.server_cpu_pct),
            format!("{:.2}", self.load1),
        ]
    }

    pub fn csv_line(&self) -> String {
        self.cells().join(",")
    }

    pub fn table_row(&self) -> String {
        let cells = self.cells();
        let padded: Vec<String> = cells
            .iter()
            .zip(COLUMNS)
            .map(|(c, (_, _, w))| format!("{c:>w$}"))
            .collect();
        padded.join(" ")
    }
}

pub fn csv_header() -> String {
    COLUMNS.map(|c| c.0).join(",")
}

pub fn table_header() -> String {
    let padded: Vec<String> = COLUMNS.iter().map(|(_, h, w)| format!("{h:>w$}")).collect();
    padded.join(" ")
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RssVerdict {
    /// Median of the first samples at or after the warm-up.
    pub baseline_mib: f64,
    /// Median of the last samples of the load.
    pub end_mib: f64,
    pub growth_mib: f64,
    pub growth_pct: f64,
    pub max_growth_pct: f64,
    /// Least-squares slope over the samples after the warm-up.
    pub slope_mib_per_min: f64,
    pub min_mib: f64,
    pub max_mib: f64,
    pub samples: usize,
    pub flat: bool,
}

/// Samples at each end that are reduced to their median, so that one sample taken while two
/// stills were being decoded does not decide the verdict.
const VERDICT_WINDOW: usize = 3;

/// The RSS verdict over `(elapsed s, RSS MiB)` samples: `None` without two samples after the
/// warm-up.
pub fn rss_verdict(
    samples: &[(f64, f64)],
    warmup_s: f64,
    max_growth_pct: f64,
) -> Option<RssVerdict> {
    let after: Vec<(f64, f64)> = samples
        .iter()
        .copied()
        .filter(|(t, _)| *t >= warmup_s)
        .collect();
    if after.len() < 2 {
        return None;
    }
    let w = VERDICT_WINDOW.min(after.len() / 2).max(1);
    let rss = |s: &[(f64, f64)]| s.iter().map(|p| p.1).collect::<Vec<_>>();
    let baseline_mib = common::median(&mut rss(&after[..w]));
    let end_mib = common::median(&mut rss(&after[after.len() - w..]));
    let growth_mib = end_mib - baseline_mib;
    let growth_pct = growth_mib / baseline_mib * 100.0;
    let n = after.len() as f64;
    let (mt, mr) = (
        after.iter().map(|p| p.0).sum::<f64>() / n,
        after.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let cov: f64 = after.iter().map(|(t, r)| (t - mt) * (r - mr)).sum();
    let var: f64 = after.iter().map(|(t, _)| (t - mt).powi(2)).sum();
    let slope = if var > 0.0 { cov / var } else { 0.0 };
    let all = rss(&after);
    Some(RssVerdict {
        baseline_mib,
        end_mib,
        growth_mib,
        growth_pct,
        max_growth_pct,
        slope_mib_per_min: slope * 60.0,
        min_mib: all.iter().copied().fold(f64::INFINITY, f64::min),
        max_mib: all.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        samples: after.len(),
        flat: growth_pct <= max_growth_pct,
    })
}

/// The machine's load average: the 1-minute figure, and the three as /proc/loadavg shows them.
pub fn load1() -> (f64, String) {
    let l = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let three: Vec<&str> = l.split_whitespace().take(3).collect();
    (
        three
            .first()
            .and_then(|x| x.parse().ok())
            .unwrap_or(f64::NAN),
        three.join(" "),
    )
}

/// Samples the server every `every` from `start` to `end` (and at `end`).
pub async fn sample_loop(
    counters: Arc<Counters>,
    pid: u32,
    start: Instant,
    end: Instant,
    every: Duration,
    mut csv: Option<std::fs::File>,
) -> Vec<Sample> {
    let mut samples: Vec<Sample> = Vec::new();
    let (mut prev_ticks, mut prev_at) = (common::cpu_ticks(pid).unwrap_or(0), Instant::now());
    let mut k = 0u32;
    loop {
        let at = (start + every * k).min(end);
        tokio::time::sleep_until(at).await;
        let now = Instant::now();
        let ticks = common::cpu_ticks(pid).unwrap_or(prev_ticks);
        let dt = now.duration_since(prev_at).as_secs_f64();
        let c = &counters;
        let s = Sample {
            elapsed_s: (at - start).as_secs_f64(),
            rss_mib: common::rss_kib(pid).unwrap_or(0) as f64 / 1024.0,
            rss_anon_mib: common::proc_status(pid, "RssAnon").unwrap_or(0) as f64 / 1024.0,
            server_threads: common::proc_status(pid, "Threads").unwrap_or(0),
            sent: c.sent.load(Relaxed),
            delivered: c.delivered.load(Relaxed),
            captures: c.captures.load(Relaxed),
            errors: c.errors.load(Relaxed),
            server_cpu_pct: if dt > 0.0 {
                ticks.saturating_sub(prev_ticks) as f64 / dt
            } else {
                0.0
            },
            load1: load1().0,
        };
        (prev_ticks, prev_at) = (ticks, now);
        let line = s.csv_line();
        eprintln!("  {line}");
        if let Some(f) = &mut csv {
            let _ = writeln!(f, "{line}").and_then(|()| f.flush());
        }
        samples.push(s);
        if at >= end {
            return samples;
        }
        k += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn curve(f: impl Fn(f64) -> f64) -> Vec<(f64, f64)> {
        (0..=60)
            .map(|i| (i as f64 * 10.0, f(i as f64 * 10.0)))
            .collect()
    }

    #[test]
    fn a_flat_curve_after_the_warmup_passes_whatever_the_warmup_did() {
        let v = rss_verdict(
            &curve(|t| if t < 120.0 { 50.0 + t } else { 200.0 }),
            120.0,
            10.0,
        )
        .unwrap();
        assert_eq!(
            (v.baseline_mib, v.end_mib, v.growth_mib),
            (200.0, 200.0, 0.0)
        );
        assert!(v.flat);
        assert_eq!(v.samples, 49);
        assert!(v.slope_mib_per_min.abs() < 1e-9);
    }

    #[test]
    fn steady_growth_fails() {
        // 100 MiB, then 0.05 MiB/s: +24 MiB over 480 s, 24 %.
        let v = rss_verdict(&curve(|t| 100.0 + 0.05 * (t - 120.0)), 120.0, 10.0).unwrap();
        assert!(!v.flat);
        assert!((v.growth_pct - 23.0).abs() < 1.5, "{}", v.growth_pct);
        assert!((v.slope_mib_per_min - 3.0).abs() < 1e-6);
    }

    #[test]
    fn one_high_sample_at_the_end_does_not_decide() {
        let v = rss_verdict(
            &curve(|t| if t == 600.0 { 150.0 } else { 100.0 }),
            120.0,
            10.0,
        )
        .unwrap();
        assert!(v.flat);
        assert_eq!(v.max_mib, 150.0);
    }

    #[test]
    fn no_verdict_without_two_samples_after_the_warmup() {
        assert!(rss_verdict(&[(0.0, 10.0), (10.0, 11.0)], 10.0, 10.0).is_none());
        assert!(rss_verdict(&[(10.0, 10.0), (20.0, 11.0)], 10.0, 10.0).is_some());
    }
}
