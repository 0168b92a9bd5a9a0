//! REST for claims systems, under `/api/v1`.

mod sessions;

use axum::Router;
use axum::routing::{get, post};

use crate::app::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/sessions",
            post(sessions::create_session).get(sessions::list_sessions),
        )
        .route("/sessions/{id}", get(sessions::get_session))
        .route("/sessions/{id}/close", post(sessions::close_session))
        .fallback(|| async { crate::error::ApiError::not_found("resource") })
}
