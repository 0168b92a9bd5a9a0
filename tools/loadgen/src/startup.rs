//! Startup time (process start to the first `GET /healthz` answered 200) and the idle RSS of the
//! server, a few seconds after it came up.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::common;

#[derive(Clone, Debug)]
pub struct Opts {
    pub bin: PathBuf,
    pub runs: usize,
    /// A new data dir for every run (first start: database created, migrations, secrets). Without
    /// it one data dir is prepared by an untimed start and every timed run is a restart.
    pub fresh: bool,
    /// Wait after /healthz before reading the idle RSS.
    pub idle_wait: Duration,
    /// Extra arguments for the server.
    pub args: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub runs: usize,
    pub fresh_data_dir: bool,
    pub startup_ms: Vec<f64>,
    pub median_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    pub idle_rss_kib: Vec<u64>,
    pub median_idle_rss_kib: f64,
}

fn free_port() -> Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

fn healthz_ok(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let req = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 200")
}

fn spawn(opts: &Opts, data_dir: &Path, addr: SocketAddr) -> Result<Child> {
    Command::new(&opts.bin)
        .arg("serve")
        .arg("--listen")
        .arg(addr.to_string())
        .arg("--data-dir")
        .arg(data_dir)
        .args(&opts.args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", opts.bin.display()))
}

/// Starts the server and returns how long until /healthz answered 200.
fn start_once(opts: &Opts, data_dir: &Path) -> Result<(Child, SocketAddr, Duration)> {
    let addr = free_port()?;
    let started = Instant::now();
    let mut child = spawn(opts, data_dir, addr)?;
    loop {
        if healthz_ok(addr) {
            return Ok((child, addr, started.elapsed()));
        }
        if let Some(status) = child.try_wait()? {
            bail!("the server exited before answering /healthz: {status}");
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            bail!("no /healthz within 30 s");
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}

fn stop(mut child: Child) -> Result<()> {
    let pid = rustix::process::Pid::from_raw(child.id() as i32).context("pid")?;
    let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill()?;
    child.wait()?;
    Ok(())
}

pub fn run(opts: &Opts) -> Result<Outcome> {
    let root = std::env::temp_dir().join(format!("capturelink-startup-{}", std::process::id()));
    std::fs::create_dir_all(&root)?;
    let outcome = measure(opts, &root);
    let _ = std::fs::remove_dir_all(&root);
    outcome
}

fn measure(opts: &Opts, root: &Path) -> Result<Outcome> {
    let shared = root.join("data");
    if !opts.fresh {
        // Prepare the data dir (database, migrations, secrets) with an untimed start.
        let (child, _, _) = start_once(opts, &shared)?;
        stop(child)?;
    }
    let (mut times, mut rss) = (Vec::new(), Vec::new());
    for run in 0..opts.runs.max(1) {
        let dir = if opts.fresh {
            root.join(format!("data-{run}"))
        } else {
            shared.clone()
        };
        let (child, _addr, took) = start_once(opts, &dir)?;
        std::thread::sleep(opts.idle_wait);
        if let Some(kib) = common::rss_kib(child.id()) {
            rss.push(kib);
        }
        stop(child)?;
        times.push(took.as_secs_f64() * 1000.0);
        eprintln!("run {run}: {:.1} ms", took.as_secs_f64() * 1000.0);
    }
    let median_ms = common::median(&mut times.clone());
    let mut rss_f: Vec<f64> = rss.iter().map(|&k| k as f64).collect();
    Ok(Outcome {
        runs: times.len(),
        fresh_data_dir: opts.fresh,
        median_ms,
        min_ms: times.iter().copied().fold(f64::INFINITY, f64::min),
        max_ms: times.iter().copied().fold(0.0, f64::max),
        startup_ms: times,
        median_idle_rss_kib: common::median(&mut rss_f),
        idle_rss_kib: rss,
    })
}
