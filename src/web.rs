//! The two pages: the agent console (`/agent/`, from web-agent/) and the customer page
//! (`/customer/`, from web-customer/), and the modules they share (`/shared/`, from web-shared/).
//! Embedded into release builds; read from disk in debug builds, so a page edit shows on reload.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use rust_embed::RustEmbed;

use crate::app::AppState;

#[derive(RustEmbed)]
#[folder = "web-agent/"]
struct AgentPages;

#[derive(RustEmbed)]
#[folder = "web-customer/"]
struct CustomerPages;

#[derive(RustEmbed)]
#[folder = "web-shared/"]
#[exclude = "test/*"]
#[exclude = "*.md"]
struct SharedModules;

/// Everything the pages load comes from this origin: no inline script or style, no CDN. Images
/// may be `blob:` (the QR code, a grabbed frame) or `data:`; video is a `MediaStream`.
/// `connect-src 'self'` covers the same-origin `ws:`/`wss:` WebSocket.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
style-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; connect-src 'self'; \
font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The pages use the camera and microphone themselves and lend them to no one.
const PERMISSIONS_POLICY: &str =
    "camera=(self), microphone=(self), geolocation=(), payment=(), usb=()";

fn serve<E: RustEmbed>(path: &str) -> Response {
    let path = if path.is_empty() || path.ends_with('/') {
        format!("{path}index.html")
    } else {
        path.to_owned()
    };
    match E::get(&path) {
        Some(file) => {
            let mime = file.metadata.mimetype();
            let mut res = file.data.into_owned().into_response();
            let h = res.headers_mut();
            if let Ok(v) = HeaderValue::from_str(mime) {
                h.insert(header::CONTENT_TYPE, v);
            }
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            h.insert(
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            );
            h.insert(
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            );
            h.insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CONTENT_SECURITY_POLICY),
            );
            h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
            h.insert(
                "permissions-policy",
                HeaderValue::from_static(PERMISSIONS_POLICY),
            );
            res
        }
        None => (StatusCode::NOT_FOUND, "not found").into_response(),
    }
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/agent/") }))
        .route("/agent", get(|| async { Redirect::permanent("/agent/") }))
        .route(
            "/customer",
            get(|| async { Redirect::permanent("/customer/") }),
        )
        .route("/agent/", get(|| async { serve::<AgentPages>("") }))
        .route("/customer/", get(|| async { serve::<CustomerPages>("") }))
        .route(
            "/agent/{*path}",
            get(|Path(p): Path<String>| async move { serve::<AgentPages>(&p) }),
        )
        .route(
            "/customer/{*path}",
            get(|Path(p): Path<String>| async move { serve::<CustomerPages>(&p) }),
        )
        .route(
            "/shared/{*path}",
            get(|Path(p): Path<String>| async move { serve::<SharedModules>(&p) }),
        )
}
