//! CaptureLink's load generator: the figures of docs/BENCHMARKS.md.
//!
//! It speaks the real protocol (sessions over REST with an API key, an agent and a customer
//! WebSocket per session) and runs on one thread by default, so on a 2-core machine the server
//! keeps a core to itself. `scripts/bench` runs the whole set.
//!
//! The server under test must be started with its per-connection and per-address limits raised
//! or off, or the load generator is what gets measured (refused with `rate_limited`, 429):
//! `--ws-rate 1000000 --ws-burst 1000000 --ip-rate 0 --key-rate 0 --max-ws-per-ip 0`.

mod capture;
mod common;
mod idle;
mod relay;
mod soak;
mod startup;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use common::{Target, median, ms};

#[derive(Parser, Debug)]
#[command(name = "capturelink-loadgen", version, about)]
struct Cli {
    /// Runtime threads of the load generator (1: a current-thread runtime, leaving the other
    /// core to the server).
    #[arg(long, global = true, default_value_t = 1)]
    threads: usize,
    /// Print the outcome as JSON on stdout (progress goes to stderr).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Relay throughput and latency against one server (CaptureLink, or the bare relay with --bare).
    Relay(RelayArgs),
    /// The relay benchmark against CaptureLink and the bare relay in turn, with medians and ratios.
    Compare(CompareArgs),
    /// Server RSS per idle connection.
    Idle(IdleArgs),
    /// Upload start to `capture.created` at the customer, and sustained captures per second.
    Capture(CaptureArgs),
    /// Process start to `/healthz` 200, and the idle RSS, over several starts.
    Startup(StartupArgs),
    /// Many sessions exchanging guidance and captures for minutes: errors and the server's RSS.
    Soak(soak::Args),
}

#[derive(Args, Debug, Clone)]
struct TargetArgs {
    /// Base URL of the server under test.
    #[arg(long, default_value = "http://127.0.0.1:18080")]
    url: String,
    /// An API key of the server under test.
    #[arg(long, env = "CAPTURELINK_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
}

#[derive(Args, Debug, Clone)]
struct LoadArgs {
    /// Messages each agent keeps in flight (sent, not yet received by its customer).
    #[arg(long, default_value_t = 4)]
    in_flight: usize,
    /// Measured window, seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Load before the window that is not measured, seconds.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Extra characters in every message's payload.
    #[arg(long, default_value_t = 0)]
    pad: usize,
    /// Sessions set up at once.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
}

#[derive(Args, Debug)]
struct RelayArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// The target is the bare relay (no REST, no welcome; paired by `?session=`).
    #[arg(long)]
    bare: bool,
    #[arg(long, default_value_t = 10)]
    pairs: usize,
    #[arg(long, value_enum, default_value_t = relay::Kind::Signal)]
    message: relay::Kind,
    #[command(flatten)]
    load: LoadArgs,
    /// The server's pid, to report its CPU use in the window.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Several nodes: the customers connect to this node, the agents to `--url`.
    #[arg(long)]
    customer_url: Option<String>,
}

#[derive(Args, Debug)]
struct CompareArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Base URL of the bare relay.
    #[arg(long, default_value = "http://127.0.0.1:18081")]
    bare_url: String,
    /// Pair counts (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "10,100,1000")]
    pairs: Vec<usize>,
    /// Message types (comma-separated).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "signal,guide"
    )]
    message: Vec<relay::Kind>,
    /// Runs of each target per (message, pairs); the report gives medians.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    #[command(flatten)]
    load: LoadArgs,
    #[arg(long)]
    server_pid: Option<u32>,
    #[arg(long)]
    bare_pid: Option<u32>,
}

#[derive(Args, Debug)]
struct IdleArgs {
    #[command(flatten)]
    target: TargetArgs,
    #[arg(long)]
    bare: bool,
    /// Sessions; each holds two connections (agent and customer).
    #[arg(long, default_value_t = 10_000)]
    sessions: usize,
    /// Source addresses 127.0.0.1 ..= 127.0.0.N, used in turn.
    #[arg(long, default_value_t = 4)]
    sources: u8,
    /// The server's pid (its /proc/<pid>/status VmRSS is read).
    #[arg(long)]
    server_pid: u32,
    /// Seconds to wait after the last connection before reading the RSS.
    #[arg(long, default_value_t = 5.0)]
    settle: f64,
    /// Seconds to hold the connections open after the reading.
    #[arg(long, default_value_t = 0.0)]
    hold: f64,
    #[arg(long, default_value_t = 128)]
    connect_concurrency: usize,
}

