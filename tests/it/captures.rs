//! Captures (issue 3): upload of real encoded images, the refusals of untrusted bytes, idempotency,
//! concurrency, the customer's request rule, real-time `capture.created` / `capture.failed`,
//! checklist slots, quality figures and what a claims system reads back.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use image::codecs::png::PngEncoder;
use image::codecs::webp::WebPEncoder;
use image::{ExtendedColorType, ImageEncoder, Rgb, RgbImage};
use reqwest::{Response, StatusCode, header};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::Row;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::support::*;

// ---------------------------------------------------------------------------------------------
// Real images, encoded here with the image crate.

/// Uniform random colour per pixel: as detailed (and as incompressible) as an image gets.
fn noise(w: u32, h: u32, seed: u64) -> RgbImage {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    RgbImage::from_fn(w, h, |_, _| {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        let b = s.to_le_bytes();
        Rgb([b[0], b[1], b[2]])
    })
}

/// A mid-grey checkerboard of `cell`-pixel squares with a colour drift: sharp edges everywhere.
fn checkerboard(w: u32, h: u32, cell: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        let v = if (x / cell + y / cell).is_multiple_of(2) {
            210
        } else {
            50
        };
        Rgb([v, v.saturating_sub((x * 40 / w) as u8), v])
    })
}

/// A smooth left-to-right grey ramp: mid brightness, no edges at all.
fn smooth(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, _| {
        let v = (80 + x * 100 / w) as u8;
        Rgb([v, v, v])
    })
}

/// A night shot: almost black, with a little sensor noise.
fn near_black(w: u32, h: u32) -> RgbImage {
    let mut n = noise(w, h, 99);
    for p in n.pixels_mut() {
        for c in &mut p.0 {
            *c %= 12;
        }
    }
    n
}

fn png(img: &RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    PngEncoder::new(&mut out)
        .write_image(
            img.as_raw(),
            img.width(),
            img.height(),
            ExtendedColorType::Rgb8,
        )
        .unwrap();
    out
}

fn webp(img: &RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    WebPEncoder::new_lossless(&mut out)
        .write_image(
            img.as_raw(),
            img.width(),
            img.height(),
            ExtendedColorType::Rgb8,
        )
        .unwrap();
    out
}

fn sha_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The classic 43-byte 1x1 GIF: a real image, in a format the service does not take.
const GIF: [u8; 43] = [
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00,
    0xFF, 0xFF, 0xFF, 0x21, 0xF9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2C, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3B,
];

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let mut body = kind.to_vec();
    body.extend_from_slice(data);
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32(&body).to_be_bytes());
}

/// A small, well-formed PNG (valid CRCs, a real zlib stream) whose IHDR claims `w` x `h` RGB:
/// decoding what it claims would take 12 GiB for 65535 x 65535.
fn png_claiming(w: u32, h: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    png_chunk(&mut out, b"IHDR", &ihdr);
    // One stored deflate block of 1000 zero bytes (a few filtered rows' worth), with its Adler-32.
    let raw = [0u8; 1000];
    let mut zlib = vec![0x78, 0x01, 0x01];
    zlib.extend_from_slice(&(raw.len() as u16).to_le_bytes());
    zlib.extend_from_slice(&(!(raw.len() as u16)).to_le_bytes());
    zlib.extend_from_slice(&raw);
    let (mut a, mut b) = (1u32, 0u32);
    for &x in &raw {
        a = (a + u32::from(x)) % 65521;
        b = (b + a) % 65521;
    }
    zlib.extend_from_slice(&((b << 16) | a).to_be_bytes());
    png_chunk(&mut out, b"IDAT", &zlib);
    png_chunk(&mut out, b"IEND", &[]);
    out
}

// ---------------------------------------------------------------------------------------------
// Helpers.

fn meta(area: &str, angle: &str) -> Value {
    json!({"area": area, "angle": angle, "source": "agent_frame"})
}

fn form(bytes: &[u8], mime: &str, meta: &Value) -> reqwest::multipart::Form {
    capture_form(Some((bytes.to_vec(), mime)), meta)
}

/// Uploads and asserts a 201; returns the capture JSON.
async fn upload_ok(
    srv: &TestServer,
    sid: &str,
    credential: &str,
    bytes: &[u8],
    meta: &Value,
) -> Value {
    let mime = mime_of(bytes);
    let res = srv
        .upload(sid, credential, form(bytes, mime, meta), None)
        .await;
    let status = res.status();
    let body: Value = res.json().await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "upload refused: {body}");
    body
}

fn mime_of(bytes: &[u8]) -> &'static str {
    if bytes.starts_with(&[0xFF, 0xD8]) {
        "image/jpeg"
    } else if bytes.starts_with(b"\x89PNG") {
        "image/png"
    } else {
        "image/webp"
    }
}

/// Asserts that `res` is an `application/problem+json` refusal with `status` and `code`.
async fn assert_problem(res: Response, status: u16, code: &str) -> Value {
    assert_eq!(res.status(), status, "status of {}", res.url());
    let ct = res
        .headers()
        .get(header::CONTENT_TYPE)
        .expect("a content type")
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        ct.starts_with("application/problem+json"),
        "problem content type, got {ct}"
    );
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["status"], status, "problem status: {body}");
    assert_eq!(body["code"], code, "problem code: {body}");
    body
}

