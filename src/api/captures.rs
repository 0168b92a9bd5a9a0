//! Captures: upload (multipart), list, get, the original image and its thumbnail.

use axum::Json;
use axum::body::Body;
use axum::extract::multipart::MultipartRejection;
use axum::extract::{Multipart, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::app::AppState;
use crate::auth::{Caller, Role};
use crate::capture::{CaptureError, identify, kind_from_mime};
use crate::error::ApiError;
use crate::media::{ImageBody, MediaError};
use crate::session::RoomError;
use crate::session::view::CaptureView;
use crate::signaling::protocol::Event;
use crate::store::captures::CaptureRow;
use crate::store::{SessionRow, SessionStatus, now_ms};
use crate::vocabulary::{is_angle, is_area, is_plain_text};
use crate::webhooks::EventType;

use super::sessions::session_for;

/// The `meta` part's size at the most.
const MAX_META: usize = 16 * 1024;
const MAX_NOTE: usize = 1000;

/// The `meta` part of an upload: a JSON object.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
struct UploadMeta {
    #[schema(value_type = crate::api::openapi::Area)]
    area: String,
    #[schema(value_type = crate::api::openapi::Angle)]
    angle: String,
    /// The checklist slot this capture fills (by default the requested slot, if any).
    #[serde(default)]
    slot_id: Option<String>,
    /// The agent's `capture.request` this answers, 1 to 128 characters (required with the
    /// customer's token).
    #[serde(default)]
    request_id: Option<String>,
    /// At most 1000 characters.
    #[serde(default)]
    note: Option<String>,
    #[schema(value_type = crate::api::openapi::CaptureSource)]
    source: String,
}

// For the OpenAPI document only: `read_upload` streams the parts.
/// An upload: `multipart/form-data` with the parts `image` and `meta`.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct CaptureUpload {
    /// The picture: JPEG, PNG or WebP, stored byte for byte as received.
    #[schema(value_type = String, format = Binary, content_media_type = "application/octet-stream")]
    image: Vec<u8>,
    /// JSON text (the part's Content-Type may be `application/json` or none).
    meta: UploadMeta,
}

/// The parts of an upload, read with the size cap enforced while streaming.
struct Upload {
    meta: Bytes,
    image: Bytes,
    declared: Option<String>,
}

async fn read_upload(mut multipart: Multipart, max_bytes: usize) -> Result<Upload, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the image is larger than {max_bytes} bytes"),
        )
    };
    let bad = |e: axum::extract::multipart::MultipartError| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            too_large()
        } else if crate::error::is_body_timeout(&e) {
            ApiError::body_stalled()
        } else {
            ApiError::bad_request("invalid_multipart", e.body_text())
        }
    };
    let (mut meta, mut image, mut declared) = (None, None, None);
    while let Some(mut field) = multipart.next_field().await.map_err(bad)? {
        let name = field.name().unwrap_or("").to_owned();
        let cap = match name.as_str() {
            "image" => max_bytes,
            _ => MAX_META,
        };
        if name == "image" {
            declared = field.content_type().map(str::to_owned);
        }
        let mut buf = BytesMut::new();
        while let Some(chunk) = field.chunk().await.map_err(bad)? {
            if buf.len() + chunk.len() > cap {
                return Err(if name == "image" {
                    too_large()
                } else {
                    ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "payload_too_large",
                        format!("part `{name}` is too large"),
                    )
                });
            }
            buf.extend_from_slice(&chunk);
        }
        match name.as_str() {
            "image" => image = Some(buf.freeze()),
            "meta" => meta = Some(buf.freeze()),
            _ => {}
        }
    }
    Ok(Upload {
        meta: meta.ok_or_else(|| {
            ApiError::unprocessable("missing_meta", "the `meta` part is required")
        })?,
        image: image.ok_or_else(|| {
            ApiError::unprocessable("missing_image", "the `image` part is required")
        })?,
        declared,
    })
}

