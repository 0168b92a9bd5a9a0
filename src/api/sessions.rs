//! `/api/v1/sessions`: create, list, get, close.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::app::AppState;
use crate::auth::{ApiKeyCaller, Caller, Role, TokenMinter, hash_token};
use crate::error::ApiError;
use crate::session::RoomError;
use crate::session::view::SessionView;
use crate::store::sessions::{Created, ListFilter};
use crate::store::{NewSession, SessionRow, SessionStatus, SlotRow, now_ms};
use crate::vocabulary::{CLAIM_DEFAULT, LOCALES, is_angle, is_area, is_plain_text};

const MAX_TEXT: usize = 200;
const MAX_SLOTS: usize = 100;
const MAX_EXPIRES_IN_S: u64 = 30 * 24 * 3600;

/// A new capture session. Only `claim_ref` is required.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct CreateSession {
    /// The claims system's reference for the claim, 1 to 200 characters.
    #[schema(min_length = 1, max_length = 200, example = "CLM-2024-0042")]
    claim_ref: String,
    #[serde(default)]
    vehicle: Option<Vehicle>,
    #[serde(default)]
    customer: Option<Customer>,
    #[serde(default)]
    checklist: Option<ChecklistSpec>,
    /// The customer page's language.
    #[serde(default)]
    #[schema(value_type = Option<crate::api::openapi::Locale>)]
    locale: Option<String>,
    /// Seconds until the session expires, 1 to 2592000 (30 days); the default is the server's
    /// `--session-ttl`.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 2592000)]
    expires_in_s: Option<u64>,
    /// Where this session's webhooks (`session.started`, `capture.created`, `session.closed`) are
    /// sent, signed per Standard Webhooks.
    #[serde(default)]
    #[schema(format = "uri")]
    webhook_url: Option<String>,
}

/// The insured vehicle; every field at most 200 characters.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
struct Vehicle {
    /// Licence plate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    plate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    vin: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    make: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    color: Option<String>,
}

/// The customer; every field at most 200 characters.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
struct Customer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    phone: Option<String>,
}

/// The pictures to ask for: `"claim_default"` (also when omitted) or a list of at most 100 slots.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
#[schema(as = Checklist)]
enum ChecklistSpec {
    /// A named checklist: `claim_default` (VIN, odometer, four overviews, both plates).
    #[schema(example = "claim_default")]
    Named(String),
    Slots(Vec<SlotSpec>),
}

/// One picture to ask for.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
struct SlotSpec {
    #[schema(value_type = crate::api::openapi::Area)]
    area: String,
    #[schema(value_type = crate::api::openapi::Angle)]
    angle: String,
    /// A label for people, at most 200 characters.
    #[serde(default)]
    label: Option<String>,
}

/// An absolute http(s) URL with a host, as given (at most 2,048 characters, no control
/// characters): deliveries go to exactly this text.
fn is_webhook_url(u: &str) -> bool {
    u.len() <= 2048
        && is_plain_text(u, false)
        && reqwest::Url::parse(u)
            .is_ok_and(|url| matches!(url.scheme(), "http" | "https") && url.host().is_some())
}

fn too_long(s: &Option<String>) -> bool {
    s.as_ref().is_some_and(|s| s.chars().count() > MAX_TEXT)
}

