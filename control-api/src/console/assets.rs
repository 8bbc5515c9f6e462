//! The console's stylesheet and script, compiled into the binary: the pages load nothing from
//! anywhere else, and work without a network.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::Failure;
use crate::http::extract::Path;

const FILES: [(&str, &str, &str); 2] = [
    (
        "console.css",
        "text/css; charset=utf-8",
        include_str!("static/console.css"),
    ),
    (
        "console.js",
        "text/javascript; charset=utf-8",
        include_str!("static/console.js"),
    ),
];

pub async fn serve(Path(file): Path<String>) -> Result<Response, Failure> {
    let (_, content_type, body) =
        FILES
            .iter()
            .find(|(name, _, _)| *name == file)
            .ok_or_else(|| Failure::Refused {
                status: StatusCode::NOT_FOUND,
                detail: format!("no console file {file}"),
            })?;
    Ok((
        [
            (header::CONTENT_TYPE, *content_type),
            // A new release may change them; an hour of caching is enough for page loads.
            (header::CACHE_CONTROL, "private, max-age=3600"),
        ],
        *body,
    )
        .into_response())
}
