//! Errors at the HTTP edge: every refusal is an `application/problem+json` body (RFC 9457) with a
//! stable snake_case `code` that clients can branch on.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
    pub retry_after: Option<u64>,
}

/// An error, as `application/problem+json` (RFC 9457). Clients branch on `code`, which is stable;
/// `detail` is for people and may change.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(example = json!({
    "type": "https://capturelink.dev/problems/not-found",
    "title": "Not Found",
    "status": 404,
    "code": "not_found",
    "detail": "session not found"
}))]
pub struct Problem {
    /// A URI naming the kind of problem: `https://capturelink.dev/problems/<code with dashes>`.
    #[serde(rename = "type")]
    #[schema(format = "uri")]
    pub kind: String,
    /// The HTTP status's reason phrase.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// Stable snake_case code, e.g. `not_found`, `invalid_area`, `session_closed`.
    pub code: String,
    /// What went wrong, for people.
    pub detail: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
            retry_after: None,
        }
    }

    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, detail)
    }

    pub fn unprocessable(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, detail)
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid API key or join token is required",
        )
    }

    pub fn forbidden(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, code, detail)
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }

    pub fn conflict(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, detail)
    }

    pub fn gone(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::GONE, code, detail)
    }

    /// A server-side failure: the cause is logged here, once, inside the request's span;
    /// the body stays generic.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the server could not complete the request",
        )
    }

    /// The database is busy (another writer holds the lock): try again shortly.
    pub fn unavailable(cause: impl std::fmt::Display) -> Self {
        tracing::warn!(error = %cause, "store unavailable");
        Self::retry_later(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the service is busy; retry shortly",
            1,
        )
    }

    /// The object store holding the images cannot be reached: nothing was stored, try again.
    pub fn image_store_unavailable(cause: impl std::fmt::Display) -> Self {
        tracing::warn!(error = %cause, "image store unavailable");
        Self::retry_later(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the image store cannot be reached; nothing was stored, retry shortly",
            5,
        )
    }

    /// The data dir's disk is full: the operator's problem, and the client's signal to retry later.
    pub fn insufficient_storage(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "data dir is full");
        Self::retry_later(
            StatusCode::INSUFFICIENT_STORAGE,
            "insufficient_storage",
            "the server has no room for the image; retry later",
            30,
        )
    }

    /// A refusal with `Retry-After: seconds`.
    fn retry_later(
        status: StatusCode,
        code: &'static str,
        detail: &'static str,
        seconds: u64,
    ) -> Self {
        let mut e = Self::new(status, code, detail);
        e.retry_after = Some(seconds);
        e
    }

    fn title(&self) -> &'static str {
        self.status.canonical_reason().unwrap_or("Error")
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.code, self.detail)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Problem {
            kind: format!(
                "https://capturelink.dev/problems/{}",
                self.code.replace('_', "-")
            ),
            title: self.title().to_owned(),
            status: self.status.as_u16(),
            code: self.code.to_owned(),
            detail: self.detail,
        };
        let mut res = (self.status, Json(body)).into_response();
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(s) = self.retry_after {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        res
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        match e {
            crate::store::StoreError::Busy(cause) => ApiError::unavailable(cause),
            crate::store::StoreError::Full(cause) => ApiError::insufficient_storage(cause),
            crate::store::StoreError::Purged => ApiError::gone(
                "session_purged",
                "the session's captures were deleted by the retention policy",
            ),
            other => ApiError::internal(other),
        }
    }
}

/// Axum's own rejections (bad JSON, wrong content type, bad path or query) as problem+json.
/// Whether `e`, or any error in its chain of sources, is a `T`.
pub fn chain_has<T: std::error::Error + 'static>(e: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(e), |e| e.source()).any(|e| e.is::<T>())
}

/// Whether a body error is the body timeout (`--body-timeout-s`) firing, anywhere in its chain.
pub fn is_body_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    chain_has::<tower_http::timeout::TimeoutError>(e)
}

impl ApiError {
    /// 408: the request body stopped arriving for longer than `--body-timeout-s`.
    pub fn body_stalled() -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            "the request body stopped arriving; send the request again",
        )
    }
}

impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(r: axum::extract::rejection::JsonRejection) -> Self {
        use axum::extract::rejection::JsonRejection as J;
        if is_body_timeout(&r) {
            return Self::body_stalled();
        }
        match r {
            J::MissingJsonContentType(_) => Self::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "expected Content-Type: application/json",
            ),
            J::JsonDataError(e) => Self::unprocessable("invalid_body", e.body_text()),
            J::JsonSyntaxError(e) => Self::bad_request("malformed_json", e.body_text()),
            other => Self::bad_request("invalid_body", other.body_text()),
        }
    }
}

impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(r: axum::extract::rejection::QueryRejection) -> Self {
        Self::bad_request("invalid_query", r.body_text())
    }
}