fn parse_meta(raw: &[u8]) -> Result<UploadMeta, ApiError> {
    let meta: UploadMeta = serde_json::from_slice(raw).map_err(|e| {
        ApiError::unprocessable("invalid_meta", format!("`meta` is not valid: {e}"))
    })?;
    if !is_area(&meta.area) {
        return Err(ApiError::unprocessable(
            "invalid_area",
            format!("unknown area `{}`", meta.area),
        ));
    }
    if !is_angle(&meta.angle) {
        return Err(ApiError::unprocessable(
            "invalid_angle",
            format!("unknown angle `{}`", meta.angle),
        ));
    }
    if !matches!(meta.source.as_str(), "customer_still" | "agent_frame") {
        return Err(ApiError::unprocessable(
            "invalid_source",
            "source must be customer_still or agent_frame",
        ));
    }
    if meta
        .note
        .as_ref()
        .is_some_and(|n| n.chars().count() > MAX_NOTE)
    {
        return Err(ApiError::unprocessable(
            "invalid_meta",
            "note is at most 1000 characters",
        ));
    }
    let ids = [&meta.request_id, &meta.slot_id];
    if meta.note.as_ref().is_some_and(|n| !is_plain_text(n, true))
        || ids
            .into_iter()
            .flatten()
            .any(|id| !is_plain_text(id, false))
    {
        return Err(ApiError::unprocessable(
            "invalid_meta",
            "note, request_id and slot_id may not hold control characters (a note may hold line breaks)",
        ));
    }
    if meta
        .request_id
        .as_ref()
        .is_some_and(|r| r.is_empty() || r.len() > 128)
    {
        return Err(ApiError::unprocessable(
            "invalid_meta",
            "request_id must be 1 to 128 characters",
        ));
    }
    Ok(meta)
}

fn capture_error(e: CaptureError) -> ApiError {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::UNPROCESSABLE_ENTITY);
    if status.is_server_error() {
        return ApiError::internal(e);
    }
    ApiError::new(status, e.code(), e.to_string())
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    match headers.get("idempotency-key") {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .map(str::trim)
            .filter(|k| !k.is_empty() && k.len() <= 255)
            .map(|k| Some(k.to_owned()))
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_idempotency_key",
                    "Idempotency-Key must be 1 to 255 visible characters",
                )
            }),
    }
}