/// Checks a create request and turns its checklist into slots.
fn validate(req: &CreateSession) -> Result<Vec<SlotRow>, ApiError> {
    let claim_ref = req.claim_ref.trim();
    if claim_ref.is_empty() || claim_ref.chars().count() > MAX_TEXT {
        return Err(ApiError::unprocessable(
            "invalid_claim_ref",
            "claim_ref must be 1 to 200 characters",
        ));
    }
    if !is_plain_text(claim_ref, false) {
        return Err(ApiError::unprocessable(
            "invalid_claim_ref",
            "claim_ref may not hold control characters",
        ));
    }
    if let Some(v) = &req.vehicle
        && [&v.plate, &v.vin, &v.make, &v.model, &v.color]
            .into_iter()
            .any(too_long)
    {
        return Err(ApiError::unprocessable(
            "invalid_vehicle",
            "vehicle fields are at most 200 characters",
        ));
    }
    if let Some(c) = &req.customer
        && [&c.name, &c.phone].into_iter().any(too_long)
    {
        return Err(ApiError::unprocessable(
            "invalid_customer",
            "customer fields are at most 200 characters",
        ));
    }
    if let Some(l) = &req.locale
        && !LOCALES.contains(&l.as_str())
    {
        return Err(ApiError::unprocessable(
            "invalid_locale",
            "locale must be \"zh-CN\" or \"en\"",
        ));
    }
    if let Some(s) = req.expires_in_s
        && !(1..=MAX_EXPIRES_IN_S).contains(&s)
    {
        return Err(ApiError::unprocessable(
            "invalid_expires_in",
            "expires_in_s must be 1 to 2592000",
        ));
    }
    if let Some(u) = &req.webhook_url
        && !is_webhook_url(u)
    {
        return Err(ApiError::unprocessable(
            "invalid_webhook_url",
            "webhook_url must be an http(s) URL",
        ));
    }
    let specs: Vec<(String, String, Option<String>)> = match &req.checklist {
        None => default_checklist(),
        Some(ChecklistSpec::Named(n)) if n == "claim_default" => default_checklist(),
        Some(ChecklistSpec::Named(n)) => {
            return Err(ApiError::unprocessable(
                "invalid_checklist",
                format!("unknown checklist `{n}`"),
            ));
        }
        Some(ChecklistSpec::Slots(slots)) => {
            if slots.len() > MAX_SLOTS {
                return Err(ApiError::unprocessable(
                    "invalid_checklist",
                    "at most 100 checklist slots",
                ));
            }
            for s in slots {
                if !is_area(&s.area) {
                    return Err(ApiError::unprocessable(
                        "invalid_area",
                        format!("unknown area `{}`", s.area),
                    ));
                }
                if !is_angle(&s.angle) {
                    return Err(ApiError::unprocessable(
                        "invalid_angle",
                        format!("unknown angle `{}`", s.angle),
                    ));
                }
                if too_long(&s.label) {
                    return Err(ApiError::unprocessable(
                        "invalid_checklist",
                        "slot labels are at most 200 characters",
                    ));
                }
                if s.label.as_ref().is_some_and(|l| !is_plain_text(l, false)) {
                    return Err(ApiError::unprocessable(
                        "invalid_checklist",
                        "slot labels may not hold control characters",
                    ));
                }
            }
            slots
                .iter()
                .map(|s| (s.area.clone(), s.angle.clone(), s.label.clone()))
                .collect()
        }
    };
    Ok(specs
        .into_iter()
        .enumerate()
        .map(|(i, (area, angle, label))| SlotRow {
            id: format!("slot_{}", i + 1),
            position: i as i64 + 1,
            area,
            angle,
            label,
            status: "pending".into(),
            capture_id: None,
        })
        .collect())
}

fn default_checklist() -> Vec<(String, String, Option<String>)> {
    CLAIM_DEFAULT
        .iter()
        .map(|(a, g)| (a.to_string(), g.to_string(), None))
        .collect()
}

/// A new session id: `ses_` and a UUIDv7 in hex, so ids sort by creation time.
fn new_session_id() -> String {
    format!("ses_{}", uuid::Uuid::now_v7().simple())
}

/// The session as a claims system sees it, with the join links (they carry the tokens).
#[derive(Serialize, utoipa::ToSchema)]
struct SessionWithLinks {
    #[serde(flatten)]
    view: SessionView,
    /// Opens the agent console joined to this session (the token is in the URL fragment).
    #[schema(format = "uri")]
    agent_url: String,
    /// The link to send to the customer: opens the customer page joined to this session.
    #[schema(format = "uri")]
    customer_url: String,
    /// The agent's join token (also in `agent_url`).
    agent_token: String,
    /// The customer's join token (also in `customer_url`).
    customer_token: String,
}

