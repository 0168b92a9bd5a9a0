//! The WebSocket messages: what clients may send (parsed and validated here, before anything is
//! routed) and what the server sends. Field names and type strings are the public contract.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::auth::Role;
use crate::vocabulary::{is_angle, is_area, is_hint, is_plain_text};

/// A text frame's largest allowed size.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
pub const MAX_GUIDE_TEXT: usize = 500;
pub const MAX_CHAT_TEXT: usize = 2000;
pub const MAX_REQUEST_ID: usize = 128;

/// A client message with its optional `id` (echoed in `ack` and `error.ref`).
#[derive(Debug, Clone, PartialEq)]
pub struct Incoming {
    pub id: Option<Value>,
    pub msg: ClientMsg,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ClientMsg {
    Signal {
        data: Value,
    },
    Guide(Guide),
    CaptureRequest(CaptureRequest),
    Camera(Camera),
    Chat {
        text: String,
    },
    Ping {
        t: Value,
    },
    /// Extension: the agent ends the session from the console (same as `POST …/close`).
    SessionClose,
    /// Extension: the agent adds a slot to the checklist during the call.
    ChecklistAdd(NewSlot),
    /// Extension: the customer's camera reports what it can do (torch, zoom, still size).
    DeviceCapabilities(DeviceCapabilities),
    /// Extension: the customer's page could not take or upload the still for a `capture.request`.
    CaptureFailed(CaptureFailure),
}

impl ClientMsg {
    pub fn kind(&self) -> &'static str {
        match self {
            ClientMsg::Signal { .. } => "signal",
            ClientMsg::Guide(_) => "guide",
            ClientMsg::CaptureRequest(_) => "capture.request",
            ClientMsg::Camera(_) => "camera",
            ClientMsg::Chat { .. } => "chat",
            ClientMsg::Ping { .. } => "ping",
            ClientMsg::SessionClose => "session.close",
            ClientMsg::ChecklistAdd(_) => "checklist.add",
            ClientMsg::DeviceCapabilities(_) => "device.capabilities",
            ClientMsg::CaptureFailed(_) => "capture.failed",
        }
    }

    /// The sender rule: which role may send this message.
    pub fn allowed_from(&self, role: Role) -> bool {
        match self {
            ClientMsg::Guide(_)
            | ClientMsg::CaptureRequest(_)
            | ClientMsg::Camera(_)
            | ClientMsg::SessionClose
            | ClientMsg::ChecklistAdd(_) => role == Role::Agent,
            ClientMsg::DeviceCapabilities(_) | ClientMsg::CaptureFailed(_) => {
                role == Role::Customer
            }
            ClientMsg::Signal { .. } | ClientMsg::Chat { .. } | ClientMsg::Ping { .. } => true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GuideBox {
    pub x: f64,
    pub y: f64,
    pub w: f64,
    pub h: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Target {
    pub area: String,
    pub angle: String,
}

/// Framing guidance; every field optional, `{}` clears the overlay.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Guide {
    #[serde(rename = "box", default, skip_serializing_if = "Option::is_none")]
    pub frame: Option<GuideBox>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Target>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaptureRequest {
    pub request_id: String,
    pub area: String,
    pub angle: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot_id: Option<String>,
}

/// A checklist slot the agent adds (`checklist.add`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewSlot {
    pub area: String,
    pub angle: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Facing {
    Environment,
    User,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Camera {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub torch: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zoom: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub facing: Option<Facing>,
}

/// The range of the camera's zoom, as `MediaTrackCapabilities.zoom` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ZoomRange {
    pub min: f64,
    pub max: f64,
    #[serde(default)]
    pub step: f64,
}

/// The size of the stills the camera takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhotoSize {
    pub width: u32,
    pub height: u32,
}

/// What the customer's camera can do (`device.capabilities`); absent means "not supported".
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceCapabilities {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub torch: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zoom: Option<ZoomRange>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub photo: Option<PhotoSize>,
}

/// The customer's page reports that it could not deliver the still for a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaptureFailure {
    pub request_id: String,
    pub code: String,
    #[serde(default)]
    pub message: String,
}

pub const MAX_FAILURE_MESSAGE: usize = 500;

/// Why a client message was refused; sent as `{"type":"error","code","message","ref"}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ProtocolError {
    pub code: &'static str,
    pub message: String,
    pub id: Option<Value>,
}

impl ProtocolError {
    fn new(code: &'static str, message: impl Into<String>, id: Option<Value>) -> Self {
        Self {
            code,
            message: message.into(),
            id,
        }
    }
}

/// Where a message's own fields are read from: the frame's text (the fast path; the structs
/// ignore `type` and `id`) or the object left after `type` and `id` were taken out of it.
enum Fields<'a> {
    Text(&'a str),
    Tree(Value),
}

impl Fields<'_> {
    fn get<T: for<'de> Deserialize<'de>>(self) -> Result<T, String> {
        match self {
            Fields::Text(text) => serde_json::from_str::<T>(text).map_err(|e| e.to_string()),
            Fields::Tree(v) => serde_json::from_value::<T>(v).map_err(|e| e.to_string()),
        }
    }
}