fn created(state: &AppState, row: &CaptureRow, replayed: bool) -> Response {
    let mut res = (
        StatusCode::CREATED,
        Json(CaptureView::new(row, &state.public_url)),
    )
        .into_response();
    if let Ok(loc) = HeaderValue::from_str(&format!("/api/v1/captures/{}", row.id)) {
        res.headers_mut().insert(header::LOCATION, loc);
    }
    if replayed {
        res.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    res
}

/// `POST /sessions/{id}/captures`
#[utoipa::path(
    post,
    path = "/api/v1/sessions/{id}/captures",
    tag = "captures",
    summary = "Upload a capture",
    description = "Multipart with two parts: `image` (JPEG, PNG or WebP) and `meta` (JSON). The \
image is checked, measured (`quality`) and stored as received; both peers get `capture.created`. \
The customer's token uploads only `customer_still` captures answering a pending `request_id`; \
when such an upload fails the agent is sent `capture.failed`. `Idempotency-Key` makes a retry \
safe: the same key with the same bytes answers the same capture (201, `Idempotent-Replayed: \
true`); other bytes under the same key get 409.",
    params(
        ("id" = String, Path, description = "The session id (`ses_…`)"),
        ("Idempotency-Key" = Option<String>, Header, description = "1 to 255 characters; makes a retry safe."),
    ),
    request_body(content = inline(CaptureUpload), content_type = "multipart/form-data"),
    responses(
        (status = 201, description = "Stored (or replayed under the same `Idempotency-Key`).", body = CaptureView,
            headers(
                ("Location" = String, description = "`/api/v1/captures/{id}`"),
                ("Idempotent-Replayed" = String, description = "`true` when this answers an earlier upload with the same key"),
            )),
        (status = 400, description = "`invalid_multipart`, `invalid_idempotency_key`"),
        (status = 401, description = "`unauthorized`: no or unknown credential"),
        (status = 403, description = "`forbidden` (the customer uploads only `customer_still`), `request_required` (the customer needs a pending `request_id`)"),
        (status = 404, description = "`not_found`: no such session, or no such capture request"),
        (status = 408, description = "`request_timeout`: the body stopped arriving for `--body-timeout-s`"),
        (status = 409, description = "`idempotency_key_reused`, `request_fulfilled`"),
        (status = 410, description = "`session_closed`, `session_expired`"),
        (status = 413, description = "`payload_too_large`: over the server's `--max-upload-bytes`"),
        (status = 415, description = "`unsupported_media_type`, `media_type_mismatch` (the bytes are not what the part declares)"),
        (status = 422, description = "`missing_image`, `missing_meta`, `invalid_meta`, `invalid_area`, `invalid_angle`, \
`invalid_source`, `invalid_slot`, `image_too_large` (too many pixels), `corrupt_image`, `decode_failed`"),
        (status = 503, description = "`unavailable`: the database is locked by another process past `--db-busy-timeout-ms`, or the S3 image store cannot be reached; nothing was stored, retry (`Retry-After`)"),
        (status = 507, description = "`insufficient_storage`: the server's disk is full; nothing was stored, retry later (`Retry-After`)"),
    ),
    security(("api_key" = []), ("join_token" = [])),
)]
pub async fn upload_capture(
    State(state): State<AppState>,
    caller: Caller,
    Path(session_id): Path<String>,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Response, ApiError> {
    let started = std::time::Instant::now();
    let session = session_for(&state, &caller, &session_id, &Role::BOTH).await?;
    match session.status_at(now_ms()) {
        SessionStatus::Closed => {
            return Err(ApiError::gone("session_closed", "the session is closed"));
        }
        SessionStatus::Expired => {
            return Err(ApiError::gone("session_expired", "the session has expired"));
        }
        _ => {}
    }
    let max = state.settings.max_upload_bytes;
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        && len > max + MAX_META + 64 * 1024
    {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the upload is larger than {max} bytes"),
        ));
    }
    let multipart =
        multipart.map_err(|r| ApiError::new(r.status(), "invalid_multipart", r.body_text()))?;
    let upload = read_upload(multipart, max).await?;
    let meta = parse_meta(&upload.meta)?;
    let customer_request = match &caller {
        Caller::Participant {
            role: Role::Customer,
            ..
        } => meta.request_id.clone(),
        _ => None,
    };
    let outcome = store_upload(&state, &caller, &session, &headers, upload, meta).await;
    if outcome.is_ok() {
        state
            .metrics
            .push_seconds
            .observe(started.elapsed().as_secs_f64());
    }
    if let Err(e) = &outcome {
        state
            .metrics
            .uploads_refused
            .get_or_create(&crate::metrics::CodeLabel {
                code: e.code.to_owned(),
            })
            .inc();
    }
    let failed = match (&outcome, customer_request) {
        // The agent is waiting for this still: tell it why it will not come, so it can fall back.
        (Err(e), Some(request_id)) => Some(Event::CaptureFailed {
            from: None,
            request_id,
            code: e.code.to_owned(),
            message: e.detail.clone(),
        }),
        _ => None,
    };
    if let Some(failed) = failed
        && let Err(err) = state
            .registry
            .publish(&session.id, &[Role::Agent], &failed)
            .await
    {
        tracing::warn!(error = %err, "could not send capture.failed");
    }
    outcome
}

