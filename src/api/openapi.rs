//! The OpenAPI 3.1 document of the REST API (`GET /api/v1/openapi.json`), generated from the
//! handlers' `#[utoipa::path]` attributes and the types' `ToSchema` derives, and a readable page that
//! renders it (`GET /api/docs`): one embedded HTML file, no asset from anywhere else.

use std::borrow::Cow;
use std::sync::LazyLock;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use sha2::{Digest, Sha256};
use utoipa::openapi::content::Content;
use utoipa::openapi::header::Header;
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::response::Response as ApiResponse;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::server::Server;
use utoipa::openapi::{Ref, RefOr};
use utoipa::{Modify, OpenApi, PartialSchema, ToSchema};

use crate::app::AppState;
use crate::error::Problem;

/// The document. Paths carry the full `/api/v1` prefix; the server is the service's public URL.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "CaptureLink",
        version = env!("CARGO_PKG_VERSION"),
        description = "Guided photo capture for motor-insurance claims: the REST API for claims \
systems.\n\nClaims systems authenticate with an API key (`Authorization: Bearer <key>`). Some calls \
also take a session's join token the same way, or as a `token` query parameter where a header \
cannot be set (`<img src>`, `EventSource`).\n\nEvery refusal is `application/problem+json` \
(RFC 9457) with a stable snake_case `code` (see the `Problem` schema)."
    ),
    paths(
        super::sessions::create_session,
        super::sessions::list_sessions,
        super::sessions::get_session,
        super::sessions::close_session,
        super::join::get_session_links,
        super::join::get_customer_qr,
        super::join::get_join,
        super::captures::upload_capture,
        super::captures::list_captures,
        super::events::session_events,
        super::export::export_session,
        super::captures::get_capture,
        super::captures::get_capture_image,
        super::captures::get_capture_thumbnail,
        get_openapi,
    ),
    components(schemas(Problem, crate::store::SessionStatus, Area, Angle)),
    modifiers(&NoLicense, &SecuritySchemes, &ProblemResponses),
    tags(
        (name = "sessions", description = "Create, list, read and close capture sessions."),
        (name = "captures", description = "Upload captures and read them back: JSON, original image, thumbnail."),
        (name = "join", description = "For the two pages: what a join token stands for, the join links again, the customer's link as a QR code."),
        (name = "events", description = "A session's durable events as Server-Sent Events."),
        (name = "export", description = "The whole session as a ZIP, for the claim file."),
        (name = "meta", description = "This document."),
    )
)]
pub struct ApiDoc;

/// The crate declares no licence: leave it out rather than emit an empty (invalid) one.
struct NoLicense;

impl Modify for NoLicense {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        doc.info.license = None;
    }
}

/// The names of the security schemes, as the handlers' `security(...)` use them.
const API_KEY: &str = "api_key";
const JOIN_TOKEN: &str = "join_token";
const TOKEN_QUERY: &str = "token_query";

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        let bearer = |description: &str| {
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(description))
                    .build(),
            )
        };
        components.add_security_scheme(
            API_KEY,
            bearer("A claims system's API key: `Authorization: Bearer <key>`."),
        );
        components.add_security_scheme(
            JOIN_TOKEN,
            bearer(
                "A join token of the session (the agent's or the customer's), as handed out in \
                 `agent_token` / `customer_token`: `Authorization: Bearer <token>`. It stops \
                 working when its session is closed or expired (410).",
            ),
        );
        components.add_security_scheme(
            TOKEN_QUERY,
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "token",
                "The API key or a join token as the `token` query parameter, for clients that \
                 cannot set a header (`<img src>`, `EventSource`). The header wins when both are sent.",
            ))),
        );
    }
}

/// Every error response is a [`Problem`] as `application/problem+json`; every call that reaches
/// the database may also answer 500 and 503 (with `Retry-After`).
struct ProblemResponses;

fn operations_mut(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.options,
        &mut item.head,
        &mut item.patch,
        &mut item.trace,
    ]
    .into_iter()
    .filter_map(Option::as_mut)
}

impl Modify for ProblemResponses {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        for item in doc.paths.paths.values_mut() {
            for op in operations_mut(item) {
                let responses = &mut op.responses.responses;
                if op.security.as_ref().is_some_and(|s| !s.is_empty()) {
                    responses.entry("500".into()).or_insert_with(|| {
                        ApiResponse::new(
                            "`internal`: the server failed; the cause is in its log, not the body.",
                        )
                        .into()
                    });
                    responses.entry("503".into()).or_insert_with(|| {
                        let mut r = ApiResponse::new(
                            "`unavailable`: the database is busy; retry after `Retry-After` seconds.",
                        );
                        let mut h = Header::new(u32::schema());
                        h.description = Some("Seconds to wait before retrying.".into());
                        r.headers.insert("Retry-After".into(), h.into());
                        r.into()
                    });
                }
                for (status, response) in responses.iter_mut() {
                    if let (Some('4' | '5'), RefOr::T(r)) = (status.chars().next(), response)
                        && r.content.is_empty()
                    {
                        r.content.insert(
                            "application/problem+json".into(),
                            Content::new(Some(Ref::from_schema_name(Problem::name()))).into(),
                        );
                    }
                }
            }
        }
    }
}