#[derive(Args, Debug)]
struct CaptureArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Still size, WIDTHxHEIGHT (1920x1080; 4000x3000 is 12 MP).
    #[arg(long, default_value = "1920x1080")]
    size: String,
    /// Captures per uploader (without --duration).
    #[arg(long, default_value_t = 40)]
    count: usize,
    /// Concurrent uploaders, each its own session.
    #[arg(long, default_value_t = 1)]
    uploaders: usize,
    /// Sustained mode: upload for this many seconds and report captures per second.
    #[arg(long)]
    duration: Option<f64>,
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Distinct generated stills, used in turn.
    #[arg(long, default_value_t = 3)]
    variants: usize,
    /// JPEG quality of the generated stills (phones write 85-95).
    #[arg(long, default_value_t = 90)]
    quality: u8,
}

#[derive(Args, Debug)]
struct StartupArgs {
    /// The server binary (a release build).
    #[arg(long, default_value = "target/release/capturelink")]
    bin: PathBuf,
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// A new, empty data dir for every start (else: restarts on a prepared data dir).
    #[arg(long)]
    fresh: bool,
    /// Seconds after /healthz before the idle RSS is read.
    #[arg(long, default_value_t = 2.0)]
    idle_wait: f64,
    /// Further server arguments, after `--`.
    #[arg(last = true)]
    server_args: Vec<String>,
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

impl LoadArgs {
    fn opts(&self, pairs: usize, kind: relay::Kind) -> relay::Opts {
        relay::Opts {
            pairs,
            in_flight: self.in_flight,
            duration: secs(self.duration),
            warmup: secs(self.warmup),
            kind,
            pad: self.pad,
            connect_concurrency: self.connect_concurrency,
        }
    }
}

/// 20,000 sockets need more than the usual 1,024 descriptors: take the hard limit.
fn raise_nofile() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current < lim.maximum {
        lim.current = lim.maximum;
        let _ = setrlimit(Resource::Nofile, lim);
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    raise_nofile();
    if let Cmd::Startup(a) = &cli.command {
        let out = startup::run(&startup::Opts {
            bin: a.bin.clone(),
            runs: a.runs,
            fresh: a.fresh,
            idle_wait: secs(a.idle_wait),
            args: a.server_args.clone(),
        })?;
        return print(cli.json, &out, || {
            println!(
                "startup ({} data dir), {} runs: median {:.1} ms (min {:.1}, max {:.1}); idle RSS median {:.1} MiB",
                if out.fresh_data_dir {
                    "fresh"
                } else {
                    "existing"
                },
                out.runs,
                out.median_ms,
                out.min_ms,
                out.max_ms,
                out.median_idle_rss_kib / 1024.0
            )
        });
    }
    let rt = if cli.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cli.threads)
            .enable_all()
            .build()?
    };
    rt.block_on(run(cli))
}

