//! Errors as the client sees them: a status and `{"error": "..."}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::batcher::ClassifyError;

#[derive(Debug)]
pub struct HttpError {
    pub status: StatusCode,
    pub message: String,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
}

impl HttpError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> HttpError {
        HttpError {
            status,
            message: message.into(),
        }
    }

    /// 400: the request itself is wrong (not an image, a bad query, ...).
    pub fn bad_request(message: impl Into<String>) -> HttpError {
        HttpError::new(StatusCode::BAD_REQUEST, message)
    }

    /// 413: the body or the image is larger than this server accepts.
    pub fn too_large(message: impl Into<String>) -> HttpError {
        HttpError::new(StatusCode::PAYLOAD_TOO_LARGE, message)
    }

    /// 500: our fault, not the client's.
    pub fn internal(message: impl Into<String>) -> HttpError {
        HttpError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let body = Json(ErrorBody {
            error: &self.message,
        });
        (self.status, body).into_response()
    }
}

impl From<ClassifyError> for HttpError {
    fn from(e: ClassifyError) -> HttpError {
        match e {
            ClassifyError::Busy => HttpError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the server is busy (its queue of faces is full); retry shortly",
            ),
            ClassifyError::Stopped => {
                HttpError::new(StatusCode::SERVICE_UNAVAILABLE, "the server is stopping")
            }
            ClassifyError::Failed(why) => HttpError::internal(why),
        }
    }
}
