//! The capture pipeline as the customer lives it: the agent sends `capture.request`, the customer's
//! page uploads the still with its token, and the clock runs from the first byte of the upload to
//! `capture.created` arriving on the customer's WebSocket.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt, stream};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::common::{self, Latency, Rng, Session, Target, Ws};

#[derive(Clone, Debug)]
pub struct Opts {
    pub width: u32,
    pub height: u32,
    /// Uploads per uploader when `duration` is not given.
    pub count: usize,
    pub uploaders: usize,
    /// Sustained mode: each uploader keeps uploading for this long (after `warmup`).
    pub duration: Option<Duration>,
    pub warmup: Duration,
    /// Distinct generated stills, used in turn.
    pub variants: usize,
    pub quality: u8,
}

#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub width: u32,
    pub height: u32,
    pub jpeg_bytes: usize,
    pub uploaders: usize,
    pub captures: u64,
    /// Upload start to `capture.created` at the customer.
    pub latency: Latency,
    /// Upload start to the 201 response.
    pub http: Latency,
    /// Captures completed per second in the measured window (sustained mode).
    pub captures_per_s: Option<f64>,
    pub errors: u64,
}

/// A camera-like still: a sky-to-ground gradient, a car-like body with panel edges and a specular
/// band, fine texture, and sensor noise, so the JPEG is as costly to decode as a real photo (a flat
/// colour would compress to almost nothing and decode in no time).
pub fn camera_like(width: u32, height: u32, seed: u64, quality: u8) -> Result<Vec<u8>> {
    let mut img = image::RgbImage::new(width, height);
    // The noise only needs to look like sensor noise.
    let mut rng = Rng::new(seed);
    let (w, h) = (width as f32, height as f32);
    let horizon = h * (0.40 + (seed % 7) as f32 * 0.01);
    let (bx0, bx1, by0, by1) = (w * 0.12, w * 0.88, h * 0.35, h * 0.80);
    for (x, y, px) in img.enumerate_pixels_mut() {
        let (fx, fy) = (x as f32, y as f32);
        let mut c = if fy < horizon {
            let t = fy / horizon;
            [110.0 + 60.0 * t, 150.0 + 50.0 * t, 210.0 + 20.0 * t]
        } else {
            let t = (fy - horizon) / (h - horizon);
            // Asphalt with a coarse texture.
            let tex = (((x / 3) ^ (y / 2)) % 17) as f32;
            [
                90.0 - 30.0 * t + tex,
                88.0 - 30.0 * t + tex,
                85.0 - 28.0 * t + tex,
            ]
        };
        if fx > bx0 && fx < bx1 && fy > by0 && fy < by1 {
            // The car body: a metallic gradient, panel gaps every eighth of its width, a wheel
            // arch darker band, and a specular highlight band.
            let u = (fx - bx0) / (bx1 - bx0);
            let v = (fy - by0) / (by1 - by0);
            let base = 150.0 + 60.0 * (1.0 - v) - 30.0 * (u - 0.5).abs();
            c = [base * 0.55, base * 0.60, base * 0.70];
            if ((u * 8.0).fract() < 0.006) || ((v * 3.0).fract() < 0.01) {
                c = [20.0, 20.0, 22.0];
            }
            let spec = (1.0 - ((v - 0.25) * 14.0).abs()).max(0.0);
            for ch in &mut c {
                *ch += 90.0 * spec;
            }
            if v > 0.75 && ((u - 0.2).abs() < 0.08 || (u - 0.8).abs() < 0.08) {
                c = [30.0, 30.0, 32.0];
            }
        }
        let r = rng.next_u64();
        for (i, ch) in c.iter_mut().enumerate() {
            // Sensor noise: about +-7 levels per channel.
            let n = ((r >> (i * 8)) & 0xFF) as f32 / 255.0 * 14.0 - 7.0;
            *ch = (*ch + n).clamp(0.0, 255.0);
        }
        *px = image::Rgb([c[0] as u8, c[1] as u8, c[2] as u8]);
    }
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality)
        .encode_image(&img)
        .context("encoding the test still")?;
    Ok(out)
}

struct Uploader {
    session: Session,
    agent_tx: futures_util::stream::SplitSink<Ws, Message>,
    customer: Ws,
    drain: tokio::task::JoinHandle<()>,
}

async fn uploader(http: &reqwest::Client, target: &Target, n: usize) -> Result<Uploader> {
    let s = common::create_session(http, target, &format!("CAPTURE-{n}")).await?;
    let pair = common::join_pair(target, &s, None).await?;
    let (agent_tx, mut agent_rx) = pair.agent.split();
    // The agent's screen receives `capture.created` and `checklist.updated` too: keep reading.
    let drain = tokio::spawn(async move { while let Some(Ok(_)) = agent_rx.next().await {} });
    Ok(Uploader {
        session: s,
        agent_tx,
        customer: pair.customer,
        drain,
    })
}

