//! The API's OpenAPI 3.1 document, made from the handlers' annotations by the routers that serve them
//! (so a route and its description cannot drift apart), and a reference page rendered from it.
//!
//! `GET /api/v1/openapi.json` and `GET /api/v1/docs` on the API listener describe both listeners: each
//! path names the listener that serves it.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use base64::Engine;
use edgemesh_core::api::ErrorBody;
use edgemesh_core::id::{DeviceId, UserId};
use serde_json::Value;
use sha2::{Digest, Sha256};
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::server::{Server, ServerBuilder, ServerVariableBuilder};
use utoipa::openapi::{Content, Ref, Response, ResponseBuilder};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "EdgeMesh control API",
        description = "Enrollment, device health and renewal (device listener, mutual TLS), and \
            administration: users, enrollment tokens, devices, certificates and the audit trail \
            (API listener, admin token). Every refusal is a 4xx with `{\"error\": code, \"detail\": \
            text}`; the codes an operation can answer are listed with its responses. Request bodies \
            are limited to 64 KiB (413 `body_too_large`), but for publishing an agent release (its binary, \
            in base64: 96 MiB).",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    modifiers(&SecuritySchemes),
    components(schemas(ErrorBody, DeviceId, UserId)),
    tags(
        (name = "meta", description = "Liveness, the CA certificate and this document (API listener, no authentication)."),
        (name = "enrollment", description = "A device's first certificate, for an enrollment token (API listener)."),
        (name = "device", description = "A device's own endpoints (device listener, port 8443): authenticated by its client certificate, checked against the database on every request."),
        (name = "admin", description = "Administration (API listener, port 8444), for holders of the admin token."),
    ),
)]
struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(
                Http::builder()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The admin token (the file the control API reads it from, \
                         `EDGEMESH_ADMIN_TOKEN_FILE`).",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "enrollment_token",
            SecurityScheme::Http(
                Http::builder()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A one-time enrollment token (`emt_…`) from `POST /api/v1/admin/tokens`.",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "device_certificate",
            SecurityScheme::MutualTls {
                description: Some(
                    "The device's client certificate, issued by this CA at enrollment or renewal."
                        .to_owned(),
                ),
                deprecated: None,
                extensions: None,
            },
        );
    }
}

/// The listener a path is served on, as the path's `servers`.
fn listener(port: u16, description: &str) -> Server {
    ServerBuilder::new()
        .url(format!("https://{{host}}:{port}"))
        .description(Some(description))
        .parameter(
            "host",
            ServerVariableBuilder::new()
                .default_value("127.0.0.1")
                .description(Some("the control API's host")),
        )
        .build()
}

/// The answer of the admin token's rate limit, which every admin operation can give.
fn admin_rate_limited() -> Response {
    ResponseBuilder::new()
        .description(
            "`rate_limited`: too many requests with this admin token (default: a burst of 200, \
             then 50 per second).",
        )
        .content(
            "application/json",
            Content::new(Some(Ref::from_schema_name("ErrorBody"))),
        )
        .header(
            "Retry-After",
            HeaderBuilder::new()
                .schema(Some(
                    ObjectBuilder::new()
                        .schema_type(Type::Integer)
                        .minimum(Some(1)),
                ))
                .description(Some("Seconds to wait."))
                .build(),
        )
        .build()
}

/// The document's own routes, on the API listener.
pub fn routes() -> OpenApiRouter<Arc<Published>> {
    OpenApiRouter::new()
        .routes(routes!(openapi_json))
        .routes(routes!(docs))
}

/// The document: `ApiDoc` with the paths of both listeners' routers.
pub fn document(
    api: utoipa::openapi::OpenApi,
    device: utoipa::openapi::OpenApi,
) -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    for (mut part, server) in [
        (api, listener(8444, "the API listener")),
        (device, listener(8443, "the device listener (mutual TLS)")),
    ] {
        for (path, item) in part.paths.paths.iter_mut() {
            item.servers = Some(vec![server.clone()]);
            if path.starts_with("/api/v1/admin/") {
                for operation in [&mut item.get, &mut item.post, &mut item.put]
                    .into_iter()
                    .flatten()
                {
                    operation
                        .responses
                        .responses
                        .insert("429".to_owned(), admin_rate_limited().into());
                }
            }
        }
        doc.merge(part);
    }
    doc.servers = Some(vec![listener(8444, "the API listener")]);
    doc
}

