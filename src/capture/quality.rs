//! Quality figures shown to the agent so a blurred or badly exposed still is retaken while the
//! customer is still at the car.
//!
//! Both figures are computed on a greyscale copy scaled to [`ANALYSIS_EDGE`], so they describe the
//! picture rather than the camera: the same scene shot at 12 MP or at 3 MP scores about the same.

use image::GrayImage;

/// Long edge, in pixels, of the copy the figures are computed on. About what a reviewer sees on a
/// laptop screen without zooming: blur visible at this size is blur that matters, while sensor
/// noise is averaged away by the downscale. Smaller images are measured as they are, never
/// upscaled (interpolation would invent blur).
pub const ANALYSIS_EDGE: u32 = 1024;

/// Side, in pixels of the analysis copy, of the tiles sharpness is measured on (the tiles on the
/// right and bottom edges absorb the remainder, so they are up to twice as large).
const TILE: usize = 64;

/// Share of the tiles, the sharpest ones, that the sharpness figure is taken from. A claims photo
/// is sharp when its subject is: a dent on a smooth door, a scratch against the sky, a plate with
/// the street behind it out of focus. Averaging the whole frame would call those blurry; a tenth
/// of the frame is about the least a deliberate subject covers.
const SHARPEST_SHARE: f64 = 0.1;

/// `sharpness` under this is reported as "blurry".
///
/// Sharpness is the variance of the 3x3 Laplacian over grey levels 0..=255 (the usual "variance of
/// Laplacian" focus measure), computed per [`TILE`] and averaged over the sharpest tenth of the
/// tiles. Calibrated at [`ANALYSIS_EDGE`] on the generated images of the tests (noise,
/// checkerboards, a synthetic scene with panels, thin lines and grain, the same scene darkened,
/// and a sharp subject on a blurred background) and on two real photos (a shallow depth-of-field
/// flower shot and a close-up of a circuit board), each JPEG-encoded and then blurred:
///
/// | Gaussian blur at this scale | figure                                         |
/// |-----------------------------|------------------------------------------------|
/// | none                        | 94 (soft subject on blur), 133 (the flower) .. 128 000 |
/// | sigma 0.5 px                | 41 .. 50 000                                   |
/// | sigma 1 px (visibly soft)   | 6 .. 1 400                                     |
/// | sigma 2 px                  | 1.7 .. 22 (a 16 px full-contrast checkerboard: 218) |
/// | sigma 4 px                  | under 9                                        |
///
/// 30 sits between: every sharp picture passes with a margin of three or more, blur of 2 px at
/// this scale (about 8 px on a 12 MP still: a shaken or misfocused shot) is flagged unless the
/// picture is nothing but hard full-contrast edges, and the band around 1 px is decided by how
/// much detail the subject has. The warning advises a retake; it never refuses an upload.
///
/// Sensor noise reads as detail to this measure, so a noisy low-light shot can pass when it is
/// soft; the downscale to [`ANALYSIS_EDGE`] averages most of that noise away.
pub const BLURRY_BELOW: f64 = 30.0;

/// `brightness` (mean luma, 0 = black, 1 = white) under this is reported as "too_dark".
/// A well exposed daylight photo averages 0.35-0.6; under 0.15 most of the frame sits in the
/// bottom sixth of the range, where JPEG quantisation and sensor noise erase scratches and dents.
pub const TOO_DARK_BELOW: f64 = 0.15;

/// `brightness` over this is reported as "too_bright": at a mean above 0.88 large areas are
/// clipped to white (typically a flash or the sun on paint) and the damage detail is gone.
pub const TOO_BRIGHT_ABOVE: f64 = 0.88;

/// What the agent and the claims system see about a capture; `warnings` are stable snake_case
/// names ("blurry", "too_dark", "too_bright").
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Quality {
    pub sharpness: f64,
    pub brightness: f64,
    pub warnings: Vec<&'static str>,
}

