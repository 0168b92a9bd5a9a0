//! What every benchmark shares: the target, REST session creation, WebSocket connections, the
//! customer's still upload, the clock the payload timestamps use, a small random number source,
//! and reading a process's RSS and CPU time from /proc.

use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

pub type Ws = WebSocketStream<TcpStream>;

/// The server under test.
#[derive(Clone, Debug)]
pub struct Target {
    /// `http://host:port`, no trailing slash.
    pub base: String,
    pub api_key: String,
    /// The bare relay: no REST, no welcome; sockets are paired by `?session=`.
    pub bare: bool,
    /// Several nodes: the node the customers connect to (`base` is the agents'), else `base`.
    pub customer_base: Option<String>,
}

impl Target {
    pub fn new(base: &str, api_key: Option<String>, bare: bool) -> Result<Self> {
        let base = base.trim_end_matches('/').to_owned();
        if !base.starts_with("http://") {
            bail!("--url must be http://host:port (the benchmarks run without TLS)");
        }
        let api_key = match (api_key, bare) {
            (Some(k), _) => k,
            (None, true) => String::new(),
            (None, false) => bail!("--api-key (or CAPTURELINK_API_KEY) is needed for CaptureLink"),
        };
        Ok(Self {
            base,
            api_key,
            bare,
            customer_base: None,
        })
    }

    /// The customers connect to another node (several nodes sharing one database and a bus).
    pub fn with_customer_url(mut self, url: Option<&str>) -> Result<Self> {
        if let Some(url) = url {
            let url = url.trim_end_matches('/').to_owned();
            if !url.starts_with("http://") || self.bare {
                bail!("--customer-url must be http://host:port, and CaptureLink's");
            }
            self.customer_base = Some(url);
        }
        Ok(self)
    }

    /// The target the customers of the pairs connect to.
    fn customer_side(&self) -> Self {
        match &self.customer_base {
            Some(base) => Self {
                base: base.clone(),
                customer_base: None,
                ..self.clone()
            },
            None => self.clone(),
        }
    }

    pub fn name(&self) -> &'static str {
        if self.bare { "bare" } else { "capturelink" }
    }

    fn host_port(&self) -> &str {
        self.base.trim_start_matches("http://")
    }

    pub fn addr(&self) -> Result<SocketAddr> {
        self.host_port()
            .parse()
            .with_context(|| format!("{} is not an ip:port address", self.host_port()))
    }

    pub fn ws_url(&self, query: &str) -> String {
        format!("ws://{}/ws?{query}", self.host_port())
    }
}

/// Microseconds since the load generator started: what payloads carry as `ts:<us>;`.
pub fn now_us() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// The timestamp a payload carries, wherever it sits in the frame (`ts:<us>;`).
pub fn parse_ts(text: &str) -> Option<u64> {
    parse_tagged(text, "ts:")
}

/// The number after the first `tag` in `text` (`msg:12;` with the tag `msg:` gives 12).
pub fn parse_tagged(text: &str, tag: &str) -> Option<u64> {
    let at = text.find(tag)? + tag.len();
    let digits = &text[at..];
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

/// xorshift64*: fast and deterministic, for test stills' noise and the soak's jittered timers.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A session as `POST /api/v1/sessions` returns it (the parts the benchmarks use).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Session {
    pub id: String,
    pub agent_token: String,
    pub customer_token: String,
}

pub fn http_client() -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .tcp_nodelay(true)
        .build()?)
}

pub async fn create_session(
    http: &reqwest::Client,
    target: &Target,
    claim_ref: &str,
) -> Result<Session> {
    let res = http
        .post(format!("{}/api/v1/sessions", target.base))
        .bearer_auth(&target.api_key)
        .json(&serde_json::json!({"claim_ref": claim_ref}))
        .send()
        .await
        .context("POST /api/v1/sessions")?;
    let status = res.status();
    if !status.is_success() {
        let body = res.text().await.unwrap_or_default();
        bail!("POST /api/v1/sessions: {status}: {body}");
    }
    Ok(res.json().await?)
}