/// A string whose values come from a fixed list, as a named schema (the lists live in code).
macro_rules! string_enum_schema {
    ($name:ident, $values:expr, $doc:literal) => {
        #[doc = $doc]
        pub struct $name;

        impl PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .description(Some($doc))
                    .enum_values(Some($values.iter().copied()))
                    .into()
            }
        }

        impl ToSchema for $name {
            fn name() -> Cow<'static, str> {
                Cow::Borrowed(stringify!($name))
            }
        }
    };
}

string_enum_schema!(
    Area,
    crate::vocabulary::AREAS,
    "A part of the vehicle or a document. Left and right are the vehicle's own sides (as seen \
     from the driver's seat)."
);
string_enum_schema!(
    Angle,
    crate::vocabulary::ANGLES,
    "The angle a picture is taken from."
);
string_enum_schema!(
    Locale,
    crate::vocabulary::LOCALES,
    "The customer page's language."
);
string_enum_schema!(
    CaptureSource,
    ["customer_still", "agent_frame"],
    "`customer_still`: a full-resolution still taken by the customer's phone; `agent_frame`: a \
     frame the agent grabbed from the live video."
);
string_enum_schema!(
    SlotStatus,
    ["pending", "done"],
    "`done` once a capture fills the slot."
);

/// One picture the checklist asks for: the schema of `store::SlotRow`, which the store's backends
/// share from a crate of their own (so it cannot name the vocabulary's schemas above).
#[derive(utoipa::ToSchema)]
#[expect(dead_code, reason = "the schema of SlotRow's JSON; never built")]
pub struct Slot {
    /// `slot_1`, `slot_2`, … in checklist order.
    id: String,
    area: Area,
    angle: Angle,
    /// The label given at creation, or null.
    label: Option<String>,
    status: SlotStatus,
    /// The capture that filled the slot, once `done`.
    capture_id: Option<String>,
}

/// The document with this service as its server.
pub fn document(public_url: &str) -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    let mut server = Server::new(public_url);
    server.description = Some("This service".into());
    doc.servers = Some(vec![server]);
    doc
}

/// `GET /api/v1/openapi.json`
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "meta",
    summary = "This OpenAPI document",
    description = "The OpenAPI 3.1 description of this API, generated from the server's code. \
                   No credential needed. A readable rendering is served at `/api/docs`.",
    responses((status = 200, description = "The document", content_type = "application/json", body = Object)),
)]
pub async fn get_openapi(State(state): State<AppState>) -> Response {
    let mut res = Json(document(&state.public_url)).into_response();
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    res
}

const DOCS_HTML: &str = include_str!("docs.html");

/// The page's Content-Security-Policy: nothing but its own inline script and style (by hash) and
/// fetching the document from this origin.
static DOCS_CSP: LazyLock<String> = LazyLock::new(|| {
    let hash = |open: &str, close: &str| {
        let body = DOCS_HTML
            .split_once(open)
            .and_then(|(_, rest)| rest.split_once(close))
            .map(|(body, _)| body)
            .unwrap_or("");
        format!(
            "'sha256-{}'",
            base64::engine::general_purpose::STANDARD.encode(Sha256::digest(body.as_bytes()))
        )
    };
    format!(
        "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; base-uri 'none'; \
         form-action 'none'; frame-ancestors 'none'",
        hash("<script>", "</script>"),
        hash("<style>", "</style>"),
    )
});

/// `GET /api/docs`: the readable reference, rendered in the browser from the document.
pub async fn docs_page() -> Response {
    let mut res = DOCS_HTML.into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if let Ok(v) = HeaderValue::from_str(&DOCS_CSP) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    res
}

/// The page lives outside `/api/v1` (it is not part of the versioned API).
pub fn docs_router() -> Router<AppState> {
    Router::new().route("/api/docs", get(docs_page))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_is_openapi_3_1_with_problem_bodies() {
        let doc = serde_json::to_value(document("http://127.0.0.1:8080")).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
        assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
        let err = &doc["paths"]["/api/v1/sessions/{id}"]["get"]["responses"]["404"];
        assert_eq!(
            err["content"]["application/problem+json"]["schema"]["$ref"],
            "#/components/schemas/Problem"
        );
        for name in ["Problem", "SessionView", "CaptureView", "Area", "Angle"] {
            assert!(
                doc["components"]["schemas"][name].is_object(),
                "schema {name} missing"
            );
        }
    }

    #[test]
    fn csp_hashes_the_inline_script_and_style() {
        assert!(DOCS_CSP.contains("script-src 'sha256-"));
        assert!(DOCS_CSP.contains("style-src 'sha256-"));
        assert!(!DOCS_CSP.contains("'sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU='"));
    }
}
