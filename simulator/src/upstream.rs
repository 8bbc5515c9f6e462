//! The demo upstream behind Envoy: answers every request with what it learned about the caller (the
//! identity headers EdgeMesh set, the client certificate details and address Envoy forwarded, and
//! anything a CGI-style upstream would take for an identity header), as JSON. It
//! trusts those headers because only Envoy can reach it (it listens on loopback). With `--plain` it
//! answers every request alike, for benches that compare authorizers.

use std::net::SocketAddr;

use axum::Router;
use axum::http::{HeaderMap, Method, Uri};
use serde_json::{Map, Value, json};

pub async fn serve(listen: SocketAddr, plain: bool) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tracing::info!(addr = %listen, plain, "demo upstream listening");
    let app = if plain {
        Router::new().fallback(|| async { axum::Json(json!({"ok": true})) })
    } else {
        Router::new().fallback(echo)
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(edgemesh_core::shutdown_signal())
        .await?;
    Ok(())
}

async fn echo(method: Method, uri: Uri, headers: HeaderMap) -> axum::Json<Value> {
    let service = uri
        .path()
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    let identity: Map<String, Value> = headers
        .iter()
        .filter(|(name, _)| {
            // As a CGI-style upstream would read them: `_` and `-` alike.
            name.as_str().replace('_', "-").starts_with("x-edgemesh-")
                || ["x-forwarded-client-cert", "x-forwarded-for"].contains(&name.as_str())
        })
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                json!(value.to_str().unwrap_or_default()),
            )
        })
        .collect();
    axum::Json(json!({
        "service": service,
        "method": method.as_str(),
        "path": uri.path(),
        "headers": identity,
    }))
}
