//! Why a capture was refused, with the stable API code and HTTP status for each reason.

use super::ImageKind;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CaptureError {
    #[error("only JPEG, PNG and WebP images are accepted")]
    Unsupported,
    #[error("the image was declared as {declared} but its bytes are {actual}")]
    Mismatch { declared: String, actual: ImageKind },
    #[error("the image is {width}x{height} pixels, more than this server accepts")]
    TooLarge { width: u32, height: u32 },
    #[error("the image data is truncated or invalid: {0}")]
    Corrupt(String),
    #[error("the image could not be decoded")]
    DecoderPanic,
    #[error("internal error while processing the image: {0}")]
    Internal(String),
}

impl CaptureError {
    /// The `code` of the problem+json body; clients branch on it, so these never change.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unsupported => "unsupported_media_type",
            Self::Mismatch { .. } => "media_type_mismatch",
            Self::TooLarge { .. } => "image_too_large",
            Self::Corrupt(_) => "corrupt_image",
            // The client sent something that crashed a decoder: it is the image that is bad, so
            // this is a 422 like any other undecodable image, not a server fault.
            Self::DecoderPanic => "decode_failed",
            Self::Internal(_) => "internal",
        }
    }

    pub fn status(&self) -> u16 {
        match self {
            Self::Unsupported | Self::Mismatch { .. } => 415,
            Self::TooLarge { .. } | Self::Corrupt(_) | Self::DecoderPanic => 422,
            Self::Internal(_) => 500,
        }
    }
}

impl From<CaptureError> for crate::error::ApiError {
    fn from(err: CaptureError) -> Self {
        match err {
            // The cause of a 5xx is logged once and kept out of the body.
            CaptureError::Internal(cause) => Self::internal(format!("capture: {cause}")),
            err => {
                let status = axum::http::StatusCode::from_u16(err.status())
                    .unwrap_or(axum::http::StatusCode::UNPROCESSABLE_ENTITY);
                Self::new(status, err.code(), err.to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_statuses_are_stable() {
        let cases = [
            (CaptureError::Unsupported, "unsupported_media_type", 415),
            (
                CaptureError::Mismatch {
                    declared: "image/png".into(),
                    actual: ImageKind::Jpeg,
                },
                "media_type_mismatch",
                415,
            ),
            (
                CaptureError::TooLarge {
                    width: 1,
                    height: 1,
                },
                "image_too_large",
                422,
            ),
            (CaptureError::Corrupt("x".into()), "corrupt_image", 422),
            (CaptureError::DecoderPanic, "decode_failed", 422),
            (CaptureError::Internal("x".into()), "internal", 500),
        ];
        for (err, code, status) in cases {
            assert_eq!(err.code(), code);
            assert_eq!(err.status(), status);
            let api: crate::error::ApiError = err.into();
            assert_eq!(api.code, code);
            assert_eq!(api.status.as_u16(), status);
        }
    }
}
