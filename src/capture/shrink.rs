//! A fast box downscale for 8-bit images: the same pixels as `image`'s `thumbnail`, computed
//! row by row with integer sums instead of a generic per-pixel walk.
//!
//! `DynamicImage::thumbnail` took two thirds of the instructions of processing a 1080p upload
//! (callgrind, docs/BENCHMARKS.md): it reads every source pixel through `get_pixel` and computes
//! each output pixel's window with float `ceil`s. This walks each source row once, adding it
//! into per-column sums, then sums the columns of each output pixel's window. The windows and the
//! rounding are `image`'s own (0.25: `imageops::sample::thumbnail`, the block case, which is the
//! only case when both sides shrink), so the result is identical, as the tests check. A large
//! image is done in two bands of output rows on two threads, which changes nothing in the result.

use image::{DynamicImage, ImageBuffer};

/// The size `DynamicImage::thumbnail(edge, edge)` gives: aspect kept, long edge `edge`.
fn fit(width: u32, height: u32, edge: u32) -> (u32, u32) {
    let ratio = f64::min(
        f64::from(edge) / f64::from(width),
        f64::from(edge) / f64::from(height),
    );
    let side = |v: u32| ((f64::from(v) * ratio).round() as u32).max(1);
    (side(width), side(height))
}

fn clamp(a: u32, min: u32, max: u32) -> u32 {
    if a < min {
        min
    } else if a > max {
        max
    } else {
        a
    }
}

/// The source window `[start, end)` of each output index, as `image` computes it.
fn windows(len: u32, new_len: u32) -> Vec<(usize, usize)> {
    let ratio = len as f32 / new_len as f32;
    (0..new_len)
        .map(|o| {
            let startf = o as f32 * ratio;
            let endf = startf + ratio;
            let start = clamp(startf.ceil() as u32, 0, len - 1);
            let end = clamp(endf.ceil() as u32, start, len);
            (start as usize, end as usize)
        })
        .collect()
}

fn shrink<const C: usize>(
    src: &[u8],
    width: u32,
    height: u32,
    nw: u32,
    nh: u32,
) -> Option<Vec<u8>> {
    let cols = windows(width, nw);
    let rows = windows(height, nh);
    if cols.iter().chain(&rows).any(|(s, e)| s >= e) {
        return None;
    }
    let stride = width as usize * C;
    // A large image is shrunk in two bands of output rows at once (a 1080p upload waits on this
    // alone); each output row depends only on its own window of source rows.
    let bands = if src.len() >= PARALLEL_FROM_BYTES && rows.len() >= 2 {
        2
    } else {
        1
    };
    let per_band = rows.len().div_ceil(bands);
    let band = |rows: &[(usize, usize)]| {
        let mut sums = vec![0u32; stride];
        let mut out = Vec::with_capacity(cols.len() * rows.len() * C);
        for &(top, bottom) in rows {
            sums.fill(0);
            for row in src[top * stride..bottom * stride].chunks_exact(stride) {
                for (s, &v) in sums.iter_mut().zip(row) {
                    *s += u32::from(v);
                }
            }
            let tall = (bottom - top) as u32;
            for &(left, right) in &cols {
                let n = (right - left) as u32 * tall;
                let round = n / 2;
                let mut px = [0u32; C];
                for col in sums[left * C..right * C].chunks_exact(C) {
                    for (p, &s) in px.iter_mut().zip(col) {
                        *p += s;
                    }
                }
                out.extend(px.iter().map(|&p| ((p + round) / n).min(255) as u8));
            }
        }
        out
    };
    let mut chunks = rows.chunks(per_band);
    let first = chunks.next().unwrap_or_default();
    let out = std::thread::scope(|scope| {
        let rest: Vec<_> = chunks.map(|c| scope.spawn(move || band(c))).collect();
        let mut out = band(first);
        for r in rest {
            out.extend(r.join().expect("a shrink band panicked"));
        }
        out
    });
    Some(out)
}

/// Source images from this many bytes up (about 1 MP of RGB) are shrunk on two threads.
const PARALLEL_FROM_BYTES: usize = 3 << 20;

/// `image.thumbnail(edge, edge)`, fast for 8-bit grey, RGB and RGBA; anything else, and any
/// enlargement, is left to `image`.
pub(crate) fn thumbnail(image: &DynamicImage, edge: u32) -> DynamicImage {
    let (w, h) = (image.width(), image.height());
    let (nw, nh) = fit(w, h, edge);
    if w == 0 || h == 0 || nw > w || nh > h {
        return image.thumbnail(edge, edge);
    }
    let fast = match image {
        DynamicImage::ImageRgb8(b) => shrink::<3>(b.as_raw(), w, h, nw, nh)
            .and_then(|px| ImageBuffer::from_raw(nw, nh, px))
            .map(DynamicImage::ImageRgb8),
        DynamicImage::ImageLuma8(b) => shrink::<1>(b.as_raw(), w, h, nw, nh)
            .and_then(|px| ImageBuffer::from_raw(nw, nh, px))
            .map(DynamicImage::ImageLuma8),
        DynamicImage::ImageRgba8(b) => shrink::<4>(b.as_raw(), w, h, nw, nh)
            .and_then(|px| ImageBuffer::from_raw(nw, nh, px))
            .map(DynamicImage::ImageRgba8),
        _ => None,
    };
    fast.unwrap_or_else(|| image.thumbnail(edge, edge))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::testimg;

    #[test]
    fn the_same_pixels_as_image_thumbnail() {
        let cases = [
            (1920, 1080, 1024),
            (4000, 3000, 1024),
            (1024, 576, 320),
            (1001, 777, 320),
            (333, 1000, 320),
            (1025, 3, 1024),
            (640, 480, 320),
            (321, 320, 320),
        ];
        for (w, h, edge) in cases {
            let rgb = testimg::noise(w, h, 0.5, 0.3, u64::from(w ^ h));
            let rgb = DynamicImage::ImageRgb8(rgb.to_rgb8());
            for img in [
                rgb.clone(),
                DynamicImage::ImageLuma8(rgb.to_luma8()),
                DynamicImage::ImageRgba8(rgb.to_rgba8()),
            ] {
                let ours = thumbnail(&img, edge);
                let theirs = img.thumbnail(edge, edge);
                assert_eq!(ours.color(), theirs.color(), "{w}x{h} -> {edge}");
                assert_eq!(
                    (ours.width(), ours.height()),
                    (theirs.width(), theirs.height()),
                    "{w}x{h} -> {edge}"
                );
                assert!(
                    ours.as_bytes() == theirs.as_bytes(),
                    "{w}x{h} -> {edge}: pixels differ"
                );
            }
        }
    }

    #[test]
    fn small_images_and_other_layouts_go_to_image() {
        let small = DynamicImage::ImageRgb8(testimg::scene(120, 200).to_rgb8());
        assert_eq!(
            thumbnail(&small, 320).as_bytes(),
            small.thumbnail(320, 320).as_bytes()
        );
        let wide = DynamicImage::ImageRgb16(testimg::scene(700, 400).to_rgb16());
        assert_eq!(thumbnail(&wide, 320), wide.thumbnail(320, 320));
    }
}
