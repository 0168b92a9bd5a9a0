//! Soak: many sessions held for minutes, each exchanging what a call exchanges at a call's pace
//! (guidance, ICE candidates, chat, camera commands, the pages' pings, and stills uploaded over
//! REST for the agent's capture requests) while the server's RSS is sampled.
//!
//! Every client message carries an `id` and must be acknowledged; every relayed message carries
//! its number in its flow (`msg:<n>;`) and must reach the peer exactly once, in order; every
//! server message's `seq` must be the previous one plus one; every capture request must end in a
//! 201 and a `capture.created` at both ends. Anything else (an `error` frame, a close, a late
//! pong, a lost or reordered message, an upload answered otherwise than 201) is an error. The run
//! fails on any error, or when the server's RSS grew past a threshold after the warm-up.

mod checks;
mod curve;
mod session;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures_util::{StreamExt, stream};
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::common::{self, Latency, Session, Target};
use crate::{TargetArgs, secs};

pub use curve::{RssVerdict, Sample};
use curve::{load1, rss_verdict, sample_loop};
use session::{Counters, Shared, Soaker, drive, lock};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    target: TargetArgs,
    /// Sessions; each holds an agent and a customer connection.
    #[arg(long, default_value_t = 1000)]
    sessions: usize,
    /// Seconds of load.
    #[arg(long, default_value_t = 600.0)]
    duration: f64,
    /// Seconds of load before the RSS baseline is taken (allocator arenas, SQLite's page cache
    /// and the decoder's buffers fill up in the first capture rounds).
    #[arg(long, default_value_t = 120.0)]
    warmup: f64,
    /// Seconds between samples of the server's RSS.
    #[arg(long, default_value_t = 10.0)]
    sample_every: f64,
    /// The server's pid: its VmRSS and CPU time are read from /proc/<pid>.
    #[arg(long)]
    server_pid: u32,
    /// Fail when the RSS grew by more than this, in % of the baseline, from the warm-up's end to
    /// the end of the load (medians of 3 samples at each end). After the warm-up nothing in the
    /// server should grow but SQLite's page caches (at most 2,000 KiB for each of its 5 pooled
    /// connections) and allocator noise; 10 % of the ~150 MiB of 1,000 sessions is ~15 MiB, which
    /// a leak of 64 bytes per client message or 4 KiB per capture exceeds within the default run.
    #[arg(long, default_value_t = 10.0)]
    max_rss_growth_pct: f64,
    /// Mean seconds between an agent's `guide` messages. Every interval below is jittered
    /// uniformly over 0.5x to 1.5x the mean, and each session starts at a random point of it.
    #[arg(long, default_value_t = 3.0)]
    guide_every: f64,
    /// Mean seconds between one side's `signal` (an ICE candidate).
    #[arg(long, default_value_t = 20.0)]
    signal_every: f64,
    /// Mean seconds between one side's `chat`.
    #[arg(long, default_value_t = 60.0)]
    chat_every: f64,
    /// Mean seconds between an agent's `camera` commands (torch, zoom).
    #[arg(long, default_value_t = 60.0)]
    camera_every: f64,
    /// Mean seconds between one connection's `ping` (the pages ping every 5 s).
    #[arg(long, default_value_t = 5.0)]
    ping_every: f64,
    /// Mean seconds between an agent's `capture.request`s, each answered by an upload.
    #[arg(long, default_value_t = 90.0)]
    capture_every: f64,
    /// Still size, WIDTHxHEIGHT.
    #[arg(long, default_value = "1920x1080")]
    size: String,
    /// Distinct generated stills, used in turn (each upload is made unique by a JPEG comment, so
    /// the server stores every one: its files are named by their content).
    #[arg(long, default_value_t = 3)]
    variants: usize,
    #[arg(long, default_value_t = 90)]
    quality: u8,
    /// Seconds allowed after the load for what is in flight to land before it counts as missing.
    #[arg(long, default_value_t = 30.0)]
    drain: f64,
    /// Seconds from `capture.request` to the 201 and `capture.created` at both ends.
    #[arg(long, default_value_t = 60.0)]
    capture_timeout: f64,
    /// Seconds a pong may take (the pages give a socket up after 4 s without one).
    #[arg(long, default_value_t = 4.0)]
    pong_timeout: f64,
    /// Sessions set up at once.
    #[arg(long, default_value_t = 32)]
    connect_concurrency: usize,
    /// Also write the samples here as CSV, a line per sample as it is taken.
    #[arg(long)]
    csv: Option<PathBuf>,
}

