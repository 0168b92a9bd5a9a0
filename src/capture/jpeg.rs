//! A structural check that a JPEG is complete.
//!
//! The JPEG decoder behind `image` (zune-jpeg, in its lenient mode, which `image` does not let us
//! change) decodes a truncated file without complaint and paints the missing rows grey. An upload
//! cut short by a dropped connection would then be stored as if it were the customer's photo, so
//! the segments are walked here, and a file whose last scan does not end in an end-of-image marker
//! is refused as corrupt.

use super::CaptureError;

const SOI: u8 = 0xD8;
const EOI: u8 = 0xD9;
const SOS: u8 = 0xDA;
const TEM: u8 = 0x01;
const RST0: u8 = 0xD0;
const RST7: u8 = 0xD7;

fn truncated(what: &str) -> CaptureError {
    CaptureError::Corrupt(format!("JPEG truncated {what}"))
}

/// Ok once the end-of-image marker is reached. Whatever follows it is ignored: phones append
/// data there (Motion Photo videos, maker trailers) and the original is kept byte for byte anyway.
pub(crate) fn check_complete(bytes: &[u8]) -> Result<(), CaptureError> {
    if bytes.get(..2) != Some(&[0xFF, SOI]) {
        return Err(CaptureError::Corrupt("not a JPEG stream".into()));
    }
    let mut pos = 2;
    loop {
        // Between segments only markers are expected; tolerate stray bytes and fill bytes (0xFF
        // runs) as libjpeg does, by moving on to the next 0xFF that starts a marker.
        let Some(ff) = bytes[pos..].iter().position(|&b| b == 0xFF) else {
            return Err(truncated("before its end-of-image marker"));
        };
        pos += ff;
        while bytes.get(pos + 1) == Some(&0xFF) {
            pos += 1;
        }
        let Some(&marker) = bytes.get(pos + 1) else {
            return Err(truncated("inside a marker"));
        };
        match marker {
            EOI => return Ok(()),
            // Markers that stand alone, without a length; 0x00 is not a marker, just a stray
            // stuffed byte outside a scan.
            SOI | TEM | RST0..=RST7 | 0x00 => pos += 2,
            _ => {
                let Some(len) = bytes.get(pos + 2..pos + 4) else {
                    return Err(truncated("inside a segment header"));
                };
                let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
                if len < 2 {
                    return Err(CaptureError::Corrupt("JPEG segment length under 2".into()));
                }
                pos += 2 + len;
                if pos > bytes.len() {
                    return Err(truncated("inside a segment"));
                }
                if marker == SOS {
                    pos = skip_entropy_coded(bytes, pos)?;
                }
            }
        }
    }
}

/// Returns the offset of the marker that ends the scan data starting at `pos`. Inside a scan a
/// 0xFF byte is always followed by 0x00 (a stuffed byte), a restart marker or more fill, so the
/// first other marker ends it.
fn skip_entropy_coded(bytes: &[u8], mut pos: usize) -> Result<usize, CaptureError> {
    loop {
        let Some(ff) = bytes[pos..].iter().position(|&b| b == 0xFF) else {
            return Err(truncated("inside the image data"));
        };
        pos += ff;
        match bytes.get(pos + 1) {
            None => return Err(truncated("inside the image data")),
            Some(0x00 | RST0..=RST7) => pos += 2,
            Some(0xFF) => pos += 1,
            Some(_) => return Ok(pos),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::{ImageKind, testimg};

    #[test]
    fn a_whole_jpeg_passes_even_with_data_after_its_end() {
        let bytes = testimg::encode(&testimg::noise(160, 120, 0.5, 0.3, 5), ImageKind::Jpeg);
        assert_eq!(check_complete(&bytes), Ok(()));
        let mut motion_photo = bytes.clone();
        motion_photo.extend_from_slice(b"\x00\x00\x00\x18ftypmp42 trailing video");
        assert_eq!(check_complete(&motion_photo), Ok(()));
        let tagged = testimg::jpeg_with_orientation(&testimg::scene(64, 48), 3);
        assert_eq!(check_complete(&tagged), Ok(()));
    }

    #[test]
    fn every_cut_of_a_jpeg_is_refused() {
        let bytes = testimg::encode(&testimg::noise(64, 48, 0.5, 0.3, 6), ImageKind::Jpeg);
        for cut in 0..bytes.len() - 1 {
            assert!(
                matches!(check_complete(&bytes[..cut]), Err(CaptureError::Corrupt(_))),
                "cut at {cut} of {}",
                bytes.len()
            );
        }
    }

    #[test]
    fn a_bad_segment_length_is_refused() {
        assert!(check_complete(&[0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x01, 0, 0]).is_err());
        assert!(check_complete(b"not a jpeg").is_err());
    }
}