async fn capture_rows(srv: &TestServer) -> i64 {
    let mut conn = srv.db().await;
    sqlx::query("SELECT COUNT(*) FROM captures")
        .fetch_one(&mut conn)
        .await
        .unwrap()
        .get(0)
}

/// Every file below `dir`, recursively (none if it does not exist).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// (originals, thumbnails, temporary files) on disk.
fn media_files(srv: &TestServer) -> (usize, usize, usize) {
    let media = srv.data_dir.join("media");
    (
        files_under(&media.join("originals")).len(),
        files_under(&media.join("thumbnails")).len(),
        files_under(&media.join("tmp")).len(),
    )
}

/// Nothing stored beyond `rows` captures and `files` distinct originals with their thumbnails.
async fn assert_stored(srv: &TestServer, rows: i64, files: usize, after: &str) {
    assert_eq!(capture_rows(srv).await, rows, "capture rows after {after}");
    assert_eq!(
        media_files(srv),
        (files, files, 0),
        "media files after {after}"
    );
}

async fn get(srv: &TestServer, url: &str, credential: &str) -> Response {
    srv.http
        .get(url)
        .bearer_auth(credential)
        .send()
        .await
        .unwrap()
}

async fn get_json(srv: &TestServer, path: &str, credential: &str) -> Value {
    let res = get(srv, &srv.url(path), credential).await;
    assert_eq!(res.status(), 200, "GET {path}");
    res.json().await.unwrap()
}

/// Reads `n` messages and returns them keyed by type (acks and events may come in either order).
async fn recv_n(c: &mut Client, n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(c.recv().await);
    }
    out
}

fn of_type<'a>(msgs: &'a [Value], kind: &str) -> &'a Value {
    msgs.iter()
        .find(|m| m["type"] == kind)
        .unwrap_or_else(|| panic!("no `{kind}` among {msgs:?}"))
}

fn slot<'a>(checklist: &'a Value, id: &str) -> &'a Value {
    checklist
        .as_array()
        .expect("a checklist array")
        .iter()
        .find(|s| s["id"] == id)
        .unwrap_or_else(|| panic!("no slot {id} in {checklist}"))
}

/// Both connected, each welcome read, the agent's `peer.joined` read.
async fn pair(srv: &TestServer, s: &Session) -> (Client, Client) {
    let (mut agent, _) = srv.join(&s.agent_token).await;
    let (customer, _) = srv.join(&s.customer_token).await;
    assert_eq!(agent.expect("peer.joined").await["role"], "customer");
    (agent, customer)
}

// ---------------------------------------------------------------------------------------------
// Upload and read back.