/// Mean seconds between events, as run.
#[derive(Debug, Clone, Serialize)]
pub struct Rates {
    pub guide_s: f64,
    pub signal_per_side_s: f64,
    pub chat_per_side_s: f64,
    pub camera_s: f64,
    pub ping_per_connection_s: f64,
    pub capture_s: f64,
    /// What that makes for all sessions together.
    pub client_messages_per_s: f64,
    pub captures_per_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub sessions: usize,
    pub connections: usize,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub rates: Rates,
    pub still: String,
    pub jpeg_bytes: usize,
    pub setup_s: f64,
    pub rss_before_setup_mib: f64,
    pub rss_connected_mib: f64,
    /// Once every connection was closed after the load (none if the server was gone).
    pub rss_after_close_mib: Option<f64>,
    pub samples: Vec<Sample>,
    pub sent: u64,
    pub delivered: u64,
    pub uploads: u64,
    pub captures: u64,
    pub errors: u64,
    pub errors_by_kind: BTreeMap<String, u64>,
    /// The first errors, as seen.
    pub first_errors: Vec<String>,
    /// The agent's `guide` to its arrival at the customer.
    pub guide_latency: Latency,
    /// The agent's `capture.request` to the later of the 201 and both `capture.created`.
    pub capture_latency: Latency,
    /// Upload start to the 201.
    pub upload_latency: Latency,
    pub pong_max_ms: f64,
    pub rss: Option<RssVerdict>,
    pub load_average_start: String,
    pub load_average_end: String,
    pub passed: bool,
}

