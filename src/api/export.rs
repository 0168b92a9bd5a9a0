//! `GET /sessions/{id}/export`: a ZIP with `manifest.json` (the session and its captures) and the
//! original images, for the claim file.
//!
//! The archive is written to a temporary file on the blocking pool (images are stored, not
//! recompressed: JPEG and WebP do not shrink), each original read from the image store (the media
//! dir or S3), and streamed from there; the file is unlinked as soon as it is open, so nothing is
//! left behind.

use std::io::Write;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use zip::write::SimpleFileOptions;

use crate::app::AppState;
use crate::auth::ApiKeyCaller;
use crate::capture::kind_from_mime;
use crate::error::ApiError;
use crate::session::view::{CaptureView, SessionView};
use crate::store::now_ms;

#[utoipa::path(
    get,
    path = "/api/v1/sessions/{id}/export",
    tag = "export",
    summary = "Export a session as a ZIP",
    description = "`application/zip` with `manifest.json` (format `capturelink.export.v1`: \
`exported_at`, the `session` and its `captures`, each with the `file` it is stored under) and the \
original images as received, under `images/<capture id>.<ext>`.",
    params(("id" = String, Path, description = "The session id (`ses_…`)")),
    responses(
        (status = 200, description = "The archive", content(("application/zip")),
            headers(("Content-Disposition" = String, description = "`attachment; filename=\"capturelink-<id>.zip\"`"))),
        (status = 401, description = "`unauthorized`: no or unknown API key"),
        (status = 404, description = "`not_found`: no such session"),
    ),
    security(("api_key" = [])),
)]
pub async fn export_session(
    State(state): State<AppState>,
    ApiKeyCaller(_): ApiKeyCaller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let row = state
        .store
        .get_session(&id)
        .await?
        .ok_or_else(|| ApiError::not_found("session"))?;
    let slots = state.store.slots(&id).await?;
    let captures = state.store.list_captures(&id).await?;
    let mut session = SessionView::new(&row, slots, state.registry.presence(&id).await?, now_ms());
    session.capture_count = captures.len() as u64;
    let views: Vec<CaptureView> = captures
        .iter()
        .map(|c| CaptureView::new(c, &state.public_url))
        .collect();

    let mut files = Vec::with_capacity(captures.len());
    let mut manifest_captures = Vec::with_capacity(captures.len());
    for (c, v) in captures.iter().zip(views) {
        let ext = kind_from_mime(&c.mime).map(|k| k.ext()).unwrap_or("bin");
        let name = format!("images/{}.{ext}", c.id);
        files.push((name.clone(), c.sha256.clone(), ext));
        let mut entry = serde_json::to_value(&v).map_err(ApiError::internal)?;
        entry["file"] = serde_json::Value::String(name);
        manifest_captures.push(entry);
    }
    let manifest = serde_json::to_vec_pretty(&serde_json::json!({
        "format": "capturelink.export.v1",
        "exported_at": crate::session::view::rfc3339(now_ms()),
        "session": session,
        "captures": manifest_captures,
    }))
    .map_err(ApiError::internal)?;

    // The archive is put together in a file that is unlinked at once; the originals are read from
    // the image store one at a time and appended on the blocking pool.
    let tmp_dir = state.settings.data_dir.join("media").join("tmp");
    let mut zip = blocking(move || {
        std::fs::create_dir_all(&tmp_dir)?;
        let mut zip = zip::ZipWriter::new(tempfile::tempfile_in(&tmp_dir)?);
        let deflated =
            SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        zip.start_file("manifest.json", deflated)
            .map_err(std::io::Error::other)?;
        zip.write_all(&manifest)?;
        Ok(zip)
    })
    .await?;
    for (name, sha, ext) in files {
        let bytes = state
            .media
            .original(&sha, ext)
            .await
            .map_err(ApiError::internal)?
            .into_bytes()
            .await
            .map_err(ApiError::internal)?;
        zip = blocking(move || {
            let stored = SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Stored)
                .large_file(true);
            zip.start_file(name, stored)
                .map_err(std::io::Error::other)?;
            zip.write_all(&bytes)?;
            Ok(zip)
        })
        .await?;
    }
    let file = blocking(move || {
        use std::io::Seek;
        let mut tmp = zip.finish().map_err(std::io::Error::other)?;
        tmp.seek(std::io::SeekFrom::Start(0))?;
        Ok(tmp)
    })
    .await?;

    let len = file.metadata().map_err(ApiError::internal)?.len();
    let stream = tokio_util::io::ReaderStream::new(tokio::fs::File::from_std(file));
    let mut res = Body::from_stream(stream).into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/zip"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    let disposition = format!("attachment; filename=\"capturelink-{id}.zip\"");
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(res)
}

/// Runs a step of writing the archive on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)
}