async fn store_upload(
    state: &AppState,
    caller: &Caller,
    session: &SessionRow,
    headers: &HeaderMap,
    upload: Upload,
    meta: UploadMeta,
) -> Result<Response, ApiError> {
    let uploaded_by = match caller {
        Caller::ApiKey(k) => k.0.clone(),
        Caller::Participant { role, .. } => role.as_str().to_owned(),
    };
    if let Caller::Participant {
        role: Role::Customer,
        ..
    } = caller
    {
        if meta.source != "customer_still" {
            return Err(ApiError::forbidden(
                "forbidden",
                "the customer uploads only customer_still captures",
            ));
        }
        if meta.request_id.is_none() {
            return Err(ApiError::forbidden(
                "request_required",
                "the customer uploads only for a pending capture.request",
            ));
        }
    }

    // The same key with the same bytes and meta answers the first capture again.
    let key = idempotency_key(headers)?;
    let mut hasher = Sha256::new();
    hasher.update(&upload.meta);
    hasher.update(b"\0");
    hasher.update(&upload.image);
    let request_hash = hasher.finalize().to_vec();
    if let Some(k) = &key
        && let Some(prior) = state
            .store
            .capture_by_idempotency_key(&session.id, k)
            .await?
    {
        if prior.request_hash.as_deref() != Some(request_hash.as_slice()) {
            return Err(ApiError::conflict(
                "idempotency_key_reused",
                "this Idempotency-Key was used with a different upload",
            ));
        }
        return Ok(created(state, &prior, true));
    }

    let mut slot_id = meta.slot_id.clone();
    if let Some(request_id) = &meta.request_id {
        let request = state
            .store
            .capture_request(&session.id, request_id)
            .await?
            .ok_or_else(|| ApiError::not_found("capture request"))?;
        if request.status == "fulfilled" {
            return Err(ApiError::conflict(
                "request_fulfilled",
                "this capture request has already been fulfilled",
            ));
        }
        if slot_id.is_none() {
            slot_id = request.slot_id;
        }
    }
    if let Some(slot) = &slot_id
        && !state
            .store
            .slots(&session.id)
            .await?
            .iter()
            .any(|s| &s.id == slot)
    {
        return Err(ApiError::unprocessable(
            "invalid_slot",
            format!("no checklist slot `{slot}` in this session"),
        ));
    }

    // The original is hashed and written (fsynced) while the image is decoded.
    let decode_started = std::time::Instant::now();
    let kind = identify(&upload.image, upload.declared.as_deref()).map_err(capture_error)?;
    let image = upload.image.clone();
    let original = async {
        let bytes = image.clone();
        let sha256 = tokio::task::spawn_blocking(move || hex::encode(Sha256::digest(&bytes)))
            .await
            .map_err(|e| MediaError::Io(std::io::Error::other(e)))?;
        state.media.put_original(sha256, kind.ext(), image).await
    };
    let (processed, original) = tokio::join!(
        async {
            let processed = state.pipeline.process(upload.image.clone(), kind).await;
            state
                .metrics
                .decode_seconds
                .observe(decode_started.elapsed().as_secs_f64());
            processed
        },
        original
    );
    let processed = match (processed, &original) {
        (Ok(p), _) => p,
        (Err(e), Ok(stored)) => {
            state.media.discard(stored).await;
            return Err(capture_error(e));
        }
        (Err(e), Err(_)) => return Err(capture_error(e)),
    };
    let stored = original.map_err(storage_error)?;
    let store_started = std::time::Instant::now();
    state
        .media
        .put_thumbnail(&stored, processed.thumbnail)
        .await
        .map_err(storage_error)?;
    let sha256 = stored.sha256.clone();

    let row = CaptureRow {
        id: format!("cap_{}", uuid::Uuid::now_v7().simple()),
        session_id: session.id.clone(),
        slot_id,
        area: meta.area,
        angle: meta.angle,
        note: meta.note,
        source: meta.source,
        request_id: meta.request_id,
        mime: kind.mime().to_owned(),
        width: i64::from(processed.width),
        height: i64::from(processed.height),
        bytes: upload.image.len() as i64,
        sha256,
        sharpness: processed.quality.sharpness,
        brightness: processed.quality.brightness,
        warnings: serde_json::to_string(&processed.quality.warnings)
            .unwrap_or_else(|_| "[]".into()),
        uploaded_by,
        idempotency_key: key.clone(),
        request_hash: Some(request_hash.clone()),
        created_at: now_ms(),
    };
    let data = serde_json::json!({
        "capture_id": row.id,
        "area": row.area,
        "angle": row.angle,
        "slot_id": row.slot_id,
        "source": row.source,
        "request_id": row.request_id,
        "sha256": row.sha256,
        "capture_url": format!("{}/api/v1/captures/{}", state.public_url, row.id),
        "image_url": format!("{}/api/v1/captures/{}/image", state.public_url, row.id),
        "thumbnail_url": format!("{}/api/v1/captures/{}/thumbnail", state.public_url, row.id),
    });
    let outbox = state
        .outbox
        .rows(session, EventType::CaptureCreated, data, row.created_at);
    match state.registry.store_capture(&row, &outbox).await {
        Ok(()) => {
            let m = &state.metrics;
            m.store_seconds
                .observe(store_started.elapsed().as_secs_f64());
            m.captures_stored
                .get_or_create(&crate::metrics::SourceLabel {
                    source: row.source.clone(),
                })
                .inc();
            m.upload_bytes.inc_by(row.bytes.unsigned_abs());
            tracing::info!(capture = %row.id, session = %row.session_id, bytes = row.bytes, "capture stored");
            Ok(created(state, &row, false))
        }
        Err(e) => {
            if !state.store.hash_in_use(&row.sha256).await.unwrap_or(true) {
                state.media.remove_capture(&row.sha256, kind.ext()).await;
            }
            // A concurrent retry with the same key won the race: answer as a retry would.
            if let Some(k) = &key
                && let Ok(Some(prior)) =
                    state.store.capture_by_idempotency_key(&session.id, k).await
            {
                if prior.request_hash.as_deref() == Some(request_hash.as_slice()) {
                    return Ok(created(state, &prior, true));
                }
                return Err(ApiError::conflict(
                    "idempotency_key_reused",
                    "this Idempotency-Key was used with a different upload",
                ));
            }
            Err(match e {
                RoomError::Ended(SessionStatus::Expired) => {
                    ApiError::gone("session_expired", "the session has expired")
                }
                RoomError::Ended(_) => ApiError::gone("session_closed", "the session is closed"),
                RoomError::Store(crate::store::StoreError::RequestFulfilled) => ApiError::conflict(
                    "request_fulfilled",
                    "this capture request has already been fulfilled",
                ),
                RoomError::Store(s) => s.into(),
                other => ApiError::internal(other),
            })
        }
    }
}