#[tokio::test]
async fn api_key_upload_is_stored_exactly_and_served_back() {
    let srv = TestServer::start().await;
    let s = srv.session().await;
    let slot_id = s.body["checklist"][2]["id"].as_str().unwrap().to_owned();
    let bytes = encode_jpeg(&checkerboard(800, 600, 12), 90);
    let sha = sha_hex(&bytes);
    let m = json!({
        "area": "overview", "angle": "front_left_45", "slot_id": slot_id,
        "note": "dent above the wheel arch", "source": "customer_still"
    });
    let before = OffsetDateTime::now_utc();
    let res = srv
        .upload(&s.id, API_KEY, form(&bytes, "image/jpeg", &m), None)
        .await;
    assert_eq!(res.status(), 201);
    let c: Value = res.json().await.unwrap();

    let id = c["id"].as_str().expect("an id").to_owned();
    assert!(!id.is_empty());
    assert_eq!(c["session_id"], s.id.as_str());
    assert_eq!(c["slot_id"], slot_id.as_str());
    assert_eq!(c["area"], "overview");
    assert_eq!(c["angle"], "front_left_45");
    assert_eq!(c["note"], "dent above the wheel arch");
    assert_eq!(c["source"], "customer_still");
    assert_eq!(c["request_id"], Value::Null);
    assert_eq!(c["mime"], "image/jpeg");
    assert_eq!(
        (c["width"].as_i64(), c["height"].as_i64()),
        (Some(800), Some(600))
    );
    assert_eq!(c["bytes"], bytes.len());
    assert_eq!(c["sha256"], sha.as_str());
    let q = &c["quality"];
    assert!(q["sharpness"].as_f64().expect("sharpness") > 0.0, "{q}");
    let brightness = q["brightness"].as_f64().expect("brightness");
    assert!((0.2..0.8).contains(&brightness), "{q}");
    assert!(q["warnings"].is_array(), "{q}");
    let created = OffsetDateTime::parse(c["created_at"].as_str().unwrap(), &Rfc3339).unwrap();
    assert!(
        created >= before - Duration::from_secs(2) && created <= OffsetDateTime::now_utc(),
        "created_at {created}"
    );
    let image_url = srv.url(&format!("/api/v1/captures/{id}/image"));
    assert_eq!(c["image_url"], image_url.as_str());
    assert_eq!(
        c["thumbnail_url"],
        srv.url(&format!("/api/v1/captures/{id}/thumbnail"))
            .as_str()
    );

    // The same capture by id, and in the session's list.
    assert_eq!(
        get_json(&srv, &format!("/api/v1/captures/{id}"), API_KEY).await,
        c
    );
    let list = get_json(
        &srv,
        &format!("/api/v1/sessions/{}/captures", s.id),
        API_KEY,
    )
    .await;
    assert_eq!(list["items"], json!([c.clone()]));

    // The original, byte for byte, with its hash as the ETag; a revalidation is a 304.
    let res = get(&srv, &image_url, API_KEY).await;
    assert_eq!(res.status(), 200);
    let etag = format!("\"{sha}\"");
    assert_eq!(res.headers()[header::ETAG], etag.as_str());
    assert_eq!(res.headers()[header::CONTENT_TYPE], "image/jpeg");
    assert_eq!(res.bytes().await.unwrap().as_ref(), bytes.as_slice());
    let res = srv
        .http
        .get(&image_url)
        .bearer_auth(API_KEY)
        .header(header::IF_NONE_MATCH, &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 304);
    assert!(res.bytes().await.unwrap().is_empty());

    // The thumbnail: a JPEG, long edge at most 320, aspect kept.
    let res = get(&srv, c["thumbnail_url"].as_str().unwrap(), API_KEY).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()[header::CONTENT_TYPE], "image/jpeg");
    let thumb = res.bytes().await.unwrap();
    assert_eq!(
        image::guess_format(&thumb).unwrap(),
        image::ImageFormat::Jpeg
    );
    let t = image::load_from_memory(&thumb).unwrap();
    assert!(
        t.width().max(t.height()) <= 320,
        "{}x{}",
        t.width(),
        t.height()
    );
    assert!(
        t.width() >= 300,
        "not shrunk more than needed: {}",
        t.width()
    );
    let aspect = f64::from(t.width()) / f64::from(t.height());
    assert!((aspect - 800.0 / 600.0).abs() < 0.02, "aspect {aspect}");

    // On disk under the data dir, named by content, with the exact bytes.
    let path = srv
        .data_dir
        .join("media/originals")
        .join(&sha[..2])
        .join(format!("{sha}.jpg"));
    assert_eq!(std::fs::read(&path).expect("original on disk"), bytes);
    assert_eq!(media_files(&srv), (1, 1, 0));

    // And in the database.
    let mut conn = srv.db().await;
    let row = sqlx::query(
        "SELECT session_id, sha256, bytes, width, height, mime, area, angle, slot_id \
         FROM captures WHERE id = $1",
    )
    .bind(&id)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(row.get::<String, _>(0), s.id);
    assert_eq!(row.get::<String, _>(1), sha);
    assert_eq!(row.get::<i64, _>(2), bytes.len() as i64);
    assert_eq!((row.get::<i64, _>(3), row.get::<i64, _>(4)), (800, 600));
    assert_eq!(row.get::<String, _>(5), "image/jpeg");
    assert_eq!(row.get::<String, _>(6), "overview");
    assert_eq!(row.get::<String, _>(7), "front_left_45");
    assert_eq!(row.get::<Option<String>, _>(8), Some(slot_id));
}

#[tokio::test]
async fn agent_token_uploads_png_and_webp() {
    let srv = TestServer::start().await;
    let s = srv.session().await;
    for (bytes, mime, ext) in [
        (png(&noise(400, 300, 1)), "image/png", "png"),
        (webp(&noise(300, 400, 2)), "image/webp", "webp"),
    ] {
        let c = upload_ok(
            &srv,
            &s.id,
            &s.agent_token,
            &bytes,
            &meta("hood", "close_up"),
        )
        .await;
        assert_eq!(c["mime"], mime);
        assert_eq!(c["source"], "agent_frame");
        assert_eq!(c["slot_id"], Value::Null);
        assert_eq!(c["note"], Value::Null);
        let sha = sha_hex(&bytes);
        assert_eq!(c["sha256"], sha.as_str());
        assert_eq!(c["bytes"], bytes.len());
        let path = srv
            .data_dir
            .join("media/originals")
            .join(&sha[..2])
            .join(format!("{sha}.{ext}"));
        assert_eq!(std::fs::read(path).unwrap(), bytes);

        // The agent's token reads it back too, byte for byte.
        let id = c["id"].as_str().unwrap();
        let got = get_json(&srv, &format!("/api/v1/captures/{id}"), &s.agent_token).await;
        assert_eq!(got, c);
        let res = get(&srv, c["image_url"].as_str().unwrap(), &s.agent_token).await;
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()[header::CONTENT_TYPE], mime);
        assert_eq!(res.bytes().await.unwrap().as_ref(), bytes.as_slice());
        let thumb = get(&srv, c["thumbnail_url"].as_str().unwrap(), &s.agent_token).await;
        let t = image::load_from_memory_with_format(
            &thumb.bytes().await.unwrap(),
            image::ImageFormat::Jpeg,
        )
        .unwrap();
        assert_eq!(t.width().max(t.height()), 320);
        assert_eq!(t.width().min(t.height()), 240);
    }
    let dims: Vec<(i64, i64)> = get_json(
        &srv,
        &format!("/api/v1/sessions/{}/captures", s.id),
        &s.customer_token,
    )
    .await["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["width"].as_i64().unwrap(), c["height"].as_i64().unwrap()))
        .collect();
    assert_eq!(dims, [(400, 300), (300, 400)]);
    assert_stored(&srv, 2, 2, "two uploads").await;
}