async fn run(cli: Cli) -> Result<()> {
    let json = cli.json;
    match cli.command {
        Cmd::Startup(_) => unreachable!("handled before the runtime"),
        Cmd::Relay(a) => {
            let target = Target::new(&a.target.url, a.target.api_key, a.bare)?
                .with_customer_url(a.customer_url.as_deref())?;
            let out = relay::run(&target, &a.load.opts(a.pairs, a.message), a.server_pid).await?;
            print(json, &out, || print_relay(&out))
        }
        Cmd::Compare(a) => {
            let out = compare(a).await?;
            print(json, &out, || print_compare(&out))
        }
        Cmd::Idle(a) => {
            let target = Target::new(&a.target.url, a.target.api_key, a.bare)?;
            let out = idle::run(
                &target,
                &idle::Opts {
                    sessions: a.sessions,
                    sources: a.sources,
                    settle: secs(a.settle),
                    hold: secs(a.hold),
                    connect_concurrency: a.connect_concurrency,
                },
                a.server_pid,
            )
            .await?;
            print(json, &out, || {
                println!(
                    "{}: {} connections ({} sessions): RSS {:.1} MiB at start, {:.1} MiB after the sessions, {:.1} MiB connected; {:.2} KiB per connection ({:.2} KiB with the sessions' creation); {} dropped during the hold",
                    out.target,
                    out.connections,
                    out.sessions,
                    out.rss_start_kib as f64 / 1024.0,
                    out.rss_after_sessions_kib as f64 / 1024.0,
                    out.rss_connected_kib as f64 / 1024.0,
                    out.kib_per_connection,
                    out.kib_per_connection_incl_sessions,
                    out.dropped_during_hold
                )
            })
        }
        Cmd::Soak(a) => {
            let out = soak::run(a).await?;
            print(json, &out, || soak::print_human(&out))?;
            if !out.passed {
                bail!(
                    "soak failed: {} errors{}",
                    out.errors,
                    match &out.rss {
                        Some(r) if !r.flat => format!(
                            ", RSS grew {:.1} % after the warm-up (limit {:.0} %)",
                            r.growth_pct, r.max_growth_pct
                        ),
                        _ => String::new(),
                    }
                );
            }
            Ok(())
        }
        Cmd::Capture(a) => {
            let target = Target::new(&a.target.url, a.target.api_key, false)?;
            let (w, h) = common::parse_size(&a.size)?;
            let out = capture::run(
                &target,
                &capture::Opts {
                    width: w,
                    height: h,
                    count: a.count,
                    uploaders: a.uploaders,
                    duration: a.duration.map(secs),
                    warmup: secs(a.warmup),
                    variants: a.variants,
                    quality: a.quality,
                },
            )
            .await?;
            print(json, &out, || {
                println!(
                    "capture {}x{} ({} KiB JPEG), {} uploader(s), {} captures: upload start to capture.created p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (201 p50 {:.1} ms){}; errors {}",
                    out.width,
                    out.height,
                    out.jpeg_bytes / 1024,
                    out.uploaders,
                    out.captures,
                    ms(out.latency.p50_us),
                    ms(out.latency.p99_us),
                    ms(out.latency.max_us),
                    ms(out.http.p50_us),
                    out.captures_per_s
                        .map(|c| format!("; {c:.1} captures/s sustained"))
                        .unwrap_or_default(),
                    out.errors
                )
            })
        }
    }
}

fn print<T: Serialize>(json: bool, out: &T, human: impl FnOnce()) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(out)?);
    } else {
        human();
    }
    Ok(())
}

fn print_relay(o: &relay::Outcome) {
    println!(
        "{:<11} {:<6} pairs {:>5} in-flight {}: {:>9.0} msg/s  p50 {:>7.2} ms  p99 {:>7.2} ms  p999 {:>7.2} ms  max {:>7.2} ms  errors {} broken {}{}",
        o.target,
        o.message.as_str(),
        o.pairs,
        o.in_flight,
        o.throughput_per_s,
        ms(o.latency.p50_us),
        ms(o.latency.p99_us),
        ms(o.latency.p999_us),
        ms(o.latency.max_us),
        o.errors,
        o.broken_pairs,
        o.server_cpu_pct
            .map(|c| format!("  server CPU {c:.0}%"))
            .unwrap_or_default()
    );
}

/// Medians of the runs of one target at one (message, pairs) point.
#[derive(Debug, Serialize)]
struct Medians {
    throughput_per_s: f64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    server_cpu_pct: Option<f64>,
}

impl Medians {
    fn of(runs: &[relay::Outcome]) -> Self {
        let m = |f: &dyn Fn(&relay::Outcome) -> f64| {
            median(&mut runs.iter().map(f).collect::<Vec<_>>())
        };
        let cpu: Vec<f64> = runs.iter().filter_map(|r| r.server_cpu_pct).collect();
        Self {
            throughput_per_s: m(&|r| r.throughput_per_s),
            p50_us: m(&|r| r.latency.p50_us as f64),
            p99_us: m(&|r| r.latency.p99_us as f64),
            p999_us: m(&|r| r.latency.p999_us as f64),
            server_cpu_pct: (!cpu.is_empty()).then(|| median(&mut cpu.clone())),
        }
    }
}