/// The session's `(agent_url, customer_url)`: the tokens ride in the fragment, which browsers
/// never send to a server (nor put in a `Referer`).
pub(super) fn links(state: &AppState, row: &SessionRow) -> (String, String) {
    let agent_token = state.tokens.token(&row.token_salt, Role::Agent);
    let customer_token = state.tokens.token(&row.token_salt, Role::Customer);
    (
        format!(
            "{}/agent/?session={}#token={agent_token}",
            state.public_url, row.id
        ),
        format!("{}/customer/#token={customer_token}", state.public_url),
    )
}

fn with_links(state: &AppState, row: &SessionRow, view: SessionView) -> SessionWithLinks {
    let agent_token = state.tokens.token(&row.token_salt, Role::Agent);
    let customer_token = state.tokens.token(&row.token_salt, Role::Customer);
    let (agent_url, customer_url) = links(state, row);
    SessionWithLinks {
        agent_url,
        customer_url,
        view,
        agent_token,
        customer_token,
    }
}

async fn load_view(state: &AppState, row: &SessionRow) -> Result<SessionView, ApiError> {
    let slots = state.store.slots(&row.id).await?;
    let mut view = SessionView::new(
        row,
        slots,
        state.registry.presence(&row.id).await?,
        now_ms(),
    );
    view.capture_count = state.store.capture_count(&row.id).await?;
    Ok(view)
}

#[utoipa::path(
    post,
    path = "/api/v1/sessions",
    tag = "sessions",
    summary = "Create a session",
    description = "Creates a capture session and its two join links. `Idempotency-Key` makes a \
retry safe: the same key with the same body answers the same session again (201, same id and \
tokens, `Idempotent-Replayed: true`); with a different body, 409 `idempotency_key_reused`. Keys \
are scoped to the API key.",
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "1 to 255 characters; makes a retry safe."),
    ),
    request_body = CreateSession,
    responses(
        (status = 201, description = "Created (or replayed under the same `Idempotency-Key`).", body = SessionWithLinks,
            headers(
                ("Location" = String, description = "`/api/v1/sessions/{id}`"),
                ("Idempotent-Replayed" = String, description = "`true` when this answers an earlier request with the same key"),
            )),
        (status = 400, description = "`malformed_json`, `invalid_body`, `invalid_idempotency_key`"),
        (status = 401, description = "`unauthorized`: no or unknown API key"),
        (status = 408, description = "`request_timeout`: the body stopped arriving for `--body-timeout-s`"),
        (status = 409, description = "`idempotency_key_reused`: the key was used with a different body"),
        (status = 415, description = "`unsupported_media_type`: not `application/json`"),
        (status = 422, description = "`invalid_body`, `invalid_claim_ref`, `invalid_vehicle`, `invalid_customer`, \
`invalid_locale`, `invalid_expires_in`, `invalid_webhook_url`, `invalid_checklist`, `invalid_area`, `invalid_angle`"),
    ),
    security(("api_key" = [])),
)]
pub async fn create_session(
    State(state): State<AppState>,
    ApiKeyCaller(key): ApiKeyCaller,
    headers: HeaderMap,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(raw) = body?;
    let request_hash = Sha256::digest(raw.to_string().as_bytes()).to_vec();
    let req: CreateSession = serde_json::from_value(raw)
        .map_err(|e| ApiError::unprocessable("invalid_body", e.to_string()))?;
    let slots = validate(&req)?;
    if state.settings.webhook_public_only
        && let Some(host) = req
            .webhook_url
            .as_deref()
            .and_then(crate::webhooks::address::non_public_literal)
    {
        return Err(ApiError::unprocessable(
            "invalid_webhook_url",
            format!("webhook_url must be on a public internet address, and {host} is not"),
        ));
    }

    let idem_key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => {
            let k = v
                .to_str()
                .ok()
                .map(str::trim)
                .filter(|k| !k.is_empty() && k.len() <= 255);
            Some(
                k.ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_idempotency_key",
                        "Idempotency-Key must be 1 to 255 visible characters",
                    )
                })?
                .to_owned(),
            )
        }
    };
    let scope = format!("{}:create_session", key.0);

    let now = now_ms();
    let ttl_s = req.expires_in_s.unwrap_or(state.settings.session_ttl);
    let row = SessionRow {
        id: new_session_id(),
        claim_ref: req.claim_ref.trim().to_owned(),
        status: SessionStatus::Created,
        locale: req.locale.clone(),
        vehicle: req
            .vehicle
            .as_ref()
            .map(|v| serde_json::to_string(v).unwrap_or_default()),
        customer: req
            .customer
            .as_ref()
            .map(|c| serde_json::to_string(c).unwrap_or_default()),
        webhook_url: req.webhook_url.clone(),
        token_salt: TokenMinter::new_salt(),
        created_at: now,
        expires_at: now.saturating_add(
            i64::try_from(ttl_s)
                .unwrap_or(i64::MAX)
                .saturating_mul(1000),
        ),
        started_at: None,
        closed_at: None,
        closed_by: None,
    };
    let tokens = Role::BOTH
        .iter()
        .map(|r| {
            (
                hash_token(&state.tokens.token(&row.token_salt, *r)),
                r.as_str(),
            )
        })
        .collect();
    let new = NewSession {
        row,
        slots,
        tokens,
        idempotency: idem_key.map(|k| (scope, k, request_hash.clone())),
    };
    let (row, replayed) = match state.store.create_session(&new).await? {
        Created::New => (new.row, false),
        Created::Existing {
            session_id,
            request_hash: prior,
        } => {
            if prior != request_hash {
                return Err(ApiError::conflict(
                    "idempotency_key_reused",
                    "this Idempotency-Key was used with a different request",
                ));
            }
            let row = state
                .store
                .get_session(&session_id)
                .await?
                .ok_or_else(|| ApiError::internal("idempotent session vanished"))?;
            (row, true)
        }
    };
    if !replayed {
        tracing::info!(session = %row.id, claim_ref = %row.claim_ref, "session created");
    }
    let view = load_view(&state, &row).await?;
    let body = with_links(&state, &row, view);
    let mut res = (StatusCode::CREATED, Json(body)).into_response();
    if let Ok(loc) = HeaderValue::from_str(&format!("/api/v1/sessions/{}", row.id)) {
        res.headers_mut().insert(header::LOCATION, loc);
    }
    if replayed {
        res.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(res)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only sessions with this status.
    #[param(value_type = Option<SessionStatus>)]
    status: Option<String>,
    /// Only sessions with this `claim_ref` (exact match).
    claim_ref: Option<String>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Page size, 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<u32>,
}