/// A full disk is the operator's problem and the client's signal to retry later; so is an object
/// store that cannot be reached.
fn storage_error(e: MediaError) -> ApiError {
    if e.is_storage_full() {
        return ApiError::insufficient_storage(e);
    }
    if let MediaError::Unavailable(_) = e {
        return ApiError::image_store_unavailable(e);
    }
    ApiError::internal(e)
}

async fn capture_for(state: &AppState, caller: &Caller, id: &str) -> Result<CaptureRow, ApiError> {
    let row = state
        .store
        .get_capture(id)
        .await?
        .ok_or_else(|| ApiError::not_found("capture"))?;
    if !caller.may_access(&row.session_id, &Role::BOTH) {
        return Err(ApiError::not_found("capture"));
    }
    Ok(row)
}

/// `GET /sessions/{id}/captures`
#[utoipa::path(
    get,
    path = "/api/v1/sessions/{id}/captures",
    tag = "captures",
    summary = "List a session's captures",
    description = "Every capture of the session, oldest first, as `{items: [capture…]}`.",
    params(("id" = String, Path, description = "The session id (`ses_…`)")),
    responses(
        (status = 200, description = "The captures", body = crate::session::view::CaptureList),
        (status = 401, description = "`unauthorized`: no or unknown credential"),
        (status = 404, description = "`not_found`: no such session (or not this token's session)"),
        (status = 410, description = "`session_closed`, `session_expired`: the join token died with its session"),
    ),
    security(("api_key" = []), ("join_token" = []), ("token_query" = [])),
)]
pub async fn list_captures(
    State(state): State<AppState>,
    caller: Caller,
    Path(session_id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    session_for(&state, &caller, &session_id, &Role::BOTH).await?;
    let rows = state.store.list_captures(&session_id).await?;
    let items: Vec<CaptureView> = rows
        .iter()
        .map(|r| CaptureView::new(r, &state.public_url))
        .collect();
    Ok(Json(serde_json::json!({ "items": items })))
}

/// `GET /captures/{id}`
#[utoipa::path(
    get,
    path = "/api/v1/captures/{id}",
    tag = "captures",
    summary = "Get a capture",
    params(("id" = String, Path, description = "The capture id (`cap_…`)")),
    responses(
        (status = 200, description = "The capture", body = CaptureView),
        (status = 401, description = "`unauthorized`: no or unknown credential"),
        (status = 404, description = "`not_found`: no such capture (or not in this token's session)"),
        (status = 410, description = "`session_closed`, `session_expired`: the join token died with its session"),
    ),
    security(("api_key" = []), ("join_token" = []), ("token_query" = [])),
)]
pub async fn get_capture(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<CaptureView>, ApiError> {
    let row = capture_for(&state, &caller, &id).await?;
    Ok(Json(CaptureView::new(&row, &state.public_url)))
}

async fn file_response(
    image: impl Future<Output = Result<ImageBody, MediaError>>,
    mime: &str,
    etag: &str,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let quoted = format!("\"{etag}\"");
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == quoted || t.trim() == "*"));
    let mut res = if matches {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let image = image.await.map_err(|e| match e {
            MediaError::Missing(what) => {
                ApiError::internal(format!("capture file missing: {what}"))
            }
            MediaError::Unavailable(_) => ApiError::image_store_unavailable(e),
            other => ApiError::internal(other),
        })?;
        let mut res = Body::from_stream(image.stream).into_response();
        res.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(image.len));
        if let Ok(v) = HeaderValue::from_str(mime) {
            res.headers_mut().insert(header::CONTENT_TYPE, v);
        }
        res
    };
    let h = res.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&quoted) {
        h.insert(header::ETAG, v);
    }
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=31536000, immutable"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    Ok(res)
}

