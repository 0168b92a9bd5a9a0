//! Decoding an untrusted upload within fixed bounds, and deriving what is stored beside the
//! original: its size, quality figures and a thumbnail. The original bytes are never re-encoded.

use std::io::Cursor;

use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageError, ImageReader};

use super::quality::{ANALYSIS_EDGE, Quality};
use super::{CaptureError, ImageKind};

/// Long edge of the thumbnail, in pixels (the contract's `GET /captures/{id}/thumbnail`).
pub const THUMBNAIL_EDGE: u32 = 320;

/// JPEG quality of thumbnails: small on the wire, still clear enough to pick a capture in a list.
const THUMBNAIL_QUALITY: u8 = 80;

/// Bytes per pixel the decode budget allows: 8-bit RGBA. A 16-bit image therefore gets half the
/// pixel count, which phones never come near.
const BUDGET_BYTES_PER_PIXEL: u64 = 4;

/// The largest image the server will decode. Checked against the header before any pixel is
/// decoded, so a small file claiming a huge size costs nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Neither side may exceed this.
    pub max_side: u32,
    /// Nor may width x height. 40 MP leaves room for the 24-and-more MP stills of current flagship
    /// phones while bounding a decode to 160 MB of pixels.
    pub max_pixels: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_side: 8192,
            max_pixels: 40_000_000,
        }
    }
}

impl Limits {
    /// Refuses a size, as read from a header, that exceeds these limits.
    pub fn check(&self, width: u32, height: u32) -> Result<(), CaptureError> {
        if width > self.max_side
            || height > self.max_side
            || u64::from(width) * u64::from(height) > self.max_pixels
        {
            return Err(CaptureError::TooLarge { width, height });
        }
        Ok(())
    }

    /// Bytes the decoded pixels may take.
    fn decode_budget(&self) -> u64 {
        self.max_pixels.saturating_mul(BUDGET_BYTES_PER_PIXEL)
    }

    /// The same bounds handed to the decoders, as a second line behind [`Limits::check`]: the
    /// dimension limits are enforced again by every decoder, and `max_alloc` caps the working
    /// buffers of those that honour it (png) at twice the pixel budget.
    fn decoder_limits(&self) -> image::Limits {
        let mut limits = self.alloc_only();
        limits.max_image_width = Some(self.max_side);
        limits.max_image_height = Some(self.max_side);
        limits
    }

    /// Just the allocation cap, for reading a header whose size is still to be judged.
    fn alloc_only(&self) -> image::Limits {
        let mut limits = image::Limits::no_limits();
        limits.max_alloc = Some(self.decode_budget().saturating_mul(2));
        limits
    }
}

/// What processing an upload yields.
#[derive(Debug, Clone, PartialEq)]
pub struct Processed {
    /// Size of the stored original as its header gives it, before any EXIF rotation: the
    /// original is kept byte for byte, so this is what a client that opens it will find.
    pub width: u32,
    pub height: u32,
    pub quality: Quality,
    /// JPEG, long edge at most [`THUMBNAIL_EDGE`], aspect kept, EXIF orientation applied so it
    /// shows upright in a browser that ignores EXIF.
    pub thumbnail: Vec<u8>,
}

fn reader(bytes: &[u8], kind: ImageKind) -> ImageReader<Cursor<&[u8]>> {
    ImageReader::with_format(Cursor::new(bytes), kind.format())
}

/// Reads the image size from the header alone; no pixel is decoded.
pub fn dimensions(bytes: &[u8], kind: ImageKind) -> Result<(u32, u32), CaptureError> {
    reader(bytes, kind)
        .into_dimensions()
        .map_err(|e| refusal(e, None))
}