/// The envelope of a message, read without building a tree of the rest.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    #[serde(default)]
    id: Option<Value>,
}

/// Parses and validates one text frame.
pub fn parse(text: &str) -> Result<Incoming, ProtocolError> {
    // Fast path, for messages that are valid: the envelope, then the typed fields, each read
    // straight from the text. Building a `Value` tree of every message first took a quarter of
    // the server's instructions when relaying signals (docs/BENCHMARKS.md). Anything the fast path
    // does not accept goes the tree way, which gives every refusal its exact reason.
    if text.trim_start().starts_with('{')
        && let Ok(head) = serde_json::from_str::<Head<'_>>(text)
        && head
            .id
            .as_ref()
            .is_none_or(|v| v.is_string() || v.is_number())
        && let Ok(incoming) = message(&head.kind, Fields::Text(text), head.id)
    {
        return Ok(incoming);
    }
    parse_tree(text)
}

fn parse_tree(text: &str) -> Result<Incoming, ProtocolError> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| ProtocolError::new("malformed", format!("not valid JSON: {e}"), None))?;
    let Value::Object(mut obj) = value else {
        return Err(ProtocolError::new(
            "malformed",
            "a message must be a JSON object",
            None,
        ));
    };
    let id = obj.remove("id").filter(|v| !v.is_null());
    if id
        .as_ref()
        .is_some_and(|v| !(v.is_string() || v.is_number()))
    {
        return Err(ProtocolError::new(
            "malformed",
            "`id` must be a string or a number",
            None,
        ));
    }
    let kind = match obj.remove("type") {
        Some(Value::String(s)) => s,
        _ => {
            return Err(ProtocolError::new(
                "malformed",
                "missing string field `type`",
                id,
            ));
        }
    };
    message(&kind, Fields::Tree(Value::Object(obj)), id)
}

