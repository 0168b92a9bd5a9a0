//! The join side of a session, for the two pages: what a join token stands for (`/join`), the
//! session's links again (`/sessions/{id}/links`) and the customer's link as a QR code.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use qrcode::QrCode;
use qrcode::render::svg;
use serde::Serialize;

use super::sessions::{links, session_for};
use crate::app::AppState;
use crate::auth::{Caller, Role};
use crate::error::ApiError;
use crate::store::{SessionStatus, now_ms};

/// What a join token stands for.
#[derive(Serialize, utoipa::ToSchema)]
pub struct JoinInfo {
    /// The session the token joins.
    session_id: String,
    #[schema(value_type = String, example = "customer")]
    role: Role,
    status: SessionStatus,
}

#[utoipa::path(
    get,
    path = "/api/v1/join",
    tag = "join",
    summary = "Check a join token",
    description = "Which session and role a join token stands for, and whether it still works. \
A browser cannot read why a WebSocket upgrade was refused, so the pages ask here when a \
connection fails before it opens: 410 means the session is over (stop retrying), 401 that the \
token is unknown.",
    responses(
        (status = 200, description = "The token works", body = JoinInfo),
        (status = 401, description = "`unauthorized`: no or unknown join token (an API key is not a join token)"),
        (status = 410, description = "`session_closed`, `session_expired`"),
    ),
    security(("join_token" = []), ("token_query" = [])),
)]
pub async fn get_join(caller: Caller) -> Result<Json<JoinInfo>, ApiError> {
    match caller {
        Caller::Participant { session, role } => Ok(Json(JoinInfo {
            status: session.status_at(now_ms()),
            session_id: session.id,
            role,
        })),
        Caller::ApiKey(_) => Err(ApiError::unauthorized()),
    }
}

/// A session's two join links.
#[derive(Serialize, utoipa::ToSchema)]
pub struct SessionLinks {
    /// Opens the agent console joined to this session.
    #[schema(format = "uri")]
    agent_url: String,
    /// The link for the customer's phone.
    #[schema(format = "uri")]
    customer_url: String,
}

async fn live_session(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<crate::store::SessionRow, ApiError> {
    let row = session_for(state, caller, id, &[Role::Agent]).await?;
    // The links die with the session: a closed session has nothing left to join.
    match row.status_at(now_ms()) {
        SessionStatus::Closed => Err(ApiError::gone("session_closed", "the session is closed")),
        SessionStatus::Expired => Err(ApiError::gone("session_expired", "the session has expired")),
        _ => Ok(row),
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/sessions/{id}/links",
    tag = "join",
    summary = "Get a session's join links",
    description = "The agent console's and the customer's links again (they carry the join \
tokens), for the API key or the session's agent (who may need to send the customer's link again).",
    params(("id" = String, Path, description = "The session id (`ses_…`)")),
    responses(
        (status = 200, description = "The links", body = SessionLinks),
        (status = 401, description = "`unauthorized`: no or unknown credential"),
        (status = 403, description = "`forbidden`: the customer's token"),
        (status = 404, description = "`not_found`: no such session"),
        (status = 410, description = "`session_closed`, `session_expired`"),
    ),
    security(("api_key" = []), ("join_token" = [])),
)]
pub async fn get_session_links(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<SessionLinks>, ApiError> {
    let row = live_session(&state, &caller, &id).await?;
    let (agent_url, customer_url) = links(&state, &row);
    Ok(Json(SessionLinks {
        agent_url,
        customer_url,
    }))
}

#[utoipa::path(
    get,
    path = "/api/v1/sessions/{id}/customer-qr.svg",
    tag = "join",
    summary = "The customer's link as a QR code",
    description = "An SVG QR code (error correction M) of the session's `customer_url`, for the \
customer to scan from the agent's screen.",
    params(("id" = String, Path, description = "The session id (`ses_…`)")),
    responses(
        (status = 200, description = "The QR code", content_type = "image/svg+xml", body = String),
        (status = 401, description = "`unauthorized`: no or unknown credential"),
        (status = 403, description = "`forbidden`: the customer's token"),
        (status = 404, description = "`not_found`: no such session"),
        (status = 410, description = "`session_closed`, `session_expired`"),
    ),
    security(("api_key" = []), ("join_token" = []), ("token_query" = [])),
)]
pub async fn get_customer_qr(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let row = live_session(&state, &caller, &id).await?;
    let (_, customer_url) = links(&state, &row);
    let svg = qr_svg(&customer_url).map_err(ApiError::internal)?;
    let mut res = svg.into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("image/svg+xml"),
    );
    // It carries a join token: keep it out of shared caches.
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-store"),
    );
    Ok(res)
}

/// Renders `text` as a black-on-white SVG QR code with a quiet zone.
pub fn qr_svg(text: &str) -> Result<String, qrcode::types::QrError> {
    let code = QrCode::with_error_correction_level(text, qrcode::EcLevel::M)?;
    Ok(code
        .render::<svg::Color<'_>>()
        .min_dimensions(256, 256)
        .dark_color(svg::Color("#000000"))
        .light_color(svg::Color("#ffffff"))
        .quiet_zone(true)
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qr_svg_is_an_svg_whose_size_grows_with_the_text() {
        let short = qr_svg("http://a/customer/#token=x").unwrap();
        assert!(
            short.starts_with("<?xml") && short.contains("<svg"),
            "{short}"
        );
        let long_text = format!("http://127.0.0.1:8080/customer/#token={}", "A".repeat(200));
        let long = qr_svg(&long_text).unwrap();
        assert!(long.len() > short.len());
    }
}