/// Validates and decodes an upload and derives its quality figures and thumbnail.
///
/// Blocking and CPU-heavy (tens to hundreds of milliseconds for a phone still): call it through
/// [`super::Pipeline`], which runs it on the blocking pool behind a semaphore.
pub fn process(bytes: &[u8], kind: ImageKind, limits: &Limits) -> Result<Processed, CaptureError> {
    // Only the header is read here. The decoder starts with no dimension limits so that an
    // oversized image is refused below with its size, rather than as an anonymous limit error.
    let mut reader = reader(bytes, kind);
    reader.limits(limits.alloc_only());
    let mut decoder = reader.into_decoder().map_err(|e| refusal(e, None))?;
    let (width, height) = decoder.dimensions();
    limits.check(width, height)?;
    let size = Some((width, height));
    decoder
        .set_limits(limits.decoder_limits())
        .map_err(|e| refusal(e, size))?;
    // Counts the channels and bit depth too, which the pixel check above cannot see.
    if decoder.total_bytes() > limits.decode_budget() {
        return Err(CaptureError::TooLarge { width, height });
    }
    if kind == ImageKind::Jpeg {
        // The JPEG decoder would quietly fill in a truncated file; see `jpeg`.
        super::jpeg::check_complete(bytes)?;
    }
    // A damaged EXIF block should not cost the customer the photo: show it unrotated instead.
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let image = DynamicImage::from_decoder(decoder).map_err(|e| refusal(e, size))?;

    // Shrink first, then rotate: rotating a full-size still would allocate a second copy of it,
    // and orientation commutes with scaling (the quality figures do not depend on it at all).
    let analysis = shrink_to(image, ANALYSIS_EDGE);
    let quality = Quality::measure(&analysis.to_luma8());
    let mut thumb = shrink_to(analysis, THUMBNAIL_EDGE);
    thumb.apply_orientation(orientation);

    Ok(Processed {
        width,
        height,
        quality,
        thumbnail: encode_thumbnail(&thumb)?,
    })
}

/// Scales down, keeping the aspect ratio, so the long edge is at most `edge`; never scales up.
fn shrink_to(image: DynamicImage, edge: u32) -> DynamicImage {
    if image.width().max(image.height()) <= edge {
        image
    } else {
        // Box averaging: every source pixel contributes, so no detail is aliased away, and it is
        // several times faster than a windowed filter on a 12 MP still. `image`'s own
        // `thumbnail`, computed the fast way (see `shrink`).
        super::shrink::thumbnail(&image, edge)
    }
}

fn encode_thumbnail(image: &DynamicImage) -> Result<Vec<u8>, CaptureError> {
    let rgb = if image.color().has_alpha() {
        // JPEG has no alpha: composite onto white, as a browser shows a transparent PNG, rather
        // than exposing whatever colour hides under transparent pixels.
        let mut rgb = image::RgbImage::new(image.width(), image.height());
        for (dst, src) in rgb.pixels_mut().zip(image.to_rgba8().pixels()) {
            let [r, g, b, a] = src.0;
            let over_white = |c: u8| {
                let (c, a) = (u32::from(c), u32::from(a));
                ((c * a + 255 * (255 - a) + 127) / 255) as u8
            };
            *dst = image::Rgb([over_white(r), over_white(g), over_white(b)]);
        }
        rgb
    } else {
        image.to_rgb8()
    };
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, THUMBNAIL_QUALITY)
        .encode_image(&rgb)
        .map_err(|e| CaptureError::Internal(format!("thumbnail encoding: {e}")))?;
    Ok(out)
}