/// Reads and validates the fields of a message of type `kind`.
fn message(kind: &str, rest: Fields<'_>, id: Option<Value>) -> Result<Incoming, ProtocolError> {
    let invalid = |m: String| ProtocolError::new("invalid_message", m, id.clone());
    let msg = match kind {
        "signal" => {
            #[derive(Deserialize)]
            struct S {
                data: Value,
            }
            let s: S = rest.get().map_err(invalid)?;
            if s.data.is_null() {
                return Err(invalid("`data` is required".into()));
            }
            ClientMsg::Signal { data: s.data }
        }
        "guide" => {
            let g: Guide = rest.get().map_err(invalid)?;
            validate_guide(&g).map_err(invalid)?;
            ClientMsg::Guide(g)
        }
        "capture.request" => {
            let r: CaptureRequest = rest.get().map_err(invalid)?;
            if r.request_id.is_empty() || r.request_id.len() > MAX_REQUEST_ID {
                return Err(invalid(format!(
                    "`request_id` must be 1 to {MAX_REQUEST_ID} characters"
                )));
            }
            if !is_plain_text(&r.request_id, false) {
                return Err(invalid(
                    "`request_id` may not hold control characters".into(),
                ));
            }
            check_target(&r.area, &r.angle).map_err(invalid)?;
            ClientMsg::CaptureRequest(r)
        }
        "camera" => {
            let c: Camera = rest.get().map_err(invalid)?;
            if let Some(z) = c.zoom
                && !(z.is_finite() && z > 0.0 && z <= 100.0)
            {
                return Err(invalid("`zoom` must be a number in (0, 100]".into()));
            }
            if c == Camera::default() {
                return Err(invalid("`camera` needs `torch`, `zoom` or `facing`".into()));
            }
            ClientMsg::Camera(c)
        }
        "chat" => {
            #[derive(Deserialize)]
            struct C {
                text: String,
            }
            let c: C = rest.get().map_err(invalid)?;
            let n = c.text.chars().count();
            if c.text.trim().is_empty() || n > MAX_CHAT_TEXT {
                return Err(invalid(format!(
                    "`text` must be 1 to {MAX_CHAT_TEXT} characters"
                )));
            }
            ClientMsg::Chat { text: c.text }
        }
        "ping" => {
            #[derive(Deserialize)]
            struct P {
                #[serde(default)]
                t: Value,
            }
            let p: P = rest.get().map_err(invalid)?;
            ClientMsg::Ping { t: p.t }
        }
        "session.close" => ClientMsg::SessionClose,
        "checklist.add" => {
            let slot: NewSlot = rest.get().map_err(invalid)?;
            check_target(&slot.area, &slot.angle).map_err(invalid)?;
            if slot.label.as_ref().is_some_and(|l| l.chars().count() > 200) {
                return Err(invalid("`label` is at most 200 characters".into()));
            }
            if slot
                .label
                .as_ref()
                .is_some_and(|l| !is_plain_text(l, false))
            {
                return Err(invalid("`label` may not hold control characters".into()));
            }
            ClientMsg::ChecklistAdd(slot)
        }
        "device.capabilities" => {
            let caps: DeviceCapabilities = rest.get().map_err(invalid)?;
            if let Some(z) = caps.zoom {
                let ok = z.min.is_finite()
                    && z.max.is_finite()
                    && z.step.is_finite()
                    && z.min > 0.0
                    && z.max >= z.min
                    && z.max <= 1000.0
                    && z.step >= 0.0;
                if !ok {
                    return Err(invalid(
                        "`zoom` must be {min, max, step} with 0 < min <= max <= 1000".into(),
                    ));
                }
            }
            if let Some(p) = caps.photo
                && (!(1..=65_535).contains(&p.width) || !(1..=65_535).contains(&p.height))
            {
                return Err(invalid("`photo` must be {width, height} in pixels".into()));
            }
            ClientMsg::DeviceCapabilities(caps)
        }
        "capture.failed" => {
            let f: CaptureFailure = rest.get().map_err(invalid)?;
            if f.request_id.is_empty() || f.request_id.len() > MAX_REQUEST_ID {
                return Err(invalid(format!(
                    "`request_id` must be 1 to {MAX_REQUEST_ID} characters"
                )));
            }
            if !is_plain_text(&f.request_id, false) {
                return Err(invalid(
                    "`request_id` may not hold control characters".into(),
                ));
            }
            let code_ok = !f.code.is_empty()
                && f.code.len() <= 64
                && f.code
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !code_ok {
                return Err(invalid(
                    "`code` must be 1 to 64 characters of a-z, 0-9 and _".into(),
                ));
            }
            if f.message.chars().count() > MAX_FAILURE_MESSAGE {
                return Err(invalid(format!(
                    "`message` is at most {MAX_FAILURE_MESSAGE} characters"
                )));
            }
            ClientMsg::CaptureFailed(f)
        }
        other => {
            return Err(ProtocolError::new(
                "unknown_type",
                format!(
                    "unknown message type `{}`",
                    other.chars().take(64).collect::<String>()
                ),
                id,
            ));
        }
    };
    Ok(Incoming { id, msg })
}