/// Small client buffers: the load generator may hold 20,000 sockets.
fn client_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(16 * 1024)
        .write_buffer_size(4 * 1024)
        .max_message_size(Some(1 << 20))
}

/// Opens a WebSocket, from `source` (an address of this host, e.g. 127.0.0.2) when given.
pub async fn ws_connect(target: &Target, query: &str, source: Option<IpAddr>) -> Result<Ws> {
    let addr = target.addr()?;
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = source {
        socket
            .bind(SocketAddr::new(ip, 0))
            .with_context(|| format!("bind {ip}"))?;
    }
    let stream = socket
        .connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    stream.set_nodelay(true)?;
    let request = target.ws_url(query).into_client_request()?;
    let (ws, _) =
        tokio_tungstenite::client_async_with_config(request, stream, Some(client_config()))
            .await
            .with_context(|| format!("WebSocket handshake with {}", target.base))?;
    Ok(ws)
}

/// Reads until a text frame whose `type` is `kind` arrives (other frames are skipped).
pub async fn wait_for(ws: &mut Ws, kind: &str, within: Duration) -> Result<String> {
    let needle = format!("\"type\":\"{kind}\"");
    tokio::time::timeout(within, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) if t.contains(&needle) => return Ok(t.to_string()),
                Some(Ok(Message::Close(f))) => {
                    return Err(anyhow!("closed while waiting for {kind}: {f:?}"));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(anyhow!("while waiting for {kind}: {e}")),
                None => return Err(anyhow!("connection ended while waiting for {kind}")),
            }
        }
    })
    .await
    .map_err(|_| anyhow!("no {kind} within {within:?}"))?
}

/// An agent and a customer of one session, both joined and aware of each other.
pub struct Pair {
    pub agent: Ws,
    pub customer: Ws,
    /// The last `seq` each has seen while joining (the agent's `peer.joined`, the customer's
    /// `welcome.last_seq`); 0 on the bare relay.
    pub agent_seq: u64,
    pub customer_seq: u64,
}

/// Creates a session (CaptureLink) and joins both roles; `source` picks the local address.
pub async fn open_pair(
    http: &reqwest::Client,
    target: &Target,
    n: usize,
    source: Option<IpAddr>,
) -> Result<Pair> {
    let within = Duration::from_secs(30);
    if target.bare {
        let run = std::process::id();
        let q = format!("session=bench-{run}-{n}-{}", now_us());
        let mut agent = ws_connect(target, &q, source).await?;
        let mut customer = ws_connect(target, &q, source).await?;
        wait_for(&mut agent, "paired", within).await?;
        wait_for(&mut customer, "paired", within).await?;
        return Ok(Pair {
            agent,
            customer,
            agent_seq: 0,
            customer_seq: 0,
        });
    }
    let s = create_session(http, target, &format!("BENCH-{n}")).await?;
    join_pair(target, &s, source).await
}

/// Joins both roles of an existing CaptureLink session.
pub async fn join_pair(target: &Target, s: &Session, source: Option<IpAddr>) -> Result<Pair> {
    let within = Duration::from_secs(30);
    let mut agent = ws_connect(target, &format!("token={}", s.agent_token), source).await?;
    wait_for(&mut agent, "welcome", within).await?;
    let customer_side = target.customer_side();
    let mut customer = ws_connect(
        &customer_side,
        &format!("token={}", s.customer_token),
        source,
    )
    .await?;
    let welcome = wait_for(&mut customer, "welcome", within).await?;
    let joined = wait_for(&mut agent, "peer.joined", within).await?;
    Ok(Pair {
        agent,
        customer,
        agent_seq: json_u64(&joined, "seq").unwrap_or(0),
        customer_seq: json_u64(&welcome, "last_seq").unwrap_or(0),
    })
}