/// Maps a decoder error to the reason given to the client. `size` is the header's, when known.
fn refusal(err: ImageError, size: Option<(u32, u32)>) -> CaptureError {
    match err {
        ImageError::Limits(e) => match size {
            Some((width, height)) => CaptureError::TooLarge { width, height },
            None => CaptureError::Corrupt(format!("exceeds decoder limits: {e}")),
        },
        ImageError::Decoding(e) => CaptureError::Corrupt(e.to_string()),
        // Reading from memory cannot fail except by running out of data: a truncated file.
        ImageError::IoError(e) => CaptureError::Corrupt(e.to_string()),
        // A valid container using a feature the decoder lacks (e.g. arithmetic-coded JPEG) is, to
        // the client, an image this server cannot read: a 422, not a 415 about the media type.
        ImageError::Unsupported(e) => CaptureError::Corrupt(format!("cannot be decoded: {e}")),
        ImageError::Parameter(e) => CaptureError::Corrupt(e.to_string()),
        ImageError::Encoding(e) => CaptureError::Internal(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::testimg;

    fn decode_jpeg(bytes: &[u8]) -> DynamicImage {
        image::load_from_memory_with_format(bytes, image::ImageFormat::Jpeg).unwrap()
    }

    #[test]
    fn every_kind_is_processed() {
        let img = testimg::scene(640, 480);
        for kind in [ImageKind::Jpeg, ImageKind::Png, ImageKind::Webp] {
            let bytes = testimg::encode(&img, kind);
            assert_eq!(dimensions(&bytes, kind), Ok((640, 480)));
            let p = process(&bytes, kind, &Limits::default()).unwrap();
            assert_eq!((p.width, p.height), (640, 480), "{kind}");
            assert!(p.quality.warnings.is_empty(), "{kind}: {:?}", p.quality);
            let thumb = decode_jpeg(&p.thumbnail);
            assert_eq!((thumb.width(), thumb.height()), (320, 240), "{kind}");
        }
    }

    #[test]
    fn thumbnail_keeps_the_aspect_and_long_edge() {
        let bytes = testimg::encode(&testimg::scene(2000, 1000), ImageKind::Jpeg);
        let p = process(&bytes, ImageKind::Jpeg, &Limits::default()).unwrap();
        assert_eq!((p.width, p.height), (2000, 1000));
        assert_eq!(sniff_thumb(&p.thumbnail), Some(ImageKind::Jpeg));
        let thumb = decode_jpeg(&p.thumbnail);
        assert_eq!((thumb.width(), thumb.height()), (320, 160));

        // Portrait, and smaller than a thumbnail: kept as it is, not upscaled.
        let bytes = testimg::encode(&testimg::scene(120, 200), ImageKind::Png);
        let p = process(&bytes, ImageKind::Png, &Limits::default()).unwrap();
        let thumb = decode_jpeg(&p.thumbnail);
        assert_eq!((thumb.width(), thumb.height()), (120, 200));
    }

    fn sniff_thumb(bytes: &[u8]) -> Option<ImageKind> {
        crate::capture::sniff(bytes)
    }

    #[test]
    fn transparent_png_gets_a_white_background_in_the_thumbnail() {
        let clear = image::RgbaImage::from_pixel(40, 40, image::Rgba([0, 0, 0, 0]));
        let bytes = testimg::encode(&DynamicImage::ImageRgba8(clear), ImageKind::Png);
        let p = process(&bytes, ImageKind::Png, &Limits::default()).unwrap();
        let thumb = decode_jpeg(&p.thumbnail).to_rgb8();
        assert!(thumb.get_pixel(20, 20).0.iter().all(|&c| c > 245));
    }

    #[test]
    fn exif_orientation_rotates_the_thumbnail_only() {
        // 200x100: left half red, right half blue, tagged "rotate 90 degrees clockwise to view"
        // (orientation 6, what a phone held upright writes).
        let mut img = image::RgbImage::from_pixel(200, 100, image::Rgb([220, 20, 20]));
        for x in 100..200 {
            for y in 0..100 {
                img.put_pixel(x, y, image::Rgb([20, 20, 220]));
            }
        }
        let bytes = testimg::jpeg_with_orientation(&DynamicImage::ImageRgb8(img), 6);
        let mut decoder = reader(&bytes, ImageKind::Jpeg).into_decoder().unwrap();
        assert_eq!(decoder.orientation().unwrap(), Orientation::Rotate90);

        let p = process(&bytes, ImageKind::Jpeg, &Limits::default()).unwrap();
        // The stored original is untouched, so its size is the header's.
        assert_eq!((p.width, p.height), (200, 100));
        let thumb = decode_jpeg(&p.thumbnail).to_rgb8();
        assert_eq!((thumb.width(), thumb.height()), (100, 200));
        // Turned clockwise, the left (red) half is now on top.
        let top = thumb.get_pixel(50, 20).0;
        let bottom = thumb.get_pixel(50, 180).0;
        assert!(top[0] > 150 && top[2] < 100, "top {top:?}");
        assert!(bottom[2] > 150 && bottom[0] < 100, "bottom {bottom:?}");
    }

    #[test]
    fn over_limit_images_are_refused_before_decoding() {
        let bytes = testimg::encode(&testimg::scene(300, 200), ImageKind::Png);
        let small_side = Limits {
            max_side: 250,
            max_pixels: 40_000_000,
        };
        assert_eq!(
            process(&bytes, ImageKind::Png, &small_side),
            Err(CaptureError::TooLarge {
                width: 300,
                height: 200
            })
        );
        let few_pixels = Limits {
            max_side: 8192,
            max_pixels: 300 * 200 - 1,
        };
        assert!(matches!(
            process(&bytes, ImageKind::Png, &few_pixels),
            Err(CaptureError::TooLarge { .. })
        ));
        let exact = Limits {
            max_side: 300,
            max_pixels: 300 * 200,
        };
        assert!(process(&bytes, ImageKind::Png, &exact).is_ok());
    }

    #[test]
    fn a_png_header_claiming_65535_square_is_refused_without_decoding() {
        let bomb = testimg::png_header_only(65535, 65535);
        assert_eq!(crate::capture::sniff(&bomb), Some(ImageKind::Png));
        assert_eq!(dimensions(&bomb, ImageKind::Png), Ok((65535, 65535)));
        // Its image data holds no pixels: had the decoder been asked for any, it would have failed
        // as corrupt. TooLarge proves the size was judged from the header first.
        let err = process(&bomb, ImageKind::Png, &Limits::default()).unwrap_err();
        assert_eq!(
            err,
            CaptureError::TooLarge {
                width: 65535,
                height: 65535
            }
        );
        assert_eq!((err.code(), err.status()), ("image_too_large", 422));
    }

    #[test]
    fn a_jpeg_cut_in_half_is_corrupt() {
        let bytes = testimg::encode(&testimg::noise(600, 400, 0.5, 0.3, 9), ImageKind::Jpeg);
        let half = &bytes[..bytes.len() / 2];
        let err = process(half, ImageKind::Jpeg, &Limits::default()).unwrap_err();
        assert!(matches!(err, CaptureError::Corrupt(_)), "{err:?}");
        assert_eq!((err.code(), err.status()), ("corrupt_image", 422));
    }

    #[test]
    fn truncated_png_and_webp_are_corrupt() {
        let img = testimg::noise(300, 200, 0.5, 0.3, 4);
        for kind in [ImageKind::Png, ImageKind::Webp] {
            let bytes = testimg::encode(&img, kind);
            for cut in [bytes.len() / 2, 40, 20] {
                let err = process(&bytes[..cut], kind, &Limits::default()).unwrap_err();
                assert!(
                    matches!(err, CaptureError::Corrupt(_)),
                    "{kind} {cut}: {err:?}"
                );
            }
        }
    }

    #[test]
    fn random_bytes_after_a_valid_magic_are_corrupt() {
        let junk = testimg::random_bytes(4096, 42);
        let magics: [(ImageKind, &[u8]); 3] = [
            (ImageKind::Jpeg, &[0xFF, 0xD8, 0xFF]),
            (ImageKind::Png, b"\x89PNG\r\n\x1a\n"),
            (ImageKind::Webp, b"RIFF\x00\x10\x00\x00WEBP"),
        ];
        for (kind, magic) in magics {
            let bytes = [magic, &junk[..]].concat();
            assert_eq!(crate::capture::sniff(&bytes), Some(kind));
            let err = process(&bytes, kind, &Limits::default()).unwrap_err();
            assert!(matches!(err, CaptureError::Corrupt(_)), "{kind}: {err:?}");
        }
    }

    #[test]
    fn bytes_of_another_kind_do_not_decode() {
        let png = testimg::encode(&testimg::scene(64, 64), ImageKind::Png);
        assert!(matches!(
            process(&png, ImageKind::Jpeg, &Limits::default()),
            Err(CaptureError::Corrupt(_))
        ));
    }

    #[test]
    fn blurred_upload_is_flagged() {
        // Blur of 3 px at full size is about 2.4 px at the analysis size.
        let sharp = testimg::scene(1280, 960);
        let blurred = sharp.blur(3.0);
        let limits = Limits::default();
        let p = process(
            &testimg::encode(&sharp, ImageKind::Jpeg),
            ImageKind::Jpeg,
            &limits,
        );
        assert_eq!(p.map(|p| p.quality.warnings), Ok(vec![]));
        let p = process(
            &testimg::encode(&blurred, ImageKind::Jpeg),
            ImageKind::Jpeg,
            &limits,
        );
        assert_eq!(p.map(|p| p.quality.warnings), Ok(vec!["blurry"]));
    }
}