fn check_target(area: &str, angle: &str) -> Result<(), String> {
    if !is_area(area) {
        return Err(format!("unknown area `{area}`"));
    }
    if !is_angle(angle) {
        return Err(format!("unknown angle `{angle}`"));
    }
    Ok(())
}

fn validate_guide(g: &Guide) -> Result<(), String> {
    if let Some(b) = g.frame {
        let unit = |v: f64| v.is_finite() && (0.0..=1.0).contains(&v);
        if !(unit(b.x) && unit(b.y) && unit(b.w) && unit(b.h)) {
            return Err("`box` values must be fractions of the frame, 0 to 1".into());
        }
        if b.w <= 0.0 || b.h <= 0.0 || b.x + b.w > 1.0 + 1e-9 || b.y + b.h > 1.0 + 1e-9 {
            return Err("`box` must have a size and lie within the frame".into());
        }
    }
    if let Some(h) = &g.hint
        && !is_hint(h)
    {
        return Err(format!("unknown hint `{h}`"));
    }
    if let Some(t) = &g.text
        && t.chars().count() > MAX_GUIDE_TEXT
    {
        return Err(format!("`text` is longer than {MAX_GUIDE_TEXT} characters"));
    }
    if let Some(t) = &g.target {
        check_target(&t.area, &t.angle)?;
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaveReason {
    Closed,
    Timeout,
    Replaced,
}

/// Events a recipient is sent with a `seq`. All but `Signal` are durable: logged before sent.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type")]
pub enum Event {
    #[serde(rename = "signal")]
    Signal { from: Role, data: Value },
    #[serde(rename = "guide")]
    Guide {
        from: Role,
        #[serde(flatten)]
        guide: Guide,
    },
    #[serde(rename = "capture.request")]
    CaptureRequest {
        from: Role,
        #[serde(flatten)]
        request: CaptureRequest,
    },
    #[serde(rename = "camera")]
    Camera {
        from: Role,
        #[serde(flatten)]
        camera: Camera,
    },
    #[serde(rename = "chat")]
    Chat { from: Role, text: String },
    #[serde(rename = "peer.joined")]
    PeerJoined { role: Role },
    #[serde(rename = "peer.left")]
    PeerLeft { role: Role, reason: LeaveReason },
    #[serde(rename = "capture.created")]
    CaptureCreated {
        capture: Box<crate::session::view::CaptureView>,
    },
    /// To the agent: a still for `request_id` did not arrive. `from` is absent when the server
    /// refused the customer's upload, `customer` when the customer's page reports it.
    #[serde(rename = "capture.failed")]
    CaptureFailed {
        #[serde(skip_serializing_if = "Option::is_none")]
        from: Option<Role>,
        request_id: String,
        code: String,
        message: String,
    },
    /// Extension: the customer's camera capabilities, relayed to the agent.
    #[serde(rename = "device.capabilities")]
    DeviceCapabilities {
        from: Role,
        #[serde(flatten)]
        capabilities: DeviceCapabilities,
    },
    /// Extension: the checklist changed (a slot was added or filled); the whole list, in order.
    #[serde(rename = "checklist.updated")]
    ChecklistUpdated {
        checklist: Vec<crate::store::SlotRow>,
    },
    #[serde(rename = "session.closed")]
    SessionClosed {
        /// `closed` (by the claims system or the agent) or `expired`.
        reason: &'static str,
        by: String,
    },
}

impl Event {
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Signal { .. } => "signal",
            Event::Guide { .. } => "guide",
            Event::CaptureRequest { .. } => "capture.request",
            Event::Camera { .. } => "camera",
            Event::Chat { .. } => "chat",
            Event::PeerJoined { .. } => "peer.joined",
            Event::PeerLeft { .. } => "peer.left",
            Event::CaptureCreated { .. } => "capture.created",
            Event::CaptureFailed { .. } => "capture.failed",
            Event::DeviceCapabilities { .. } => "device.capabilities",
            Event::ChecklistUpdated { .. } => "checklist.updated",
            Event::SessionClosed { .. } => "session.closed",
        }
    }

    pub fn is_durable(&self) -> bool {
        !matches!(self, Event::Signal { .. })
    }

    /// The event a relayed client message becomes, as the peer sees it.
    pub fn relayed(from: Role, msg: ClientMsg) -> Option<Event> {
        Some(match msg {
            ClientMsg::Signal { data } => Event::Signal { from, data },
            ClientMsg::Guide(guide) => Event::Guide { from, guide },
            ClientMsg::CaptureRequest(request) => Event::CaptureRequest { from, request },
            ClientMsg::Camera(camera) => Event::Camera { from, camera },
            ClientMsg::Chat { text } => Event::Chat { from, text },
            ClientMsg::DeviceCapabilities(capabilities) => {
                Event::DeviceCapabilities { from, capabilities }
            }
            ClientMsg::CaptureFailed(f) => Event::CaptureFailed {
                from: Some(from),
                request_id: f.request_id,
                code: f.code,
                message: f.message,
            },
            ClientMsg::Ping { .. } | ClientMsg::SessionClose | ClientMsg::ChecklistAdd(_) => {
                return None;
            }
        })
    }

    /// The JSON text sent to a recipient: the event with its `seq`.
    pub fn to_text(&self, seq: i64) -> String {
        #[derive(Serialize)]
        struct Sequenced<'a> {
            seq: i64,
            #[serde(flatten)]
            event: &'a Event,
        }
        serde_json::to_string(&Sequenced { seq, event: self }).expect("events serialize")
    }
}

