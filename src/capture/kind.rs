//! Which image formats a capture may be, told apart by their first bytes.
//!
//! The declared content type of an upload is only a claim made by the client; the magic bytes are
//! what the decoder will actually see, so they decide.

use super::CaptureError;

/// The three formats phones and browsers produce for stills and frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ImageKind {
    Jpeg,
    Png,
    Webp,
}

const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];

/// How many leading bytes [`sniff`] needs to recognise every kind.
pub const SNIFF_LEN: usize = 12;

impl ImageKind {
    pub fn mime(self) -> &'static str {
        match self {
            Self::Jpeg => "image/jpeg",
            Self::Png => "image/png",
            Self::Webp => "image/webp",
        }
    }

    /// File extension without the dot, for stored originals and export entries.
    pub fn ext(self) -> &'static str {
        match self {
            Self::Jpeg => "jpg",
            Self::Png => "png",
            Self::Webp => "webp",
        }
    }

    pub(crate) fn format(self) -> image::ImageFormat {
        match self {
            Self::Jpeg => image::ImageFormat::Jpeg,
            Self::Png => image::ImageFormat::Png,
            Self::Webp => image::ImageFormat::WebP,
        }
    }
}

impl std::fmt::Display for ImageKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.mime())
    }
}

/// Recognises a kind by its magic bytes; `prefix` may be the whole body or its first
/// [`SNIFF_LEN`] bytes.
pub fn sniff(prefix: &[u8]) -> Option<ImageKind> {
    if prefix.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some(ImageKind::Jpeg)
    } else if prefix.starts_with(&PNG_SIGNATURE) {
        Some(ImageKind::Png)
    } else if prefix.len() >= 12 && &prefix[0..4] == b"RIFF" && &prefix[8..12] == b"WEBP" {
        // Bytes 4..8 are the RIFF size, which says nothing about the format.
        Some(ImageKind::Webp)
    } else {
        None
    }
}

/// Maps a declared content type to a kind. Parameters and case are ignored; `image/jpg`, which
/// some Android browsers send, counts as JPEG.
pub fn kind_from_mime(mime: &str) -> Option<ImageKind> {
    let essence = mime.split(';').next().unwrap_or_default().trim();
    if essence.eq_ignore_ascii_case("image/jpeg") || essence.eq_ignore_ascii_case("image/jpg") {
        Some(ImageKind::Jpeg)
    } else if essence.eq_ignore_ascii_case("image/png") {
        Some(ImageKind::Png)
    } else if essence.eq_ignore_ascii_case("image/webp") {
        Some(ImageKind::Webp)
    } else {
        None
    }
}

/// Decides the kind of an upload from its bytes and checks it against what the client declared.
///
/// A missing declaration, or the generic `application/octet-stream` that some clients send for any
/// file part, defers to the bytes; any other declaration must name the same kind the bytes are.
pub fn identify(bytes: &[u8], declared: Option<&str>) -> Result<ImageKind, CaptureError> {
    let actual = sniff(bytes).ok_or(CaptureError::Unsupported)?;
    let Some(declared) = declared.map(str::trim).filter(|d| !d.is_empty()) else {
        return Ok(actual);
    };
    if declared
        .split(';')
        .next()
        .is_some_and(|e| e.trim().eq_ignore_ascii_case("application/octet-stream"))
    {
        return Ok(actual);
    }
    match kind_from_mime(declared) {
        Some(kind) if kind == actual => Ok(actual),
        _ => Err(CaptureError::Mismatch {
            // The declaration comes from the client: keep only enough of it to be useful in a
            // message, so an odd header cannot bloat error bodies or logs.
            declared: declared.chars().take(64).collect(),
            actual,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::testimg;

    #[test]
    fn each_kind_is_sniffed_from_a_real_encoding() {
        let img = testimg::checkerboard(64, 48, 8);
        for kind in [ImageKind::Jpeg, ImageKind::Png, ImageKind::Webp] {
            let bytes = testimg::encode(&img, kind);
            assert_eq!(sniff(&bytes), Some(kind));
            assert_eq!(sniff(&bytes[..SNIFF_LEN]), Some(kind));
        }
    }

    #[test]
    fn text_gif_and_short_inputs_are_not_images() {
        assert_eq!(sniff(b"hello, this is plain text"), None);
        assert_eq!(sniff(b"GIF89a\x01\x00\x01\x00\x80\x00\x00"), None);
        assert_eq!(sniff(b"RIFF\x24\x00\x00\x00WAVEfmt "), None);
        assert_eq!(sniff(b"RIFF"), None);
        assert_eq!(sniff(&[0xFF, 0xD8]), None);
        assert_eq!(sniff(&[]), None);
        assert!(matches!(
            identify(b"GIF89a\x01\x00\x01\x00", Some("image/gif")),
            Err(CaptureError::Unsupported)
        ));
    }

    #[test]
    fn mime_names_map_to_kinds() {
        assert_eq!(kind_from_mime("image/jpeg"), Some(ImageKind::Jpeg));
        assert_eq!(kind_from_mime("image/jpg"), Some(ImageKind::Jpeg));
        assert_eq!(kind_from_mime("IMAGE/JPEG; q=1"), Some(ImageKind::Jpeg));
        assert_eq!(kind_from_mime("image/png"), Some(ImageKind::Png));
        assert_eq!(kind_from_mime(" image/webp "), Some(ImageKind::Webp));
        assert_eq!(kind_from_mime("image/gif"), None);
        assert_eq!(kind_from_mime("text/plain"), None);
        for kind in [ImageKind::Jpeg, ImageKind::Png, ImageKind::Webp] {
            assert_eq!(kind_from_mime(kind.mime()), Some(kind));
        }
        assert_eq!(ImageKind::Jpeg.ext(), "jpg");
    }

    #[test]
    fn declared_type_must_match_the_bytes() {
        let png = testimg::encode(&testimg::checkerboard(16, 16, 4), ImageKind::Png);
        assert_eq!(identify(&png, Some("image/png")), Ok(ImageKind::Png));
        assert_eq!(identify(&png, None), Ok(ImageKind::Png));
        assert_eq!(
            identify(&png, Some("application/octet-stream")),
            Ok(ImageKind::Png)
        );
        let err = identify(&png, Some("image/jpeg")).unwrap_err();
        assert_eq!(
            err,
            CaptureError::Mismatch {
                declared: "image/jpeg".into(),
                actual: ImageKind::Png
            }
        );
        assert_eq!(err.code(), "media_type_mismatch");
        assert_eq!(err.status(), 415);
        assert!(matches!(
            identify(&png, Some("text/plain")),
            Err(CaptureError::Mismatch { .. })
        ));
    }
}