/// The document and its reference page, rendered once.
pub struct Published {
    json: String,
    page: String,
    page_csp: String,
}

impl Published {
    pub fn new(doc: &utoipa::openapi::OpenApi) -> Self {
        let json = doc
            .to_pretty_json()
            .expect("an OpenAPI document serialises");
        let value: Value = serde_json::from_str(&json).expect("the document is JSON");
        let style_hash = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(STYLE));
        Self {
            page: reference_page(&value),
            json,
            page_csp: format!(
                "default-src 'none'; style-src 'sha256-{style_hash}'; frame-ancestors 'none'"
            ),
        }
    }
}

#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "meta",
    responses((status = 200, description = "This document.", content_type = "application/json", body = Object)))]
pub async fn openapi_json(State(published): State<Arc<Published>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        published.json.clone(),
    )
}

#[utoipa::path(get, path = "/api/v1/docs", tag = "meta",
    responses((status = 200, description = "A reference page rendered from this document (no script; nothing loaded from elsewhere).",
        content_type = "text/html; charset=utf-8", body = String)))]
pub async fn docs(State(published): State<Arc<Published>>) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8".to_owned()),
            (header::CONTENT_SECURITY_POLICY, published.page_csp.clone()),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_owned()),
            (header::REFERRER_POLICY, "no-referrer".to_owned()),
        ],
        published.page.clone(),
    )
}

const STYLE: &str = "body{font:15px/1.5 system-ui,sans-serif;max-width:64rem;margin:2rem auto;padding:0 1rem;color:#222}\
code,pre{font-family:ui-monospace,monospace;font-size:13px}h2{margin-top:2.5rem;border-top:1px solid #ccc;padding-top:1rem}\
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ddd;padding:.2rem .5rem;text-align:left;vertical-align:top}\
.m{font-weight:bold;text-transform:uppercase}";

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A schema in a line: its type or reference and its constraints.
fn schema_summary(schema: &Value) -> String {
    if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
        return reference.rsplit('/').next().unwrap_or(reference).to_owned();
    }
    for combinator in ["oneOf", "anyOf", "allOf"] {
        if let Some(parts) = schema.get(combinator).and_then(Value::as_array) {
            let parts: Vec<String> = parts.iter().map(schema_summary).collect();
            return parts.join(if combinator == "allOf" { " & " } else { " | " });
        }
    }
    let mut out = match schema.get("type") {
        Some(Value::String(t)) => t.clone(),
        Some(Value::Array(types)) => types
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(" | "),
        _ => "any".to_owned(),
    };
    if let Some(items) = schema.get("items") {
        let _ = write!(out, " of {}", schema_summary(items));
    }
    for key in [
        "format",
        "enum",
        "minimum",
        "maximum",
        "minLength",
        "maxLength",
        "pattern",
    ] {
        if let Some(value) = schema.get(key) {
            let _ = write!(out, "; {key} {value}");
        }
    }
    out
}