impl Quality {
    /// Figures for a greyscale copy already scaled to [`ANALYSIS_EDGE`] (or smaller).
    pub fn measure(grey: &GrayImage) -> Self {
        let sharpness = sharpness(grey);
        let brightness = mean_luma(grey);
        let mut warnings = Vec::new();
        if sharpness < BLURRY_BELOW {
            warnings.push("blurry");
        }
        if brightness < TOO_DARK_BELOW {
            warnings.push("too_dark");
        } else if brightness > TOO_BRIGHT_ABOVE {
            warnings.push("too_bright");
        }
        Self {
            sharpness,
            brightness,
            warnings,
        }
    }
}

/// Mean grey level scaled to 0..=1; 0 for an empty image.
fn mean_luma(grey: &GrayImage) -> f64 {
    let n = grey.as_raw().len();
    if n == 0 {
        return 0.0;
    }
    let sum: u64 = grey.as_raw().iter().map(|&v| u64::from(v)).sum();
    sum as f64 / n as f64 / 255.0
}

/// Mean Laplacian variance of the sharpest [`SHARPEST_SHARE`] of the tiles; 0 when the image is
/// too small to have an interior.
fn sharpness(grey: &GrayImage) -> f64 {
    let mut tiles = tile_variances(grey, TILE);
    if tiles.is_empty() {
        return 0.0;
    }
    tiles.sort_by(|a, b| b.total_cmp(a));
    let sharpest = ((tiles.len() as f64 * SHARPEST_SHARE).ceil() as usize).clamp(1, tiles.len());
    tiles[..sharpest].iter().sum::<f64>() / sharpest as f64
}