/// One capture: request, upload, wait. Returns (upload start to capture.created, to 201).
async fn one_capture(
    http: &reqwest::Client,
    target: &Target,
    u: &mut Uploader,
    request_id: &str,
    jpeg: &'static [u8],
) -> Result<(Duration, Duration)> {
    u.agent_tx
        .send(Message::Text(common::capture_request(request_id).into()))
        .await?;
    let within = Duration::from_secs(60);
    common::wait_for(&mut u.customer, "capture.request", within).await?;
    let started = Instant::now();
    let upload = async {
        let (status, body) =
            common::upload_still(http, target, &u.session, request_id, jpeg).await?;
        if status.as_u16() != 201 {
            bail!("upload: {status}: {body}");
        }
        Ok(started.elapsed())
    };
    let needle = format!("\"request_id\":\"{request_id}\"");
    let created = async {
        loop {
            let t = common::wait_for(&mut u.customer, "capture.created", within).await?;
            if t.contains(&needle) {
                return Ok::<_, anyhow::Error>(started.elapsed());
            }
        }
    };
    let (http_done, created) = tokio::join!(upload, created);
    Ok((created?, http_done?))
}

/// `variants` distinct camera-like stills, kept for the life of the process so that every upload
/// shares them without a copy.
pub fn stills(width: u32, height: u32, variants: usize, quality: u8) -> Result<Vec<&'static [u8]>> {
    let gen_started = std::time::Instant::now();
    let stills: Vec<&'static [u8]> = (0..variants.max(1))
        .map(|v| camera_like(width, height, v as u64 + 1, quality))
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .map(|v| &*Box::leak(v.into_boxed_slice()))
        .collect();
    eprintln!(
        "{} stills of {width}x{height} generated in {:.1} s ({} bytes each, about)",
        stills.len(),
        gen_started.elapsed().as_secs_f64(),
        stills[0].len()
    );
    Ok(stills)
}

pub async fn run(target: &Target, opts: &Opts) -> Result<Outcome> {
    if target.bare {
        bail!("the capture benchmark needs CaptureLink, not the bare relay");
    }
    let stills = stills(opts.width, opts.height, opts.variants, opts.quality)?;
    let http = common::http_client()?;
    let uploaders: Vec<Result<Uploader>> = stream::iter(0..opts.uploaders.max(1))
        .map(|n| uploader(&http, target, n))
        .buffer_unordered(16)
        .collect()
        .await;
    let uploaders: Vec<Uploader> = uploaders.into_iter().collect::<Result<_>>()?;

    let start = Instant::now();
    let (measure_from, measure_to) = match opts.duration {
        Some(d) => (start + opts.warmup, Some(start + opts.warmup + d)),
        None => (start, None),
    };
    let results =
        futures_util::future::join_all(uploaders.into_iter().enumerate().map(|(i, mut u)| {
            let (http, stills) = (&http, &stills);
            async move {
                let (mut lat, mut hl) = (common::histogram(), common::histogram());
                let (mut done, mut errors) = (0u64, 0u64);
                let mut n = 0usize;
                loop {
                    match measure_to {
                        Some(end) if Instant::now() >= end => break,
                        None if n >= opts.count => break,
                        _ => {}
                    }
                    let request_id = format!("r{i}-{n}");
                    let jpeg = stills[(i + n) % stills.len()];
                    n += 1;
                    match one_capture(http, target, &mut u, &request_id, jpeg).await {
                        Ok((created, http_done)) => {
                            let at = Instant::now();
                            if at >= measure_from && measure_to.is_none_or(|end| at < end) {
                                let _ = lat.record(created.as_micros() as u64);
                                let _ = hl.record(http_done.as_micros() as u64);
                                done += 1;
                            }
                        }
                        Err(e) => {
                            errors += 1;
                            eprintln!("capture {request_id}: {e:#}");
                            if errors > 10 {
                                break;
                            }
                        }
                    }
                }
                u.drain.abort();
                (lat, hl, done, errors)
            }
        }))
        .await;

    let (mut lat, mut hl): (Histogram<u64>, Histogram<u64>) =
        (common::histogram(), common::histogram());
    let (mut captures, mut errors) = (0, 0);
    for (l, h, d, e) in results {
        lat.add(&l)?;
        hl.add(&h)?;
        captures += d;
        errors += e;
    }
    Ok(Outcome {
        width: opts.width,
        height: opts.height,
        jpeg_bytes: stills[0].len(),
        uploaders: opts.uploaders.max(1),
        captures,
        latency: Latency::of(&lat),
        http: Latency::of(&hl),
        captures_per_s: opts.duration.map(|d| captures as f64 / d.as_secs_f64()),
        errors,
    })
}