// ---------------------------------------------------------------------------------------------
// Refusals: each with its code, and nothing left behind.

#[tokio::test]
async fn a_body_over_the_cap_is_413_and_leaves_nothing() {
    let srv = TestServer::start_with(|s| s.max_upload_bytes = 200_000).await;
    let s = srv.session().await;
    let m = meta("hood", "close_up");
    // Just over the cap (refused while the part streams in) and far over it.
    let just_over = png(&noise(300, 260, 3));
    assert!(
        (200_001..260_000).contains(&just_over.len()),
        "{}",
        just_over.len()
    );
    let far_over = png(&noise(800, 600, 4));
    assert!(far_over.len() > 1_000_000);
    for bytes in [&just_over, &far_over] {
        let res = srv
            .upload(&s.id, API_KEY, form(bytes, "image/png", &m), None)
            .await;
        assert_problem(res, 413, "payload_too_large").await;
        assert_stored(&srv, 0, 0, "a 413").await;
    }
    // An image under the cap is taken.
    let small = encode_jpeg(&noise(200, 150, 5), 80);
    assert!(small.len() < 200_000);
    upload_ok(&srv, &s.id, API_KEY, &small, &m).await;
    assert_stored(&srv, 1, 1, "an upload under the cap").await;
}

#[tokio::test]
async fn other_formats_and_mismatched_types_are_415() {
    let srv = TestServer::start().await;
    let s = srv.session().await;
    let m = meta("hood", "close_up");
    let cases: Vec<(Vec<u8>, &str, &str)> = vec![
        (GIF.to_vec(), "image/gif", "unsupported_media_type"),
        // Declared as a JPEG, but the bytes are a GIF: the bytes decide.
        (GIF.to_vec(), "image/jpeg", "unsupported_media_type"),
        (
            b"this is a claim note, not a photo\n".to_vec(),
            "text/plain",
            "unsupported_media_type",
        ),
        // A real JPEG declared as a PNG.
        (
            encode_jpeg(&noise(64, 48, 6), 85),
            "image/png",
            "media_type_mismatch",
        ),
    ];
    for (bytes, declared, code) in cases {
        let res = srv
            .upload(&s.id, API_KEY, form(&bytes, declared, &m), None)
            .await;
        assert_problem(res, 415, code).await;
        assert_stored(&srv, 0, 0, declared).await;
    }
}

#[tokio::test]
async fn corrupt_oversized_and_invalid_uploads_are_422() {
    let srv = TestServer::start().await;
    let s = srv.session().await;
    let good = encode_jpeg(&noise(320, 240, 7), 90);
    let truncated = good[..good.len() * 6 / 10].to_vec();
    let bomb = png_claiming(65535, 65535);
    assert!(bomb.len() < 2000);
    let hood = meta("hood", "close_up");

    let res = srv
        .upload(&s.id, API_KEY, form(&truncated, "image/jpeg", &hood), None)
        .await;
    assert_problem(res, 422, "corrupt_image").await;
    assert_stored(&srv, 0, 0, "a truncated JPEG").await;

    let started = Instant::now();
    let res = srv
        .upload(&s.id, API_KEY, form(&bomb, "image/png", &hood), None)
        .await;
    let body = assert_problem(res, 422, "image_too_large").await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("65535"),
        "{body}"
    );
    // Refused from the header: nothing was decoded.
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_stored(&srv, 0, 0, "a dimension bomb").await;

    let with = |key: &str, value: &str| {
        let mut m = meta("hood", "close_up");
        m[key] = json!(value);
        m
    };
    let cases = [
        (meta("bonnet", "close_up"), "invalid_area"),
        (meta("hood", "sideways"), "invalid_angle"),
        // Control characters (a NUL, which PostgreSQL's text refuses; an escape sequence).
        (with("note", "dent\u{0}"), "invalid_meta"),
        (with("note", "\u{1b}[2J"), "invalid_meta"),
        (with("request_id", "r\u{0}"), "invalid_meta"),
    ];
    for (m, code) in cases {
        let res = srv
            .upload(&s.id, API_KEY, form(&good, "image/jpeg", &m), None)
            .await;
        assert_problem(res, 422, code).await;
        assert_stored(&srv, 0, 0, code).await;
    }

    let res = srv
        .upload(&s.id, API_KEY, capture_form(None, &hood), None)
        .await;
    assert_problem(res, 422, "missing_image").await;
    assert_stored(&srv, 0, 0, "no image part").await;

    // The same good image with valid meta is taken: the refusals above were for their reasons;
    // a note may have several lines.
    let c = upload_ok(
        &srv,
        &s.id,
        API_KEY,
        &good,
        &with("note", "dent\nand a scratch"),
    )
    .await;
    assert_eq!(c["note"], "dent\nand a scratch");
    assert_stored(&srv, 1, 1, "a good upload").await;
}

#[tokio::test]
async fn a_closed_session_takes_no_captures() {
    let srv = TestServer::start().await;
    let s = srv.session().await;
    let res = srv
        .http
        .post(srv.url(&format!("/api/v1/sessions/{}/close", s.id)))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "close: {}", res.status());
    let bytes = encode_jpeg(&noise(160, 120, 8), 85);
    let res = srv
        .upload(
            &s.id,
            API_KEY,
            form(&bytes, "image/jpeg", &meta("hood", "close_up")),
            None,
        )
        .await;
    assert_problem(res, 410, "session_closed").await;
    assert_stored(&srv, 0, 0, "an upload to a closed session").await;
}