/// Variance of the 4-neighbour Laplacian `[0 1 0; 1 -4 1; 0 1 0]` over the interior pixels of
/// each `tile` x `tile` square, in one pass over the image. Empty when there is no interior.
fn tile_variances(grey: &GrayImage, tile: usize) -> Vec<f64> {
    let (w, h) = (grey.width() as usize, grey.height() as usize);
    if w < 3 || h < 3 {
        return Vec::new();
    }
    let (across, down) = ((w / tile).max(1), (h / tile).max(1));
    // Integer sums are exact: |L| <= 1020, so even a whole 2^20-pixel image stays far below
    // i64::MAX.
    let mut sums = vec![(0i64, 0i64, 0i64); across * down];
    let px = grey.as_raw();
    for y in 1..h - 1 {
        let row = y * w;
        let tile_row = (y / tile).min(down - 1) * across;
        for x in 1..w - 1 {
            let i = row + x;
            let l = i64::from(px[i - w]) + i64::from(px[i + w]) + i64::from(px[i - 1])
                - 4 * i64::from(px[i])
                + i64::from(px[i + 1]);
            let (n, sum, sum_sq) = &mut sums[tile_row + (x / tile).min(across - 1)];
            *n += 1;
            *sum += l;
            *sum_sq += l * l;
        }
    }
    sums.into_iter()
        .filter(|&(n, _, _)| n > 0)
        .map(|(n, sum, sum_sq)| {
            let (n, mean) = (n as f64, sum as f64 / n as f64);
            (sum_sq as f64 / n - mean * mean).max(0.0)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::testimg;
    use image::imageops;

    fn grey(img: &image::DynamicImage) -> GrayImage {
        img.to_luma8()
    }

    #[test]
    fn detailed_pictures_are_sharp_and_their_blurred_copies_are_not() {
        let pictures = [
            ("noise", testimg::noise(640, 480, 0.5, 0.35, 7)),
            ("checkerboard", testimg::checkerboard(640, 480, 4)),
            ("scene", testimg::scene(640, 480)),
        ];
        for (name, img) in pictures {
            let sharp = Quality::measure(&grey(&img));
            assert!(
                !sharp.warnings.contains(&"blurry"),
                "{name}: sharp copy flagged, sharpness {}",
                sharp.sharpness
            );
            let blurred = Quality::measure(&grey(&img.blur(4.0)));
            assert!(
                blurred.warnings.contains(&"blurry"),
                "{name}: blurred copy not flagged, sharpness {}",
                blurred.sharpness
            );
            assert!(blurred.sharpness < sharp.sharpness / 10.0, "{name}");
        }
    }

    #[test]
    fn a_sharp_subject_on_a_blurred_background_is_not_blurry() {
        // A quarter-width sharp subject (6% of the frame) on a heavily blurred background: the
        // shallow depth of field of a close-up.
        let img = testimg::subject_on_blur(1024, 768);
        let g = grey(&img);
        let q = Quality::measure(&g);
        assert!(!q.warnings.contains(&"blurry"), "sharpness {}", q.sharpness);
        // Measured over the whole frame, the background would have called it blurry.
        let whole_frame = tile_variances(&g, usize::MAX)[0];
        assert!(whole_frame < BLURRY_BELOW, "whole frame {whole_frame}");
        // And the same picture shaken is flagged.
        let shaken = Quality::measure(&grey(&img.blur(2.0)));
        assert!(shaken.warnings.contains(&"blurry"), "{}", shaken.sharpness);
    }

    #[test]
    fn tiles_cover_the_whole_image() {
        // 150x100 is 2x1 tiles of 64, the remainder folded into the last column and row: every
        // interior pixel lands in a tile.
        let img = GrayImage::from_fn(150, 100, |x, y| {
            image::Luma([((x * 7 + y * 13) % 251) as u8])
        });
        let tiles = tile_variances(&img, TILE);
        assert_eq!(tiles.len(), 2);
        assert!(tiles.iter().all(|&v| v > 0.0));
        // Detail in one corner only: the figure follows the sharp tile, not the flat rest.
        let mut corner = GrayImage::from_pixel(640, 640, image::Luma([100]));
        for y in 0..64 {
            for x in 0..64 {
                corner.put_pixel(
                    x,
                    y,
                    image::Luma([if (x + y).is_multiple_of(2) { 40 } else { 200 }]),
                );
            }
        }
        let q = Quality::measure(&corner);
        assert!(q.sharpness > 10.0 * tile_variances(&corner, usize::MAX)[0]);
    }

    #[test]
    fn exposure_warnings_follow_mean_luma() {
        let dark = Quality::measure(&grey(&testimg::noise(400, 300, 0.04, 0.03, 1)));
        assert!(dark.brightness < 0.1, "{}", dark.brightness);
        assert!(dark.warnings.contains(&"too_dark"));
        assert!(!dark.warnings.contains(&"too_bright"));

        let bright = Quality::measure(&grey(&testimg::noise(400, 300, 0.96, 0.03, 2)));
        assert!(bright.brightness > 0.9, "{}", bright.brightness);
        assert!(bright.warnings.contains(&"too_bright"));
        assert!(!bright.warnings.contains(&"too_dark"));

        let mid = Quality::measure(&grey(&testimg::noise(400, 300, 0.5, 0.3, 3)));
        assert!((0.4..0.6).contains(&mid.brightness), "{}", mid.brightness);
        assert!(mid.warnings.is_empty(), "{:?}", mid.warnings);
    }

    #[test]
    fn flat_and_tiny_images_do_not_break_the_measures() {
        let flat = GrayImage::from_pixel(50, 50, image::Luma([128]));
        let q = Quality::measure(&flat);
        assert_eq!(q.sharpness, 0.0);
        assert!((q.brightness - 128.0 / 255.0).abs() < 1e-9);
        assert_eq!(q.warnings, vec!["blurry"]);

        let tiny = GrayImage::from_pixel(2, 2, image::Luma([0]));
        assert_eq!(Quality::measure(&tiny).sharpness, 0.0);
        let empty = GrayImage::new(0, 0);
        assert_eq!(Quality::measure(&empty).brightness, 0.0);
    }

    #[test]
    fn laplacian_of_a_single_bright_pixel_is_known() {
        // One pixel of 255 in a 5x5 black field: the 3x3 interior holds L = -1020 at the centre
        // and 255 at its four neighbours, 0 elsewhere.
        let mut img = GrayImage::new(5, 5);
        img.put_pixel(2, 2, image::Luma([255]));
        let vals = [-1020.0, 255.0, 255.0, 255.0, 255.0, 0.0, 0.0, 0.0, 0.0];
        let mean: f64 = vals.iter().sum::<f64>() / 9.0;
        let var: f64 = vals.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / 9.0;
        assert_eq!(tile_variances(&img, TILE).len(), 1);
        assert!((sharpness(&img) - var).abs() < 1e-6);
        // Blurring only lowers it.
        assert!(sharpness(&imageops::blur(&img, 1.0)) < var);
    }
}