/// A page of sessions, newest first. Items carry no tokens or links.
#[derive(Serialize, utoipa::ToSchema)]
struct SessionList {
    items: Vec<SessionView>,
    /// Pass as `cursor` for the next page; null on the last page.
    next_cursor: Option<String>,
}

#[utoipa::path(
    get,
    path = "/api/v1/sessions",
    tag = "sessions",
    summary = "List sessions",
    description = "Newest first, with cursor pagination: pass `next_cursor` as `cursor` for the \
next page.",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of sessions", body = SessionList),
        (status = 400, description = "`invalid_query` (bad `status` or `limit`), `invalid_cursor`"),
        (status = 401, description = "`unauthorized`: no or unknown API key"),
    ),
    security(("api_key" = [])),
)]
pub async fn list_sessions(
    State(state): State<AppState>,
    ApiKeyCaller(_): ApiKeyCaller,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query?;
    let status = match q.status.as_deref() {
        None | Some("") => None,
        Some(s) => Some(SessionStatus::parse(s).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_query",
                "status must be created, active, closed or expired",
            )
        })?),
    };
    let before_id = match q.cursor.as_deref() {
        None | Some("") => None,
        Some(c) => Some(
            URL_SAFE_NO_PAD
                .decode(c)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .filter(|s| s.starts_with("ses_"))
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_cursor",
                        "cursor is not one this service gave out",
                    )
                })?,
        ),
    };
    if q.claim_ref
        .as_ref()
        .is_some_and(|c| !is_plain_text(c, false))
    {
        return Err(ApiError::bad_request(
            "invalid_query",
            "claim_ref may not hold control characters",
        ));
    }
    let limit = q.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_query",
            "limit must be 1 to 200",
        ));
    }
    let mut rows = state
        .store
        .list_sessions(&ListFilter {
            status,
            claim_ref: q.claim_ref,
            before_id,
            limit: limit + 1,
        })
        .await?;
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next_cursor =
        more.then(|| URL_SAFE_NO_PAD.encode(rows.last().map(|r| r.id.as_str()).unwrap_or("")));
    let mut items = Vec::with_capacity(rows.len());
    for row in &rows {
        items.push(load_view(&state, row).await?);
    }
    Ok(Json(
        serde_json::to_value(SessionList { items, next_cursor }).map_err(ApiError::internal)?,
    ))
}

