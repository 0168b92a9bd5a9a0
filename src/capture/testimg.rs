//! Real images, generated and encoded by the `image` crate, for the tests of this module: no
//! binary fixtures to go stale or hide what they contain.

use std::io::Cursor;

use image::{DynamicImage, ImageEncoder, Rgb, RgbImage};

use super::ImageKind;

/// xorshift64*: deterministic, so a failing calibration reproduces exactly.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in -1..1.
    fn signed(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }
}

pub fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| rng.next() as u8).collect()
}

fn grey(v: f64) -> u8 {
    (v * 255.0).round().clamp(0.0, 255.0) as u8
}

/// Grey pixel noise around `mean` (0..1), spread uniformly by `amplitude`.
pub fn noise(w: u32, h: u32, mean: f64, amplitude: f64, seed: u64) -> DynamicImage {
    let mut rng = Rng::new(seed);
    let img = RgbImage::from_fn(w, h, |_, _| {
        let v = grey(mean + amplitude * rng.signed());
        Rgb([v, v, v])
    });
    DynamicImage::ImageRgb8(img)
}

/// Black and white squares of `cell` pixels.
pub fn checkerboard(w: u32, h: u32, cell: u32) -> DynamicImage {
    let img = RgbImage::from_fn(w, h, |x, y| {
        if (x / cell + y / cell).is_multiple_of(2) {
            Rgb([235, 235, 235])
        } else {
            Rgb([20, 20, 20])
        }
    });
    DynamicImage::ImageRgb8(img)
}

/// Something closer to a photo than noise: a lit gradient, coloured panels with hard edges, thin
/// lines (like panel gaps and scratches) and fine grain. Drawn in coordinates relative to the
/// size so every resolution shows the same scene.
pub fn scene(w: u32, h: u32) -> DynamicImage {
    scene_with_grain(w, h, 0.04)
}

fn scene_with_grain(w: u32, h: u32, grain: f64) -> DynamicImage {
    let mut rng = Rng::new(u64::from(w) << 32 | u64::from(h));
    let (fw, fh) = (f64::from(w), f64::from(h));
    let img = RgbImage::from_fn(w, h, |x, y| {
        let (u, v) = (f64::from(x) / fw, f64::from(y) / fh);
        let mut c = [0.35 + 0.3 * u, 0.4 + 0.2 * v, 0.5 - 0.2 * u];
        // Panels.
        if (0.1..0.45).contains(&u) && (0.15..0.6).contains(&v) {
            c = [0.75, 0.15, 0.12];
        }
        if (0.55..0.9).contains(&u) && (0.3..0.85).contains(&v) {
            c = [0.15, 0.25, 0.6];
        }
        // A wheel.
        let (dx, dy) = (u - 0.3, (v - 0.78) * fh / fw);
        let r = (dx * dx + dy * dy).sqrt();
        if r < 0.08 {
            c = if r < 0.04 {
                [0.7, 0.7, 0.72]
            } else {
                [0.08, 0.08, 0.08]
            };
        }
        // Panel gaps and scratches, a few pixels wide at any size.
        let line = (fw / 400.0).max(1.0);
        if (f64::from(x) - 0.5 * fw).abs() < line || (f64::from(y) - 0.45 * fh).abs() < line {
            c = [0.05, 0.05, 0.05];
        }
        if ((u - v * 0.5) * fw).abs() < line * 0.6 && (0.2..0.5).contains(&v) {
            c = [0.95, 0.95, 0.95];
        }
        let grain = grain * rng.signed();
        Rgb(c.map(|ch| grey(ch + grain)))
    });
    DynamicImage::ImageRgb8(img)
}

/// A sharp but soft-toned [`scene`] a quarter of the width (little grain, as a phone's denoiser
/// leaves it, and a third of the contrast), centred on a heavily blurred one: a close-up with a
/// shallow depth of field, like a flower shot or a dent on a pale door.
pub fn subject_on_blur(w: u32, h: u32) -> DynamicImage {
    // Upscaling a tiny copy eightfold blurs as a wide Gaussian would, at a fraction of the cost.
    let background = scene(w / 8, h / 8);
    let mut out = image::imageops::resize(
        &background.to_rgb8(),
        w,
        h,
        image::imageops::FilterType::Triangle,
    );
    let mut subject = scene_with_grain(w / 4, h / 4, 0.01).to_rgb8();
    for p in subject.pixels_mut() {
        p.0 =
            p.0.map(|c| (128.0 + (f64::from(c) - 128.0) / 3.0).round() as u8);
    }
    image::imageops::overlay(
        &mut out,
        &subject,
        i64::from(w * 3 / 8),
        i64::from(h * 3 / 8),
    );
    DynamicImage::ImageRgb8(out)
}

pub fn encode(img: &DynamicImage, kind: ImageKind) -> Vec<u8> {
    let mut out = Vec::new();
    img.write_to(&mut Cursor::new(&mut out), kind.format())
        .unwrap();
    out
}

/// A JPEG carrying an EXIF block with just the Orientation tag (1..=8).
pub fn jpeg_with_orientation(img: &DynamicImage, orientation: u16) -> Vec<u8> {
    // Little-endian TIFF: header, then IFD0 with a single entry, Orientation (0x0112), SHORT x 1.
    let mut exif = Vec::new();
    exif.extend_from_slice(b"II\x2A\x00");
    exif.extend_from_slice(&8u32.to_le_bytes());
    exif.extend_from_slice(&1u16.to_le_bytes());
    exif.extend_from_slice(&0x0112u16.to_le_bytes());
    exif.extend_from_slice(&3u16.to_le_bytes());
    exif.extend_from_slice(&1u32.to_le_bytes());
    exif.extend_from_slice(&orientation.to_le_bytes());
    exif.extend_from_slice(&[0, 0]);
    exif.extend_from_slice(&0u32.to_le_bytes());

    let rgb = img.to_rgb8();
    let mut out = Vec::new();
    let mut encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90);
    encoder.set_exif_metadata(exif).unwrap();
    encoder
        .write_image(
            rgb.as_raw(),
            rgb.width(),
            rgb.height(),
            image::ExtendedColorType::Rgb8,
        )
        .unwrap();
    out
}

/// A syntactically valid PNG that claims `w`x`h` but carries almost no data: the shape of a
/// decompression bomb, for checking that the size is refused from the header alone.
pub fn png_header_only(w: u32, h: u32) -> Vec<u8> {
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    // 8-bit RGBA, deflate, adaptive filtering, no interlace.
    ihdr.extend_from_slice(&[8, 6, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    push_chunk(&mut png, b"IHDR", &ihdr);
    // An empty zlib stream: the decoder reaches image data, which a real bomb would expand.
    push_chunk(
        &mut png,
        b"IDAT",
        &[0x78, 0x9C, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    );
    push_chunk(&mut png, b"IEND", &[]);
    png
}

fn push_chunk(png: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    png.extend_from_slice(&(data.len() as u32).to_be_bytes());
    png.extend_from_slice(kind);
    png.extend_from_slice(data);
    let crc = crc32(&[&kind[..], data].concat());
    png.extend_from_slice(&crc.to_be_bytes());
}

/// CRC-32 (IEEE, reflected, as PNG uses), bit by bit: slow and obviously right.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
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

#[test]
fn crc32_matches_the_standard_check_value() {
    assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    // IEND's CRC is in every PNG ever written.
    assert_eq!(crc32(b"IEND"), 0xAE42_6082);
}