// ---------------------------------------------------------------------------------------------
// Idempotency and concurrency.

#[tokio::test]
async fn an_idempotent_retry_returns_the_same_capture_once() {
    let srv = TestServer::start().await;
    let s = srv.session().await;
    let (mut agent, _) = srv.join(&s.agent_token).await;
    let bytes = encode_jpeg(&noise(320, 240, 9), 90);
    let m = meta("door_front_left", "close_up");

    let first = srv
        .upload(
            &s.id,
            API_KEY,
            form(&bytes, "image/jpeg", &m),
            Some("key-1"),
        )
        .await;
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    let retry = srv
        .upload(
            &s.id,
            API_KEY,
            form(&bytes, "image/jpeg", &m),
            Some("key-1"),
        )
        .await;
    assert_eq!(retry.status(), 201);
    let retry: Value = retry.json().await.unwrap();
    assert_eq!(retry, first, "the retry answers the first capture");

    // Other bytes under the same key are a conflict.
    let other = encode_jpeg(&noise(320, 240, 10), 90);
    let res = srv
        .upload(
            &s.id,
            API_KEY,
            form(&other, "image/jpeg", &m),
            Some("key-1"),
        )
        .await;
    assert_problem(res, 409, "idempotency_key_reused").await;

    assert_stored(&srv, 1, 1, "a retry and a conflicting reuse").await;
    // One event: the agent hears of the capture once.
    let created = agent.expect("capture.created").await;
    assert_eq!(created["capture"]["id"], first["id"]);
    agent.expect_silence(Duration::from_millis(500)).await;
    let mut conn = srv.db().await;
    let events: i64 = sqlx::query(
        "SELECT COUNT(*) FROM events WHERE session_id = $1 AND kind = 'capture.created'",
    )
    .bind(&s.id)
    .fetch_one(&mut conn)
    .await
    .unwrap()
    .get(0);
    assert_eq!(events, 2, "one capture.created for each role");
}