pub(super) async fn session_for(
    state: &AppState,
    caller: &Caller,
    id: &str,
    roles: &[Role],
) -> Result<SessionRow, ApiError> {
    let row = state.store.get_session(id).await?;
    match (row, caller) {
        (None, _) => Err(ApiError::not_found("session")),
        (Some(row), c) if c.may_access(id, roles) => Ok(row),
        (Some(_), Caller::Participant { session, .. }) if session.id == id => Err(
            ApiError::forbidden("forbidden", "this role may not do that"),
        ),
        (Some(_), _) => Err(ApiError::not_found("session")),
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/sessions/{id}",
    tag = "sessions",
    summary = "Get a session",
    description = "The session with `presence` (who is connected now), the checklist with each \
slot's status and the capture count. With the API key it also carries `agent_url`, \
`customer_url`, `agent_token` and `customer_token`, so a claims system can send a link again; \
with a join token it is a plain `SessionView`, without them.",
    params(("id" = String, Path, description = "The session id (`ses_…`)")),
    responses(
        (status = 200, description = "The session (with the links for an API key)", body = SessionWithLinks),
        (status = 401, description = "`unauthorized`: no or unknown credential"),
        (status = 404, description = "`not_found`: no such session (or not this token's session)"),
        (status = 410, description = "`session_closed`, `session_expired`: the join token died with its session"),
    ),
    security(("api_key" = []), ("join_token" = []), ("token_query" = [])),
)]
pub async fn get_session(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let row = session_for(&state, &caller, &id, &Role::BOTH).await?;
    let view = load_view(&state, &row).await?;
    Ok(match caller {
        Caller::ApiKey(_) => Json(with_links(&state, &row, view)).into_response(),
        Caller::Participant { .. } => Json(view).into_response(),
    })
}

#[utoipa::path(
    post,
    path = "/api/v1/sessions/{id}/close",
    tag = "sessions",
    summary = "Close a session",
    description = "Ends the session: both peers are sent `session.closed` and their connections \
close with 4009; later joins get 410 and the join tokens stop working. Closing a closed session \
answers 200 again; an expired one answers 410 `session_expired`. The customer's token gets 403.",
    params(("id" = String, Path, description = "The session id (`ses_…`)")),
    responses(
        (status = 200, description = "The closed session", body = SessionView),
        (status = 401, description = "`unauthorized`: no or unknown credential"),
        (status = 403, description = "`forbidden`: the customer's token may not close"),
        (status = 404, description = "`not_found`: no such session"),
        (status = 410, description = "`session_expired`; with a join token also `session_closed`"),
    ),
    security(("api_key" = []), ("join_token" = [])),
)]
pub async fn close_session(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<SessionView>, ApiError> {
    session_for(&state, &caller, &id, &[Role::Agent]).await?;
    let by = match &caller {
        Caller::ApiKey(_) => "claims_system",
        Caller::Participant { .. } => "agent",
    };
    match state.registry.end(&id, SessionStatus::Closed, by).await {
        Ok(_) => {}
        Err(RoomError::NotFound) => return Err(ApiError::not_found("session")),
        Err(RoomError::Store(e)) => return Err(e.into()),
        Err(e) => return Err(ApiError::internal(e)),
    }
    let row = state
        .store
        .get_session(&id)
        .await?
        .ok_or_else(|| ApiError::not_found("session"))?;
    if row.status == SessionStatus::Expired {
        return Err(ApiError::gone(
            "session_expired",
            "the session had already expired",
        ));
    }
    Ok(Json(load_view(&state, &row).await?))
}
