//! `/ls`: streams `ls -lash` of a directory confined to the configured root.

use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::Response;

use crate::error::AppError;
use crate::server::AppState;

/// `GET /ls?directory=D`
pub async fn list(State(_state): State<AppState>, _uri: Uri) -> Result<Response, AppError> {
    Err(AppError::new(StatusCode::NOT_IMPLEMENTED, "not yet"))
}