/// A top-level number field of a JSON object's text.
pub fn json_u64(text: &str, field: &str) -> Option<u64> {
    serde_json::from_str::<serde_json::Value>(text)
        .ok()?
        .get(field)?
        .as_u64()
}

/// The customer page's upload of a still for the agent's `capture.request`: multipart `meta` and
/// `image`, the customer's token, the request id as `Idempotency-Key`. Returns the status and the
/// body.
pub async fn upload_still(
    http: &reqwest::Client,
    target: &Target,
    session: &Session,
    request_id: &str,
    jpeg: impl Into<std::borrow::Cow<'static, [u8]>>,
) -> Result<(reqwest::StatusCode, String)> {
    let meta = serde_json::json!({
        "area": "door_front_left", "angle": "close_up",
        "request_id": request_id, "source": "customer_still",
    });
    let form = reqwest::multipart::Form::new()
        .part(
            "meta",
            reqwest::multipart::Part::text(meta.to_string()).mime_str("application/json")?,
        )
        .part(
            "image",
            reqwest::multipart::Part::bytes(jpeg)
                .file_name("still.jpg")
                .mime_str("image/jpeg")?,
        );
    let res = http
        .post(format!(
            "{}/api/v1/sessions/{}/captures",
            target.base, session.id
        ))
        .bearer_auth(&session.customer_token)
        .header("Idempotency-Key", request_id)
        .multipart(form)
        .send()
        .await?;
    let status = res.status();
    Ok((status, res.text().await.unwrap_or_default()))
}

/// The agent's `capture.request` for the area and angle `upload_still` declares.
pub fn capture_request(request_id: &str) -> String {
    serde_json::json!({
        "type": "capture.request", "request_id": request_id,
        "area": "door_front_left", "angle": "close_up",
    })
    .to_string()
}

/// A still's size, `WIDTHxHEIGHT`.
pub fn parse_size(size: &str) -> Result<(u32, u32)> {
    size.split_once('x')
        .and_then(|(w, h)| Some((w.parse().ok()?, h.parse().ok()?)))
        .ok_or_else(|| anyhow!("--size is WIDTHxHEIGHT, not {size}"))
}

/// Resident set of a process, KiB (`VmRSS` of /proc/<pid>/status).
pub fn rss_kib(pid: u32) -> Option<u64> {
    proc_status(pid, "VmRSS")
}

/// A number of /proc/<pid>/status (`VmRSS`, `RssAnon` in KiB, `Threads`, …).
pub fn proc_status(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// User + system CPU time of a process, in clock ticks (1/100 s on Linux).
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// A latency histogram in microseconds, 1 us to 60 s, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Self {
        Self {
            count: h.len(),
            p50_us: h.value_at_quantile(0.50),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
            mean_us: h.mean(),
        }
    }
}

pub fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

pub fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_found_anywhere() {
        assert_eq!(
            parse_ts(r#"{"type":"guide","text":"ts:1234;","seq":3}"#),
            Some(1234)
        );
        assert_eq!(parse_ts(r#"{"data":{"candidate":"a b ts:7; c"}}"#), Some(7));
        assert_eq!(parse_ts(r#"{"type":"paired"}"#), None);
        assert_eq!(parse_tagged("soak-3-msg:17", "msg:"), Some(17));
        assert_eq!(parse_tagged("msg:x", "msg:"), None);
    }

    #[test]
    fn random_units_stay_in_range() {
        let mut r = Rng::new(7);
        let xs: Vec<f64> = (0..10_000).map(|_| r.unit()).collect();
        assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        assert!((mean - 0.5).abs() < 0.02, "{mean}");
    }

    #[test]
    fn medians() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn proc_readings_of_this_process() {
        let me = std::process::id();
        assert!(rss_kib(me).unwrap() > 0);
        assert!(proc_status(me, "RssAnon").unwrap() > 0);
        assert!(proc_status(me, "Threads").unwrap() >= 1);
        assert!(cpu_ticks(me).is_some());
    }
}