pub async fn run(a: Args) -> Result<Outcome> {
    let target = Target::new(&a.target.url, a.target.api_key, false)?;
    if a.sessions == 0 || a.sample_every <= 0.0 || a.duration <= 0.0 {
        bail!("--sessions, --duration and --sample-every must be positive");
    }
    let pid = a.server_pid;
    let rss_mib = || {
        common::rss_kib(pid)
            .map(|k| k as f64 / 1024.0)
            .context("cannot read the server's /proc/<pid>/status")
    };
    let rss_before_setup_mib = rss_mib()?;
    let (width, height) = common::parse_size(&a.size)?;
    let stills = crate::capture::stills(width, height, a.variants, a.quality)?;
    let jpeg_bytes = stills[0].len();
    let intervals = [
        a.guide_every,
        a.camera_every,
        a.capture_every,
        a.chat_every,
        a.chat_every,
        a.signal_every,
        a.signal_every,
        a.ping_every,
        a.ping_every,
    ];
    if intervals.iter().any(|&e| e <= 0.0) {
        bail!("every --*-every must be positive");
    }
    let n = a.sessions as f64;
    let rates = Rates {
        guide_s: a.guide_every,
        signal_per_side_s: a.signal_every,
        chat_per_side_s: a.chat_every,
        camera_s: a.camera_every,
        ping_per_connection_s: a.ping_every,
        capture_s: a.capture_every,
        client_messages_per_s: n * intervals.iter().map(|e| 1.0 / e).sum::<f64>(),
        captures_per_s: n / a.capture_every,
    };
    eprintln!(
        "{} sessions for {:.0} s: about {:.0} client messages/s and {:.1} captures/s ({} KiB stills)",
        a.sessions,
        a.duration,
        rates.client_messages_per_s,
        rates.captures_per_s,
        jpeg_bytes / 1024
    );
    let shared = Arc::new(Shared {
        counters: Arc::new(Counters::new()),
        http: common::http_client()?,
        target: target.clone(),
        stills,
        every: intervals.map(secs),
        capture_timeout: secs(a.capture_timeout),
        pong_timeout: secs(a.pong_timeout),
    });

    let setup = Instant::now();
    let joined: Vec<Result<(Session, common::Pair)>> = stream::iter(0..a.sessions)
        .map(|n| {
            let (http, target) = (&shared.http, &target);
            async move {
                let s = common::create_session(http, target, &format!("SOAK-{n}")).await?;
                let p = common::join_pair(target, &s, None).await?;
                Ok((s, p))
            }
        })
        .buffer_unordered(a.connect_concurrency.max(1))
        .collect()
        .await;
    let joined: Vec<(Session, common::Pair)> = joined.into_iter().collect::<Result<_>>()?;
    let setup_s = setup.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_connected_mib = rss_mib()?;
    eprintln!(
        "{} sessions joined in {setup_s:.1} s; server RSS {rss_before_setup_mib:.1} MiB before, {rss_connected_mib:.1} MiB connected",
        joined.len()
    );

    let load_average_start = load1().1;
    let start = Instant::now();
    let end = start + secs(a.duration);
    let drain_until = end + secs(a.drain);
    let tasks: Vec<JoinHandle<()>> = joined
        .into_iter()
        .enumerate()
        .map(|(n, (session, pair))| {
            tokio::spawn(drive(
                Soaker::new(n, session, pair, shared.clone()),
                start,
                end,
                drain_until,
            ))
        })
        .collect();

    let csv = match &a.csv {
        Some(path) => {
            let mut f = std::fs::File::create(path)
                .with_context(|| format!("creating {}", path.display()))?;
            writeln!(f, "{}", curve::csv_header())?;
            Some(f)
        }
        None => None,
    };
    eprintln!("{}", curve::csv_header());
    let sampler = tokio::spawn(sample_loop(
        shared.counters.clone(),
        pid,
        start,
        end,
        secs(a.sample_every),
        csv,
    ));
    let samples = sampler.await?;
    let load_average_end = load1().1;
    for t in tasks {
        t.await?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after_close_mib = rss_mib().ok();

    let points: Vec<(f64, f64)> = samples.iter().map(|s| (s.elapsed_s, s.rss_mib)).collect();
    let rss = rss_verdict(&points, a.warmup, a.max_rss_growth_pct);
    let c = &shared.counters;
    let errors = c.errors.load(Relaxed);
    Ok(Outcome {
        sessions: a.sessions,
        connections: a.sessions * 2,
        duration_s: a.duration,
        warmup_s: a.warmup,
        rates,
        still: format!("{width}x{height}"),
        jpeg_bytes,
        setup_s,
        rss_before_setup_mib,
        rss_connected_mib,
        rss_after_close_mib,
        samples,
        sent: c.sent.load(Relaxed),
        delivered: c.delivered.load(Relaxed),
        uploads: c.uploads.load(Relaxed),
        captures: c.captures.load(Relaxed),
        errors,
        errors_by_kind: lock(&c.by_kind).clone(),
        first_errors: lock(&c.first).clone(),
        guide_latency: Latency::of(&lock(&c.guide_latency)),
        capture_latency: Latency::of(&lock(&c.capture_latency)),
        upload_latency: Latency::of(&lock(&c.upload_latency)),
        pong_max_ms: common::ms(c.pong_max_us.load(Relaxed)),
        passed: errors == 0 && rss.as_ref().is_none_or(|r| r.flat),
        rss,
        load_average_start,
        load_average_end,
    })
}

pub fn print_human(o: &Outcome) {
    println!("{}", curve::table_header());
    for s in &o.samples {
        println!("{}", s.table_row());
    }
    println!(
        "{} sessions ({} connections), {:.0} s: {} client messages sent, {} relayed messages delivered, {} uploads, {} captures complete; errors {}",
        o.sessions,
        o.connections,
        o.duration_s,
        o.sent,
        o.delivered,
        o.uploads,
        o.captures,
        o.errors
    );
    for (kind, count) in &o.errors_by_kind {
        println!("  {kind}: {count}");
    }
    println!(
        "guide delivery p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; capture (request to stored at both ends) p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; slowest pong {:.0} ms",
        common::ms(o.guide_latency.p50_us),
        common::ms(o.guide_latency.p99_us),
        common::ms(o.guide_latency.max_us),
        common::ms(o.capture_latency.p50_us),
        common::ms(o.capture_latency.p99_us),
        common::ms(o.capture_latency.max_us),
        o.pong_max_ms
    );
    println!(
        "server RSS: {:.1} MiB before the sessions, {:.1} MiB connected, {} after closing them",
        o.rss_before_setup_mib,
        o.rss_connected_mib,
        o.rss_after_close_mib
            .map_or("gone".to_owned(), |r| format!("{r:.1} MiB"))
    );
    match &o.rss {
        Some(r) => println!(
            "RSS after the {:.0} s warm-up: {:.1} -> {:.1} MiB ({:+.1} MiB, {:+.1} %; limit {:.0} %), range {:.1}-{:.1} MiB, slope {:+.2} MiB/min: {}",
            o.warmup_s,
            r.baseline_mib,
            r.end_mib,
            r.growth_mib,
            r.growth_pct,
            r.max_growth_pct,
            r.min_mib,
            r.max_mib,
            r.slope_mib_per_min,
            if r.flat { "flat" } else { "GREW" }
        ),
        None => println!("RSS: no verdict (fewer than two samples after the warm-up)"),
    }
    println!(
        "load average {} at the start, {} at the end; {}",
        o.load_average_start,
        o.load_average_end,
        if o.passed { "PASSED" } else { "FAILED" }
    );
}