fn reference_page(doc: &Value) -> String {
    let mut html = String::new();
    let title = doc["info"]["title"].as_str().unwrap_or("API");
    let _ = write!(
        html,
        "<!doctype html><html lang=en><meta charset=utf-8><title>{t}</title><style>{STYLE}</style>\
         <h1>{t} <small>{v}</small></h1><p>{d}</p><p>The machine-readable document: \
         <a href=\"openapi.json\">openapi.json</a> (OpenAPI {o}).</p>",
        t = escape(title),
        v = escape(doc["info"]["version"].as_str().unwrap_or("")),
        d = escape(doc["info"]["description"].as_str().unwrap_or("")),
        o = escape(doc["openapi"].as_str().unwrap_or("")),
    );
    let empty = serde_json::Map::new();
    let paths = doc["paths"].as_object().unwrap_or(&empty);
    for (path, item) in paths {
        let server = item["servers"][0]["description"].as_str().unwrap_or("");
        for (method, op) in item.as_object().unwrap_or(&empty) {
            if method == "servers" || method == "parameters" {
                continue;
            }
            let _ = write!(
                html,
                "<h2><span class=m>{}</span> <code>{}</code></h2><p><i>{}</i>",
                escape(method),
                escape(path),
                escape(server)
            );
            if let Some(security) = op["security"].as_array() {
                let schemes: Vec<String> = security
                    .iter()
                    .filter_map(Value::as_object)
                    .flat_map(|s| s.keys().cloned())
                    .collect();
                let _ = write!(html, "; authentication: {}", escape(&schemes.join(", ")));
            }
            html.push_str("</p>");
            for key in ["summary", "description"] {
                if let Some(text) = op[key].as_str() {
                    let _ = write!(html, "<p>{}</p>", escape(text));
                }
            }
            if let Some(parameters) = op["parameters"].as_array() {
                html.push_str("<table><tr><th>parameter<th>in<th>schema<th>description</tr>");
                for p in parameters {
                    let _ = write!(
                        html,
                        "<tr><td><code>{}</code>{}<td>{}<td>{}<td>{}</tr>",
                        escape(p["name"].as_str().unwrap_or("")),
                        if p["required"].as_bool() == Some(true) {
                            " (required)"
                        } else {
                            ""
                        },
                        escape(p["in"].as_str().unwrap_or("")),
                        escape(&schema_summary(&p["schema"])),
                        escape(p["description"].as_str().unwrap_or("")),
                    );
                }
                html.push_str("</table>");
            }
            if let Some(content) = op["requestBody"]["content"].as_object() {
                for (media, body) in content {
                    let _ = write!(
                        html,
                        "<p>Body ({}): <code>{}</code></p>",
                        escape(media),
                        escape(&schema_summary(&body["schema"]))
                    );
                }
            }
            html.push_str("<table><tr><th>status<th>body<th>meaning</tr>");
            for (status, response) in op["responses"].as_object().unwrap_or(&empty) {
                let bodies: Vec<String> = response["content"]
                    .as_object()
                    .map(|c| {
                        c.iter()
                            .map(|(media, b)| format!("{media}: {}", schema_summary(&b["schema"])))
                            .collect()
                    })
                    .unwrap_or_default();
                let _ = write!(
                    html,
                    "<tr><td>{}<td><code>{}</code><td>{}</tr>",
                    escape(status),
                    escape(&bodies.join(", ")),
                    escape(response["description"].as_str().unwrap_or(""))
                );
            }
            html.push_str("</table>");
        }
    }
    html.push_str("<h2>Schemas</h2>");
    for (name, schema) in doc["components"]["schemas"].as_object().unwrap_or(&empty) {
        let _ = write!(html, "<h3 id=\"{n}\">{n}</h3>", n = escape(name));
        if let Some(text) = schema["description"].as_str() {
            let _ = write!(html, "<p>{}</p>", escape(text));
        }
        if let Some(properties) = schema["properties"].as_object() {
            let required: Vec<&str> = schema["required"]
                .as_array()
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            html.push_str("<table><tr><th>field<th>schema<th>description</tr>");
            for (field, property) in properties {
                let _ = write!(
                    html,
                    "<tr><td><code>{}</code>{}<td>{}<td>{}</tr>",
                    escape(field),
                    if required.contains(&field.as_str()) {
                        " (required)"
                    } else {
                        ""
                    },
                    escape(&schema_summary(property)),
                    escape(property["description"].as_str().unwrap_or("")),
                );
            }
            html.push_str("</table>");
        } else {
            let _ = write!(
                html,
                "<p><code>{}</code></p>",
                escape(&schema_summary(schema))
            );
        }
    }
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_page_escapes_what_the_document_says() {
        let doc = serde_json::json!({
            "openapi": "3.1.0",
            "info": {"title": "T", "version": "1", "description": "<script>x</script>"},
            "paths": {"/a/{id}": {"get": {"summary": "a & b", "responses": {"200": {"description": "\"ok\""}}}}},
            "components": {"schemas": {"S": {"type": "string", "pattern": "^<a>$"}}}
        });
        let page = reference_page(&doc);
        assert!(page.contains("&lt;script&gt;x&lt;/script&gt;"), "{page}");
        assert!(page.contains("a &amp; b"));
        assert!(page.contains("&quot;ok&quot;"));
        assert!(page.contains("^&lt;a&gt;$"));
        assert!(!page.contains("<script"), "no script on the page");
    }
}