/// An event's text (from [`Event::to_text`]) with another `seq` (the store's backends share it).
pub use capturelink_store_types::events::with_seq;

/// The `seq` of an event's text (from [`Event::to_text`]).
pub fn seq_of(body: &str) -> Option<i64> {
    let rest = body.strip_prefix("{\"seq\":")?;
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '-'))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// Replies that carry no `seq`; `type` comes first for whoever reads them by eye.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Reply<'a> {
    Ack {
        id: &'a Value,
    },
    Error {
        code: &'a str,
        message: &'a str,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a Value>,
    },
    Pong {
        t: &'a Value,
    },
}

fn reply(r: &Reply<'_>) -> String {
    serde_json::to_string(r).expect("replies serialize")
}

pub fn ack(id: &Value) -> String {
    reply(&Reply::Ack { id })
}

pub fn error(e: &ProtocolError) -> String {
    reply(&Reply::Error {
        code: e.code,
        message: &e.message,
        reference: e.id.as_ref(),
    })
}

pub fn pong(t: &Value) -> String {
    reply(&Reply::Pong { t })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn round_trip(v: Value) -> Incoming {
        parse(&v.to_string()).unwrap_or_else(|e| panic!("{v}: {e:?}"))
    }

    #[test]
    fn an_event_text_is_renumbered_and_its_seq_read() {
        let event = Event::PeerJoined {
            role: crate::auth::Role::Agent,
        };
        let text = event.to_text(7);
        assert_eq!(seq_of(&text), Some(7));
        let renumbered = with_seq(&text, 1234);
        assert_eq!(renumbered, event.to_text(1234));
        assert_eq!(seq_of(&renumbered), Some(1234));
        assert_eq!(seq_of(r#"{"type":"ack"}"#), None);
    }

    #[test]
    fn stored_text_with_control_characters_is_refused() {
        for text in [
            r#"{"type":"checklist.add","area":"hood","angle":"close_up","label":"dent\u0000"}"#,
            r#"{"type":"capture.request","request_id":"r\u001b[2J","area":"hood","angle":"close_up"}"#,
            r#"{"type":"capture.failed","request_id":"r\u0000","code":"still_failed"}"#,
        ] {
            let e = parse(text).expect_err(text);
            assert_eq!(e.code, "invalid_message", "{text}");
            assert!(
                e.message.contains("control characters"),
                "{text}: {}",
                e.message
            );
        }
    }

    #[test]
    fn the_fast_path_reads_what_the_tree_reads() {
        let texts = [
            r#"{"type":"signal","data":{"candidate":"candidate:1 1 udp 1 192.0.2.1 5 typ host","sdpMid":"0"},"id":7}"#,
            r#"{"data":{"sdp":"v=0\r\n","type":"offer"},"type":"signal"}"#,
            r#"{"type":"guide","box":{"x":0.1,"y":0.2,"w":0.3,"h":0.4},"hint":"closer","text":"a\"b","id":"g1"}"#,
            r#"{"type":"guide"}"#,
            r#"{"type":"chat","text":"你好","extra":[1,2,{"x":null}]}"#,
            r#"{"type":"ping","t":{"a":1},"id":null}"#,
            r#"{"type":"ping"}"#,
            r#"{"type":"camera","torch":true,"zoom":2.5,"facing":"environment"}"#,
            r#"{"type":"capture.request","request_id":"r1","area":"hood","angle":"close_up"}"#,
            r#"{"type":"checklist.add","area":"hood","angle":"close_up","label":"dent"}"#,
            r#"{"type":"device.capabilities","torch":false,"zoom":{"min":1,"max":5},"photo":{"width":4000,"height":3000}}"#,
            r#"{"type":"capture.failed","request_id":"r1","code":"still_failed"}"#,
            r#"{"type":"session.close"}"#,
            // Refusals go the tree way and keep their reasons.
            r#"{"type":"signal","data":1,"data":null}"#,
            r#"{"type":"chat","text":""}"#,
            r#"{"type":"nope"}"#,
            r#"{"type":7}"#,
            r#"{"type":"chat","text":"x","id":[1]}"#,
            r#"["signal"]"#,
            r#"{"type":"chat","text":"x"} trailing"#,
        ];
        for text in texts {
            assert_eq!(parse(text), parse_tree(text), "{text}");
        }
    }

    #[test]
    fn every_client_message_parses() {
        let i = round_trip(json!({"type":"signal","id":7,"data":{"sdp":"v=0"}}));
        assert_eq!(i.id, Some(json!(7)));
        assert_eq!(
            i.msg,
            ClientMsg::Signal {
                data: json!({"sdp":"v=0"})
            }
        );
        let i = round_trip(
            json!({"type":"guide","box":{"x":0.1,"y":0.2,"w":0.5,"h":0.5},
            "hint":"closer","text":"a bit more","target":{"area":"hood","angle":"close_up"}}),
        );
        let ClientMsg::Guide(g) = i.msg else { panic!() };
        assert_eq!(g.hint.as_deref(), Some("closer"));
        assert_eq!(g.frame.unwrap().w, 0.5);
        assert_eq!(
            round_trip(json!({"type":"guide"})).msg,
            ClientMsg::Guide(Guide::default())
        );
        let i = round_trip(json!({"type":"capture.request","id":"c1","request_id":"r1",
            "area":"front_bumper","angle":"front","slot_id":"slot_1"}));
        assert!(
            matches!(i.msg, ClientMsg::CaptureRequest(ref r) if r.slot_id.as_deref() == Some("slot_1"))
        );
        let i = round_trip(json!({"type":"camera","torch":true,"zoom":2.0,"facing":"environment"}));
        assert_eq!(
            i.msg,
            ClientMsg::Camera(Camera {
                torch: Some(true),
                zoom: Some(2.0),
                facing: Some(Facing::Environment)
            })
        );
        assert_eq!(
            round_trip(json!({"type":"chat","text":"你好"})).msg,
            ClientMsg::Chat {
                text: "你好".into()
            }
        );
        assert_eq!(
            round_trip(json!({"type":"ping","t":123})).msg,
            ClientMsg::Ping { t: json!(123) }
        );
        assert_eq!(
            round_trip(json!({"type":"session.close"})).msg,
            ClientMsg::SessionClose
        );
    }

    #[test]
    fn refusals_have_stable_codes_and_keep_the_id() {
        assert_eq!(parse("{not json").unwrap_err().code, "malformed");
        assert_eq!(parse("[1,2]").unwrap_err().code, "malformed");
        assert_eq!(parse(r#"{"id":1}"#).unwrap_err().code, "malformed");
        let e = parse(r#"{"type":"teleport","id":"x"}"#).unwrap_err();
        assert_eq!((e.code, e.id), ("unknown_type", Some(json!("x"))));
        let bad = [
            json!({"type":"guide","id":1,"hint":"sideways"}),
            json!({"type":"guide","id":1,"box":{"x":0.8,"y":0,"w":0.5,"h":0.1}}),
            json!({"type":"guide","id":1,"box":{"x":0,"y":0,"w":0,"h":0.1}}),
            json!({"type":"guide","id":1,"text":"x".repeat(501)}),
            json!({"type":"guide","id":1,"target":{"area":"wing","angle":"front"}}),
            json!({"type":"capture.request","id":1,"request_id":"r","area":"hood","angle":"sideways"}),
            json!({"type":"capture.request","id":1,"request_id":"","area":"hood","angle":"front"}),
            json!({"type":"camera","id":1}),
            json!({"type":"camera","id":1,"zoom":-1}),
            json!({"type":"camera","id":1,"facing":"up"}),
            json!({"type":"chat","id":1,"text":""}),
            json!({"type":"chat","id":1,"text":"x".repeat(2001)}),
            json!({"type":"signal","id":1}),
        ];
        for b in bad {
            let e = parse(&b.to_string()).unwrap_err();
            assert_eq!(
                (e.code, e.id.clone()),
                ("invalid_message", Some(json!(1))),
                "{b}"
            );
        }
        assert!(parse(&json!({"type":"guide","text":"字".repeat(500)}).to_string()).is_ok());
    }

    #[test]
    fn sender_rules() {
        let agent_only = [
            "guide",
            "capture.request",
            "camera",
            "session.close",
            "checklist.add",
        ];
        let samples = [
            json!({"type":"signal","data":"x"}),
            json!({"type":"guide"}),
            json!({"type":"capture.request","request_id":"r","area":"hood","angle":"front"}),
            json!({"type":"camera","torch":false}),
            json!({"type":"chat","text":"hi"}),
            json!({"type":"ping"}),
            json!({"type":"session.close"}),
            json!({"type":"checklist.add","area":"hood","angle":"close_up","label":"dent"}),
        ];
        for s in samples {
            let m = parse(&s.to_string()).unwrap().msg;
            assert!(m.allowed_from(Role::Agent));
            assert_eq!(
                m.allowed_from(Role::Customer),
                !agent_only.contains(&m.kind()),
                "{s}"
            );
        }
    }

    #[test]
    fn events_serialize_with_seq_and_from() {
        let e = Event::relayed(
            Role::Agent,
            ClientMsg::Guide(Guide {
                hint: Some("closer".into()),
                ..Guide::default()
            }),
        )
        .unwrap();
        let v: Value = serde_json::from_str(&e.to_text(5)).unwrap();
        assert_eq!(
            v,
            json!({"type":"guide","seq":5,"from":"agent","hint":"closer"})
        );
        let v: Value = serde_json::from_str(
            &Event::PeerLeft {
                role: Role::Customer,
                reason: LeaveReason::Timeout,
            }
            .to_text(1),
        )
        .unwrap();
        assert_eq!(
            v,
            json!({"type":"peer.left","seq":1,"role":"customer","reason":"timeout"})
        );
        assert!(
            !Event::Signal {
                from: Role::Agent,
                data: json!(1)
            }
            .is_durable()
        );
        assert!(Event::relayed(Role::Agent, ClientMsg::Ping { t: json!(1) }).is_none());
    }

    #[test]
    fn replies_have_no_seq() {
        let v: Value = serde_json::from_str(&ack(&json!("a"))).unwrap();
        assert_eq!(v, json!({"type":"ack","id":"a"}));
        let e = ProtocolError::new("forbidden", "no", Some(json!(3)));
        let v: Value = serde_json::from_str(&error(&e)).unwrap();
        assert_eq!(
            v,
            json!({"type":"error","code":"forbidden","message":"no","ref":3})
        );
        assert_eq!(pong(&json!(9)), r#"{"type":"pong","t":9}"#);
    }
}
