//! Idle memory: the server's RSS before and after N sessions x 2 idle WebSocket connections.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures_util::{StreamExt, stream};
use serde::Serialize;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::common::{self, Pair, Target};

#[derive(Clone, Debug)]
pub struct Opts {
    pub sessions: usize,
    /// Local source addresses 127.0.0.1 ..= 127.0.0.N, used in turn (ephemeral ports run out
    /// near 28,000 connections per source address).
    pub sources: u8,
    /// Wait after the last connection before reading the RSS.
    pub settle: Duration,
    /// Keep the connections open this much longer after the reading (past the server's heartbeat
    /// window of 40 s, to see that idle clients that answer pings stay connected).
    pub hold: Duration,
    pub connect_concurrency: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub target: &'static str,
    pub sessions: usize,
    pub connections: usize,
    pub rss_start_kib: u64,
    pub rss_after_sessions_kib: u64,
    pub rss_connected_kib: u64,
    /// (connected - after sessions) / connections: what an idle connection (and its half of a
    /// room) costs.
    pub kib_per_connection: f64,
    /// (connected - start) / connections: the same with the sessions' REST creation included.
    pub kib_per_connection_incl_sessions: f64,
    pub connect_s: f64,
    /// Connections that ended during the hold (must be 0).
    pub dropped_during_hold: usize,
}

pub async fn run(target: &Target, opts: &Opts, server_pid: u32) -> Result<Outcome> {
    if opts.sources == 0 {
        bail!("--sources must be at least 1");
    }
    let rss = || common::rss_kib(server_pid).context("cannot read the server's /proc/<pid>/status");
    let rss_start_kib = rss()?;
    let http = common::http_client()?;

    let sessions: Vec<Option<common::Session>> = if target.bare {
        vec![None; opts.sessions]
    } else {
        let created: Vec<Result<common::Session>> = stream::iter(0..opts.sessions)
            .map(|n| {
                let http = &http;
                async move { common::create_session(http, target, &format!("IDLE-{n}")).await }
            })
            .buffer_unordered(32)
            .collect()
            .await;
        created
            .into_iter()
            .map(|r| r.map(Some))
            .collect::<Result<_>>()?
    };
    eprintln!("{} sessions created", sessions.len());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after_sessions_kib = rss()?;

    let started = Instant::now();
    let sources = opts.sources;
    let pairs: Vec<Result<Pair>> = stream::iter(sessions.into_iter().enumerate())
        .map(|(n, s)| {
            let (http, target) = (&http, target);
            let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (n % sources as usize) as u8));
            async move {
                match s {
                    Some(s) => common::join_pair(target, &s, Some(source)).await,
                    None => common::open_pair(http, target, n, Some(source)).await,
                }
            }
        })
        .buffer_unordered(opts.connect_concurrency.max(1))
        .collect()
        .await;
    let pairs: Vec<Pair> = pairs.into_iter().collect::<Result<_>>()?;
    let connect_s = started.elapsed().as_secs_f64();
    let connections = pairs.len() * 2;
    eprintln!("{connections} connections open in {connect_s:.1} s");

    // Each socket is read (so pings are answered) until the end.
    let stop = tokio::sync::watch::channel(false);
    let mut holders = Vec::with_capacity(connections);
    for p in pairs {
        for ws in [p.agent, p.customer] {
            let mut stop = stop.1.clone();
            holders.push(tokio::spawn(async move {
                let mut ws = ws;
                loop {
                    tokio::select! {
                        _ = stop.changed() => return false,
                        m = ws.next() => match m {
                            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return true,
                            Some(Ok(_)) => {}
                        }
                    }
                }
            }));
        }
    }
    tokio::time::sleep(opts.settle).await;
    let rss_connected_kib = rss()?;
    tokio::time::sleep(opts.hold).await;
    let _ = stop.0.send(true);
    let mut dropped = 0;
    for h in holders {
        dropped += usize::from(h.await.unwrap_or(true));
    }
    let per = |from: u64| (rss_connected_kib as f64 - from as f64) / connections as f64;
    Ok(Outcome {
        target: target.name(),
        sessions: opts.sessions,
        connections,
        rss_start_kib,
        rss_after_sessions_kib,
        rss_connected_kib,
        kib_per_connection: per(rss_after_sessions_kib),
        kib_per_connection_incl_sessions: per(rss_start_kib),
        connect_s,
        dropped_during_hold: dropped,
    })
}