#[derive(Debug, Serialize)]
struct Point {
    message: relay::Kind,
    pairs: usize,
    in_flight: usize,
    repeat: usize,
    bare: Medians,
    capturelink: Medians,
    /// CaptureLink's median throughput / the bare relay's (target: at least 0.75).
    throughput_ratio: f64,
    /// CaptureLink's median p99 / the bare relay's (target: at most 1.3).
    p99_ratio: f64,
    meets_targets: bool,
    runs: Vec<relay::Outcome>,
}

#[derive(Debug, Serialize)]
struct Comparison {
    points: Vec<Point>,
}

async fn compare(a: CompareArgs) -> Result<Comparison> {
    let cl = Target::new(&a.target.url, a.target.api_key.clone(), false)?;
    let bare = Target::new(&a.bare_url, None, true)?;
    let mut points = Vec::new();
    for &kind in &a.message {
        for &pairs in &a.pairs {
            let opts = a.load.opts(pairs, kind);
            let (mut b_runs, mut c_runs) = (Vec::new(), Vec::new());
            for rep in 0..a.repeat.max(1) {
                // Alternate which goes first, so a drift in the machine's load hits both alike.
                let order: [bool; 2] = if rep % 2 == 0 {
                    [true, false]
                } else {
                    [false, true]
                };
                for is_bare in order {
                    let (t, pid) = if is_bare {
                        (&bare, a.bare_pid)
                    } else {
                        (&cl, a.server_pid)
                    };
                    let out = relay::run(t, &opts, pid).await?;
                    if out.errors > 0 || out.broken_pairs > 0 {
                        eprintln!(
                            "warning: {} errors, {} broken pairs: check the server's limits",
                            out.errors, out.broken_pairs
                        );
                    }
                    print_relay_to_stderr(&out);
                    if is_bare {
                        b_runs.push(out);
                    } else {
                        c_runs.push(out);
                    }
                    // Let closed connections wind down before the next run.
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
            let (bm, cm) = (Medians::of(&b_runs), Medians::of(&c_runs));
            let throughput_ratio = cm.throughput_per_s / bm.throughput_per_s;
            let p99_ratio = cm.p99_us / bm.p99_us;
            let mut runs = b_runs;
            runs.extend(c_runs);
            points.push(Point {
                message: kind,
                pairs,
                in_flight: a.load.in_flight,
                repeat: a.repeat.max(1),
                bare: bm,
                capturelink: cm,
                throughput_ratio,
                p99_ratio,
                meets_targets: throughput_ratio >= 0.75 && p99_ratio <= 1.3,
                runs,
            });
        }
    }
    Ok(Comparison { points })
}

fn print_relay_to_stderr(o: &relay::Outcome) {
    eprintln!(
        "  {:<11} {:<6} pairs {:>5}: {:>9.0} msg/s  p50 {:>7.2} ms  p99 {:>7.2} ms{}",
        o.target,
        o.message.as_str(),
        o.pairs,
        o.throughput_per_s,
        ms(o.latency.p50_us),
        ms(o.latency.p99_us),
        o.server_cpu_pct
            .map(|c| format!("  server CPU {c:.0}%"))
            .unwrap_or_default()
    );
}

fn print_compare(c: &Comparison) {
    println!(
        "{:<7} {:>6} | {:>10} {:>9} | {:>10} {:>9} | {:>8} {:>8} | targets",
        "message", "pairs", "bare msg/s", "bare p99", "CL msg/s", "CL p99", "thr x", "p99 x"
    );
    for p in &c.points {
        println!(
            "{:<7} {:>6} | {:>10.0} {:>7.2}ms | {:>10.0} {:>7.2}ms | {:>8.2} {:>8.2} | {}",
            p.message.as_str(),
            p.pairs,
            p.bare.throughput_per_s,
            p.bare.p99_us / 1000.0,
            p.capturelink.throughput_per_s,
            p.capturelink.p99_us / 1000.0,
            p.throughput_ratio,
            p.p99_ratio,
            if p.meets_targets { "met" } else { "MISSED" }
        );
    }
    println!(
        "(medians of {} runs each, in-flight {} per pair; targets: throughput >= 0.75x, p99 <= 1.3x)",
        c.points.first().map(|p| p.repeat).unwrap_or(0),
        c.points.first().map(|p| p.in_flight).unwrap_or(0)
    );
}
