//! Upload sniffing and decoding: what `POST /sessions/{id}/captures` does with the bytes of the
//! `image` part (`identify` against the declared type, then `process` within the decode limits),
//! minus the blocking pool that contains a decoder panic in the service: here a panic is a bug.
//!
//! Input: one byte choosing the declared Content-Type, then the image bytes.

#![no_main]

use capturelink::capture::{ImageKind, Limits, THUMBNAIL_EDGE, dimensions, identify, process};
use libfuzzer_sys::fuzz_target;

const DECLARED: [Option<&str>; 6] = [
    None,
    Some("image/jpeg"),
    Some("image/png"),
    Some("image/webp"),
    Some("application/octet-stream"),
    Some("image/gif"),
];

/// Smaller than the service's (8192 px a side, 40 MP) so that each run stays fast; the checks
/// are the same code.
const LIMITS: Limits = Limits {
    max_side: 2048,
    max_pixels: 1_000_000,
};

fuzz_target!(|data: &[u8]| {
    let Some((&choice, bytes)) = data.split_first() else {
        return;
    };
    let declared = DECLARED[usize::from(choice) % DECLARED.len()];
    let Ok(kind) = identify(bytes, declared) else {
        return;
    };
    if let Ok(p) = process(bytes, kind, &LIMITS) {
        assert!(p.width >= 1 && p.height >= 1);
        assert!(p.width <= LIMITS.max_side && p.height <= LIMITS.max_side);
        assert!(u64::from(p.width) * u64::from(p.height) <= LIMITS.max_pixels);
        assert!(p.quality.sharpness.is_finite() && p.quality.brightness.is_finite());
        // The thumbnail is a JPEG of at most THUMBNAIL_EDGE a side.
        let (w, h) = dimensions(&p.thumbnail, ImageKind::Jpeg).expect("the thumbnail is a JPEG");
        assert!(w.max(h) <= THUMBNAIL_EDGE && w >= 1 && h >= 1, "thumbnail {w}x{h}");
    }
});
