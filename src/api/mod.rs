//! REST for claims systems, under `/api/v1`.

mod captures;
mod events;
mod export;
mod join;

pub use join::qr_svg;
pub mod openapi;
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
        .route("/sessions/{id}/links", get(join::get_session_links))
        .route("/sessions/{id}/customer-qr.svg", get(join::get_customer_qr))
        .route("/join", get(join::get_join))
        .route(
            "/sessions/{id}/captures",
            post(captures::upload_capture)
                // The upload enforces its own cap while streaming (413 as problem+json).
                .layer(axum::extract::DefaultBodyLimit::disable())
                .get(captures::list_captures),
        )
        .route("/sessions/{id}/events", get(events::session_events))
        .route("/sessions/{id}/export", get(export::export_session))
        .route("/captures/{id}", get(captures::get_capture))
        .route("/captures/{id}/image", get(captures::get_capture_image))
        .route(
            "/captures/{id}/thumbnail",
            get(captures::get_capture_thumbnail),
        )
        .route("/openapi.json", get(openapi::get_openapi))
        .fallback(|| async { crate::error::ApiError::not_found("resource") })
}