#[tokio::test]
async fn twenty_concurrent_uploads_to_one_session_all_land() {
    let srv = TestServer::start().await;
    let s = srv.session().await;
    let (mut agent, _) = srv.join(&s.agent_token).await;
    // 17 different images; the last four uploads carry the same bytes (17 distinct files).
    let images: Vec<Vec<u8>> = (0..20u64)
        .map(|i| encode_jpeg(&noise(240, 180, 100 + i.min(16)), 85))
        .collect();
    let url = srv.url(&format!("/api/v1/sessions/{}/captures", s.id));
    let tasks: Vec<_> = images
        .iter()
        .map(|bytes| {
            let (http, url, token) = (srv.http.clone(), url.clone(), s.agent_token.clone());
            let f = form(bytes, "image/jpeg", &meta("rear_bumper", "close_up"));
            tokio::spawn(async move {
                let res = http
                    .post(url)
                    .bearer_auth(token)
                    .multipart(f)
                    .send()
                    .await
                    .unwrap();
                let status = res.status();
                (status, res.json::<Value>().await.unwrap())
            })
        })
        .collect();
    let results = futures_util::future::join_all(tasks).await;
    let mut ids = HashSet::new();
    for (r, bytes) in results.into_iter().zip(&images) {
        let (status, c) = r.unwrap();
        assert_eq!(status, 201, "{c}");
        assert_eq!(c["sha256"], sha_hex(bytes).as_str());
        ids.insert(c["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), 20, "distinct ids");
    assert_stored(&srv, 20, 17, "20 concurrent uploads").await;
    let list = get_json(
        &srv,
        &format!("/api/v1/sessions/{}/captures", s.id),
        API_KEY,
    )
    .await;
    let listed: HashSet<String> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(listed, ids);
    // The agent hears of each once, with contiguous seqs.
    let mut heard = HashSet::new();
    let mut seqs = Vec::new();
    for _ in 0..20 {
        let m = agent.expect("capture.created").await;
        heard.insert(m["capture"]["id"].as_str().unwrap().to_owned());
        seqs.push(m["seq"].as_i64().unwrap());
    }
    assert_eq!(heard, ids);
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    // Each original is there, whole.
    for bytes in &images {
        let sha = sha_hex(bytes);
        let p = srv
            .data_dir
            .join("media/originals")
            .join(&sha[..2])
            .join(format!("{sha}.jpg"));
        assert_eq!(&std::fs::read(p).unwrap(), bytes);
    }
}

// ---------------------------------------------------------------------------------------------
// The customer: only against a pending capture.request.

#[tokio::test]
async fn the_customer_uploads_only_for_a_pending_request() {
    let srv = TestServer::start().await;
    let s = srv.session().await;
    let slot_id = s.body["checklist"][0]["id"].as_str().unwrap().to_owned();
    let bytes = encode_jpeg(&noise(320, 240, 11), 90);
    let still = |request_id: Option<&str>| {
        let mut m = json!({"area": "hood", "angle": "close_up", "source": "customer_still"});
        if let Some(r) = request_id {
            m["request_id"] = json!(r);
        }
        m
    };

    // No request: refused; a request the agent never sent: not found.
    let res = srv
        .upload(
            &s.id,
            &s.customer_token,
            form(&bytes, "image/jpeg", &still(None)),
            None,
        )
        .await;
    assert_problem(res, 403, "request_required").await;
    let res = srv
        .upload(
            &s.id,
            &s.customer_token,
            form(&bytes, "image/jpeg", &still(Some("r1"))),
            Some("r1"),
        )
        .await;
    assert_problem(res, 404, "not_found").await;
    assert_stored(&srv, 0, 0, "refused customer uploads").await;

    // The agent asks over the WebSocket; the customer's still for it is taken.
    let (mut agent, mut customer) = pair(&srv, &s).await;
    agent
        .send(json!({"type":"capture.request","id":"q1","request_id":"r1",
                     "area":"hood","angle":"close_up","slot_id":slot_id}))
        .await;
    assert_eq!(agent.expect("ack").await["id"], "q1");
    let asked = customer.expect("capture.request").await;
    assert_eq!(asked["request_id"], "r1");
    let res = srv
        .upload(
            &s.id,
            &s.customer_token,
            form(&bytes, "image/jpeg", &still(Some("r1"))),
            Some("r1"),
        )
        .await;
    assert_eq!(res.status(), 201);
    let c: Value = res.json().await.unwrap();
    assert_eq!(c["request_id"], "r1");
    assert_eq!(c["source"], "customer_still");
    assert_eq!(
        c["slot_id"],
        slot_id.as_str(),
        "the slot comes from the request"
    );
    assert_eq!(agent.expect("capture.created").await["capture"], c);
    assert_eq!(customer.expect("capture.created").await["capture"], c);
    let mut conn = srv.db().await;
    let row = sqlx::query(
        "SELECT status, capture_id FROM capture_requests WHERE session_id = $1 AND request_id = 'r1'",
    )
    .bind(&s.id)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(row.get::<String, _>(0), "fulfilled");
    assert_eq!(row.get::<Option<String>, _>(1).as_deref(), c["id"].as_str());

    // The page's retry (same key, same bytes) answers the same capture; another still is refused.
    let res = srv
        .upload(
            &s.id,
            &s.customer_token,
            form(&bytes, "image/jpeg", &still(Some("r1"))),
            Some("r1"),
        )
        .await;
    assert_eq!(res.status(), 201);
    assert_eq!(res.json::<Value>().await.unwrap()["id"], c["id"]);
    let other = encode_jpeg(&noise(320, 240, 12), 90);
    let res = srv
        .upload(
            &s.id,
            &s.customer_token,
            form(&other, "image/jpeg", &still(Some("r1"))),
            None,
        )
        .await;
    assert_problem(res, 409, "request_fulfilled").await;
    assert_stored(&srv, 1, 1, "a fulfilled request").await;
}

#[tokio::test]
async fn a_refused_customer_upload_tells_the_agent() {
    let srv = TestServer::start().await;
    let s = srv.session().await;
    let (mut agent, mut customer) = pair(&srv, &s).await;
    agent
        .send(json!({"type":"capture.request","request_id":"r2","area":"door_rear_right","angle":"close_up"}))
        .await;
    customer.expect("capture.request").await;

    let good = encode_jpeg(&noise(320, 240, 13), 90);
    let truncated = &good[..good.len() / 2];
    let m = json!({"area":"door_rear_right","angle":"close_up","source":"customer_still","request_id":"r2"});
    let res = srv
        .upload(
            &s.id,
            &s.customer_token,
            form(truncated, "image/jpeg", &m),
            Some("r2"),
        )
        .await;
    let problem = assert_problem(res, 422, "corrupt_image").await;
    let failed = agent.expect("capture.failed").await;
    assert_eq!(failed["request_id"], "r2");
    assert_eq!(failed["code"], "corrupt_image");
    assert_eq!(failed["message"], problem["detail"]);
    assert!(!failed["message"].as_str().unwrap().is_empty());
    // Only the agent is told, and nothing was stored.
    customer.expect_silence(Duration::from_millis(300)).await;
    assert_stored(&srv, 0, 0, "a refused customer upload").await;

    // The customer retakes: the request is still open.
    let res = srv
        .upload(
            &s.id,
            &s.customer_token,
            form(&good, "image/jpeg", &m),
            Some("r2"),
        )
        .await;
    assert_eq!(res.status(), 201);
    let c: Value = res.json().await.unwrap();
    assert_eq!(
        agent.expect("capture.created").await["capture"]["id"],
        c["id"]
    );
}

// ---------------------------------------------------------------------------------------------
// Real time: both screens know at once; the checklist follows.

#[tokio::test]
async fn both_screens_are_told_at_once_and_the_checklist_follows() {
    let srv = TestServer::start().await;
    let s = srv.session().await;
    let slot_id = s.body["checklist"][0]["id"].as_str().unwrap().to_owned();
    let area = s.body["checklist"][0]["area"].as_str().unwrap().to_owned();
    let angle = s.body["checklist"][0]["angle"].as_str().unwrap().to_owned();
    let (mut agent, mut customer) = pair(&srv, &s).await;
    let bytes = encode_jpeg(&checkerboard(640, 480, 10), 90);
    let m = json!({"area": area, "angle": angle, "slot_id": slot_id, "source": "agent_frame"});

    let started = Instant::now();
    let (answered, heard) = tokio::join!(
        async {
            let res = srv
                .upload(&s.id, &s.agent_token, form(&bytes, "image/jpeg", &m), None)
                .await;
            let at = Instant::now();
            assert_eq!(res.status(), 201);
            (res.json::<Value>().await.unwrap(), at)
        },
        async {
            let msg = customer.expect("capture.created").await;
            (msg, Instant::now())
        }
    );
    let (c, answered_at) = answered;
    let (pushed, heard_at) = heard;
    eprintln!(
        "upload answered after {:?}; customer told after {:?} (from the 201: {:?})",
        answered_at - started,
        heard_at - started,
        heard_at.saturating_duration_since(answered_at)
    );
    assert_eq!(pushed["capture"]["id"], c["id"]);
    assert_eq!(pushed["capture"], c);
    assert!(
        heard_at.saturating_duration_since(answered_at) < Duration::from_secs(1),
        "the customer heard {:?} after the 201",
        heard_at.saturating_duration_since(answered_at)
    );
    let agent_created = agent.expect("capture.created").await;
    assert_eq!(agent_created["capture"], c);

    // The slot is done on both screens.
    for (who, client) in [("agent", &mut agent), ("customer", &mut customer)] {
        let upd = client.expect("checklist.updated").await;
        let done = slot(&upd["checklist"], &slot_id);
        assert_eq!(done["status"], "done", "{who}: {upd}");
        assert_eq!(done["capture_id"], c["id"], "{who}");
        assert_eq!(upd["checklist"].as_array().unwrap().len(), 8);
        let others_pending = upd["checklist"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|x| x["id"] != slot_id.as_str())
            .all(|x| x["status"] == "pending");
        assert!(others_pending, "{who}: {upd}");
    }
    let view = get_json(&srv, &format!("/api/v1/sessions/{}", s.id), API_KEY).await;
    assert_eq!(view["capture_count"], 1);
    let done = slot(&view["checklist"], &slot_id);
    assert_eq!(done["status"], "done");
    assert_eq!(done["capture_id"], c["id"]);

    // A screen that joins later is given the capture and the checklist in its welcome.
    drop(customer);
    let (_late, w) = srv.join(&s.customer_token).await;
    assert_eq!(w["captures"], json!([c.clone()]));
    let done = slot(&w["checklist"], &slot_id);
    assert_eq!(done["status"], "done");
    assert_eq!(done["capture_id"], c["id"]);
}

#[tokio::test]
async fn a_capture_made_before_anyone_joins_is_in_the_welcome() {
    let srv = TestServer::start().await;
    let s = srv.session().await;
    let slot_id = s.body["checklist"][1]["id"].as_str().unwrap().to_owned();
    let bytes = encode_jpeg(&noise(320, 240, 14), 85);
    let m = json!({"area":"odometer","angle":"interior","slot_id":slot_id,"source":"agent_frame"});
    let c = upload_ok(&srv, &s.id, API_KEY, &bytes, &m).await;
    for token in [&s.agent_token, &s.customer_token] {
        let (_client, w) = srv.join(token).await;
        assert_eq!(w["captures"], json!([c.clone()]), "{}", w["role"]);
        assert_eq!(slot(&w["checklist"], &slot_id)["status"], "done");
        assert_eq!(slot(&w["checklist"], &slot_id)["capture_id"], c["id"]);
    }
}

#[tokio::test]
async fn the_agent_adds_checklist_slots_during_the_call() {
    let srv = TestServer::start().await;
    let s = srv.session().await;
    let (mut agent, mut customer) = pair(&srv, &s).await;
    agent
        .send(
            json!({"type":"checklist.add","id":"k1","area":"door_front_left",
                     "angle":"close_up","label":"Dent on the front door"}),
        )
        .await;
    let msgs = recv_n(&mut agent, 2).await;
    assert_eq!(of_type(&msgs, "ack")["id"], "k1");
    let to_agent = of_type(&msgs, "checklist.updated").clone();
    let to_customer = customer.expect("checklist.updated").await;
    for upd in [&to_agent, &to_customer] {
        let list = upd["checklist"].as_array().unwrap();
        assert_eq!(list.len(), 9, "{upd}");
        let added = &list[8];
        assert_eq!(added["id"], "slot_9");
        assert_eq!(added["area"], "door_front_left");
        assert_eq!(added["angle"], "close_up");
        assert_eq!(added["label"], "Dent on the front door");
        assert_eq!(added["status"], "pending");
        assert_eq!(added["capture_id"], Value::Null);
        // The first eight are unchanged.
        assert_eq!(
            list[..8],
            s.body["checklist"].as_array().unwrap()[..8],
            "{upd}"
        );
    }
    let view = get_json(&srv, &format!("/api/v1/sessions/{}", s.id), API_KEY).await;
    assert_eq!(view["checklist"], to_customer["checklist"]);

    // The customer may not add slots.
    customer
        .send(json!({"type":"checklist.add","id":"c1","area":"hood","angle":"close_up"}))
        .await;
    let err = customer.expect("error").await;
    assert_eq!(err["code"], "forbidden");
    assert_eq!(err["ref"], "c1");
    agent.expect_silence(Duration::from_millis(300)).await;
    let view = get_json(&srv, &format!("/api/v1/sessions/{}", s.id), API_KEY).await;
    assert_eq!(view["checklist"].as_array().unwrap().len(), 9);

    // The new slot takes a capture like any other.
    let bytes = encode_jpeg(&noise(320, 240, 15), 90);
    let m = json!({"area":"door_front_left","angle":"close_up","slot_id":"slot_9","source":"agent_frame"});
    let c = upload_ok(&srv, &s.id, &s.agent_token, &bytes, &m).await;
    assert_eq!(c["slot_id"], "slot_9");
    assert_eq!(
        customer.expect("capture.created").await["capture"]["id"],
        c["id"]
    );
    let upd = customer.expect("checklist.updated").await;
    assert_eq!(slot(&upd["checklist"], "slot_9")["status"], "done");
}

// ---------------------------------------------------------------------------------------------
// Quality figures.

#[tokio::test]
async fn quality_flags_blur_and_darkness_not_detail() {
    let srv = TestServer::start().await;
    let s = srv.session().await;
    let m = meta("front_bumper", "close_up");
    let warnings = |c: &Value| -> Vec<String> {
        c["quality"]["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w.as_str().unwrap().to_owned())
            .collect()
    };

    for (name, img) in [
        ("checkerboard", checkerboard(800, 600, 8)),
        ("noise", noise(800, 600, 16)),
    ] {
        let c = upload_ok(&srv, &s.id, API_KEY, &encode_jpeg(&img, 90), &m).await;
        let w = warnings(&c);
        assert!(
            !w.contains(&"blurry".to_owned()),
            "{name}: {}",
            c["quality"]
        );
        assert!(w.is_empty(), "{name}: {}", c["quality"]);
        assert!(
            c["quality"]["sharpness"].as_f64().unwrap() >= 30.0,
            "{name}"
        );
    }

    let dark = upload_ok(
        &srv,
        &s.id,
        API_KEY,
        &encode_jpeg(&near_black(800, 600), 90),
        &m,
    )
    .await;
    assert!(
        warnings(&dark).contains(&"too_dark".to_owned()),
        "{}",
        dark["quality"]
    );
    assert!(dark["quality"]["brightness"].as_f64().unwrap() < 0.15);

    let soft = upload_ok(
        &srv,
        &s.id,
        API_KEY,
        &encode_jpeg(&smooth(800, 600), 90),
        &m,
    )
    .await;
    assert_eq!(warnings(&soft), ["blurry"], "{}", soft["quality"]);
}

#[tokio::test]
async fn concurrent_retries_under_one_key_store_one_capture() {
    let srv = TestServer::start().await;
    let s = srv.session().await;
    let (mut agent, _) = srv.join(&s.agent_token).await;
    let bytes = encode_jpeg(&noise(320, 240, 17), 90);
    let url = srv.url(&format!("/api/v1/sessions/{}/captures", s.id));
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let (http, url) = (srv.http.clone(), url.clone());
            let f = form(&bytes, "image/jpeg", &meta("roof", "top_down"));
            tokio::spawn(async move {
                let res = http
                    .post(url)
                    .bearer_auth(API_KEY)
                    .header("idempotency-key", "same-key")
                    .multipart(f)
                    .send()
                    .await
                    .unwrap();
                (res.status(), res.json::<Value>().await.unwrap())
            })
        })
        .collect();
    let mut ids = HashSet::new();
    for r in futures_util::future::join_all(tasks).await {
        let (status, c) = r.unwrap();
        assert_eq!(status, 201, "{c}");
        ids.insert(c["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), 1, "one capture for one key: {ids:?}");
    assert_stored(&srv, 1, 1, "concurrent retries").await;
    agent.expect("capture.created").await;
    agent.expect_silence(Duration::from_millis(500)).await;
}

#[tokio::test]
async fn concurrent_stills_for_one_request_fulfil_it_once() {
    let srv = TestServer::start().await;
    let s = srv.session().await;
    let (mut agent, mut customer) = pair(&srv, &s).await;
    agent
        .send(json!({"type":"capture.request","request_id":"r9","area":"hood","angle":"close_up"}))
        .await;
    customer.expect("capture.request").await;
    let url = srv.url(&format!("/api/v1/sessions/{}/captures", s.id));
    let m = json!({"area":"hood","angle":"close_up","source":"customer_still","request_id":"r9"});
    // Different stills, no key: only one of them may fulfil the request.
    let tasks: Vec<_> = (0..6u64)
        .map(|i| {
            let (http, url, token) = (srv.http.clone(), url.clone(), s.customer_token.clone());
            let f = form(
                &encode_jpeg(&noise(320, 240, 200 + i), 90),
                "image/jpeg",
                &m,
            );
            tokio::spawn(async move {
                let res = http
                    .post(url)
                    .bearer_auth(token)
                    .multipart(f)
                    .send()
                    .await
                    .unwrap();
                (res.status(), res.json::<Value>().await.unwrap())
            })
        })
        .collect();
    let mut created = Vec::new();
    for r in futures_util::future::join_all(tasks).await {
        let (status, body) = r.unwrap();
        match status.as_u16() {
            201 => created.push(body),
            409 => assert_eq!(body["code"], "request_fulfilled", "{body}"),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(
        created.len(),
        1,
        "one still fulfils the request: {created:?}"
    );
    assert_stored(&srv, 1, 1, "racing stills for one request").await;
}
