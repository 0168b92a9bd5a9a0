//! Image checks for uploaded captures: what kind an upload is, whether it is safe to decode, its
//! quality figures and its thumbnail.
//!
//! Uploads are untrusted full-resolution stills from phones. Everything that touches their pixels
//! runs on the blocking pool through [`Pipeline`], which bounds how many decode at once and turns
//! a decoder panic into a refusal; sizes are checked from the header before any decode, so a small
//! file claiming a huge image costs nothing.
//!
//! Typical use in the upload handler:
//! `identify(&bytes, declared)` -> `pipeline.process(bytes, kind).await` -> store the original
//! bytes, `Processed::thumbnail` and `Processed::quality`.

mod decode;
mod error;
mod jpeg;
mod kind;
mod pipeline;
mod quality;
mod shrink;
#[cfg(test)]
mod testimg;

pub use decode::{Limits, Processed, THUMBNAIL_EDGE, dimensions, process};
pub use error::CaptureError;
pub use kind::{ImageKind, SNIFF_LEN, identify, kind_from_mime, sniff};
pub use pipeline::Pipeline;
pub use quality::{ANALYSIS_EDGE, BLURRY_BELOW, Quality, TOO_BRIGHT_ABOVE, TOO_DARK_BELOW};