/// `GET /captures/{id}/image`: the original bytes as received.
#[utoipa::path(
    get,
    path = "/api/v1/captures/{id}/image",
    tag = "captures",
    summary = "Get a capture's original image",
    description = "The bytes exactly as uploaded, with the capture's `mime` as `Content-Type`. The \
`ETag` is the quoted SHA-256; `If-None-Match` answers 304.",
    params(
        ("id" = String, Path, description = "The capture id (`cap_…`)"),
        ("If-None-Match" = Option<String>, Header, description = "An `ETag` from an earlier answer"),
    ),
    responses(
        (status = 200, description = "The original image",
            content(("image/jpeg"), ("image/png"), ("image/webp")),
            headers(
                ("ETag" = String, description = "The quoted SHA-256 of the bytes"),
                ("Cache-Control" = String, description = "`private, max-age=31536000, immutable`"),
            )),
        (status = 304, description = "Not modified (`If-None-Match` matched)"),
        (status = 401, description = "`unauthorized`: no or unknown credential"),
        (status = 404, description = "`not_found`: no such capture (or not in this token's session)"),
        (status = 410, description = "`session_closed`, `session_expired`: the join token died with its session"),
    ),
    security(("api_key" = []), ("join_token" = []), ("token_query" = [])),
)]
pub async fn get_capture_image(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let row = capture_for(&state, &caller, &id).await?;
    let ext = kind_from_mime(&row.mime).map(|k| k.ext()).unwrap_or("bin");
    file_response(
        state.media.original(&row.sha256, ext),
        &row.mime,
        &row.sha256,
        &headers,
    )
    .await
}

/// `GET /captures/{id}/thumbnail`: JPEG, long edge at most 320 px.
#[utoipa::path(
    get,
    path = "/api/v1/captures/{id}/thumbnail",
    tag = "captures",
    summary = "Get a capture's thumbnail",
    description = "A JPEG, long edge at most 320 px. `If-None-Match` with its `ETag` answers 304.",
    params(
        ("id" = String, Path, description = "The capture id (`cap_…`)"),
        ("If-None-Match" = Option<String>, Header, description = "An `ETag` from an earlier answer"),
    ),
    responses(
        (status = 200, description = "The thumbnail", content(("image/jpeg")),
            headers(
                ("ETag" = String, description = "Quoted; derived from the original's SHA-256"),
                ("Cache-Control" = String, description = "`private, max-age=31536000, immutable`"),
            )),
        (status = 304, description = "Not modified (`If-None-Match` matched)"),
        (status = 401, description = "`unauthorized`: no or unknown credential"),
        (status = 404, description = "`not_found`: no such capture (or not in this token's session)"),
        (status = 410, description = "`session_closed`, `session_expired`: the join token died with its session"),
    ),
    security(("api_key" = []), ("join_token" = []), ("token_query" = [])),
)]
pub async fn get_capture_thumbnail(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let row = capture_for(&state, &caller, &id).await?;
    file_response(
        state.media.thumbnail(&row.sha256),
        "image/jpeg",
        &format!("t-{}", row.sha256),
        &headers,
    )
    .await
}
