//! The admin commands: each calls the admin API and prints its answer as a table or as JSON.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Value, json};

use crate::client::{Admin, answer, error_chain};
use crate::config::Settings;
use crate::failure::Failure;
use crate::{Output, Reason, lower, table};

/// Prints `value` as JSON, or with `show` as a table.
pub fn emit(out: Output, value: &Value, show: impl FnOnce(&Value)) {
    match out {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        ),
        Output::Table => show(value),
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Role {
    Admin,
    Developer,
    Analyst,
}

#[derive(Debug, Subcommand)]
pub enum Users {
    /// Create a user.
    Create {
        /// 1-64 of [A-Za-z0-9._-].
        id: String,
        #[arg(long)]
        email: String,
        #[arg(long, value_enum)]
        role: Role,
    },
    /// List the users.
    List,
}

const USER_FIELDS: [&str; 4] = ["id", "email", "role", "created_at"];

pub async fn users(api: &Admin, command: Users, out: Output) -> Result<(), Failure> {
    match command {
        Users::Create { id, email, role } => {
            let role = lower(role);
            let user = api
                .post("/users", json!({"id": id, "email": email, "role": role}))
                .await?;
            emit(out, &user, |u| table::record(u, &USER_FIELDS));
        }
        Users::List => {
            let list = api.get("/users", &[]).await?;
            emit(out, &list, |l| {
                table::print(&USER_FIELDS, &table::rows(&l["users"], &USER_FIELDS));
            });
        }
    }
    Ok(())
}

#[derive(Debug, Subcommand)]
pub enum Tokens {
    /// Create a one-time enrollment token; it is shown once, with the agent's enroll command.
    Create {
        /// The user whose devices it enrolls.
        #[arg(long)]
        owner: String,
        /// How long it can be used: seconds, or a number with s, m, h or d (60 s to 30 d).
        #[arg(long, default_value = "1h", value_parser = parse_ttl)]
        ttl: u64,
        /// How many devices it can enroll.
        #[arg(long, default_value_t = 1)]
        max_uses: u32,
    },
    /// List the enrollment tokens (never the tokens themselves: only their hashes are kept).
    List,
    /// Revoke an enrollment token.
    Revoke {
        /// The token's id (not the token).
        id: String,
    },
}

fn parse_ttl(text: &str) -> Result<u64, String> {
    let (number, unit) = match text.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&text[..i], c),
        _ => (text, 's'),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 600, 10m, 1h or 7d"))?;
    let unit = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return Err(format!("{text:?}: the unit is one of s, m, h, d")),
    };
    n.checked_mul(unit)
        .ok_or_else(|| format!("{text:?} is too long"))
}

const TOKEN_FIELDS: [&str; 7] = [
    "id",
    "owner",
    "uses",
    "max_uses",
    "expires_at",
    "revoked_at",
    "created_at",
];

pub async fn tokens(
    api: &Admin,
    settings: &Settings,
    command: Tokens,
    out: Output,
) -> Result<(), Failure> {
    match command {
        Tokens::Create {
            owner,
            ttl,
            max_uses,
        } => {
            let mut created = api
                .post(
                    "/tokens",
                    json!({"owner": owner, "ttl_seconds": ttl, "max_uses": max_uses}),
                )
                .await?;
            let enroll = format!(
                "edgemesh-agent enroll --server {} --ca-fingerprint {} --token-file enrollment-token --device-id DEVICE_ID",
                settings.server,
                created["ca_fingerprint"].as_str().unwrap_or_default()
            );
            created["enroll_command"] = Value::String(enroll.clone());
            emit(out, &created, |c| {
                table::record(
                    c,
                    &[
                        "token",
                        "id",
                        "owner",
                        "max_uses",
                        "expires_at",
                        "ca_fingerprint",
                    ],
                );
                println!(
                    "\nThe token is shown once. On the device, put it in a file readable by the agent \
                     only (here enrollment-token), then run:\n  {enroll}"
                );
            });
        }
        Tokens::List => {
            let list = api.get("/tokens", &[]).await?;
            emit(out, &list, |l| {
                table::print(&TOKEN_FIELDS, &table::rows(&l["tokens"], &TOKEN_FIELDS));
            });
        }
        Tokens::Revoke { id } => {
            let token = api
                .post(&format!("/tokens/{}/revoke", segment(&id)), json!({}))
                .await?;
            emit(out, &token, |t| table::record(t, &TOKEN_FIELDS));
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Status {
    Active,
    Revoked,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Verdict {
    Unknown,
    Healthy,
    Unhealthy,
    Stale,
}

#[derive(Debug, Subcommand)]
pub enum Devices {
    /// List devices, by id, filtered.
    List {
        #[arg(long, value_enum)]
        status: Option<Status>,
        /// The health verdict.
        #[arg(long, value_enum)]
        verdict: Option<Verdict>,
        #[arg(long)]
        owner: Option<String>,
        /// Devices per page (1-1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Start after this page's end (the `next_cursor` of a previous page).
        #[arg(long)]
        cursor: Option<String>,
    },
    /// A device, its verdict and certificates.
    Show { id: String },
    /// Revoke a device and every certificate it holds.
    Revoke {
        id: String,
        #[command(flatten)]
        reason: Reason,
    },
}

const DEVICE_FIELDS: [&str; 8] = [
    "id",
    "owner",
    "status",
    "health",
    "health_reasons",
    "os",
    "os_version",
    "last_seen_at",
];

const CERT_FIELDS: [&str; 6] = [
    "serial",
    "not_after",
    "revoked_at",
    "revocation_reason",
    "renewed_from",
    "fingerprint",
];

fn show_device(device: &Value) {
    table::record(
        device,
        &[
            "id",
            "owner",
            "device_type",
            "os",
            "os_version",
            "status",
            "health",
            "health_reasons",
            "last_health_at",
            "last_seen_at",
            "enrolled_at",
            "revoked_at",
        ],
    );
    println!();
    table::print(
        &CERT_FIELDS,
        &table::rows(&device["certificates"], &CERT_FIELDS),
    );
}

pub async fn devices(api: &Admin, command: Devices, out: Output) -> Result<(), Failure> {
    match command {
        Devices::List {
            status,
            verdict,
            owner,
            limit,
            cursor,
        } => {
            let mut query = vec![("limit", limit.to_string())];
            query.extend(status.map(|s| ("status", lower(s))));
            query.extend(verdict.map(|v| ("health", lower(v))));
            query.extend(owner.map(|o| ("owner", o)));
            query.extend(cursor.map(|c| ("cursor", c)));
            let page = api.get("/devices", &query).await?;
            emit(out, &page, |p| {
                table::print(&DEVICE_FIELDS, &table::rows(&p["devices"], &DEVICE_FIELDS));
                if let Some(next) = p["next_cursor"].as_str() {
                    eprintln!("more: --cursor {next}");
                }
            });
        }
        Devices::Show { id } => {
            let device = api.get(&format!("/devices/{}", segment(&id)), &[]).await?;
            emit(out, &device, show_device);
        }
        Devices::Revoke { id, reason } => {
            let body = reason.reason.map_or(json!({}), |r| json!({ "reason": r }));
            let device = api
                .post(&format!("/devices/{}/revoke", segment(&id)), body)
                .await?;
            emit(out, &device, show_device);
        }
    }
    Ok(())
}

#[derive(Debug, Subcommand)]
pub enum Certs {
    /// A device's certificates, newest first.
    List { device: String },
    /// Revoke a certificate and every certificate renewed from it.
    Revoke {
        serial: String,
        #[command(flatten)]
        reason: Reason,
    },
}

pub async fn certs(api: &Admin, command: Certs, out: Output) -> Result<(), Failure> {
    match command {
        Certs::List { device } => {
            let device = api
                .get(&format!("/devices/{}", segment(&device)), &[])
                .await?;
            let certificates =
                json!({ "device_id": device["id"], "certificates": device["certificates"] });
            emit(out, &certificates, |c| {
                table::print(&CERT_FIELDS, &table::rows(&c["certificates"], &CERT_FIELDS));
            });
        }
        Certs::Revoke { serial, reason } => {
            let body = reason.reason.map_or(json!({}), |r| json!({ "reason": r }));
            let certificate = api
                .post(&format!("/certificates/{}/revoke", segment(&serial)), body)
                .await?;
            emit(out, &certificate, |c| {
                table::record(
                    c,
                    &[
                        "serial",
                        "device_id",
                        "not_after",
                        "revoked_at",
                        "revocation_reason",
                    ],
                );
            });
        }
    }
    Ok(())
}

#[derive(Debug, Subcommand)]
pub enum Health {
    /// A device's latest health reports, newest first, with their verdicts.
    History {
        device: String,
        /// How many (1-1000).
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
}

pub async fn health(api: &Admin, command: Health, out: Output) -> Result<(), Failure> {
    let Health::History { device, limit } = command;
    let history = api
        .get(
            &format!("/devices/{}/health", segment(&device)),
            &[("limit", limit.to_string())],
        )
        .await?;
    emit(out, &history, |h| {
        let fields = [
            "collected_at",
            "status",
            "reasons",
            "cpu_usage",
            "memory_usage",
            "disk_usage",
            "os_version",
            "agent_version",
        ];
        table::print(&fields, &table::rows(&h["reports"], &fields));
    });
    Ok(())
}

/// A path segment from an argument: percent-encoded, so an id cannot reach another endpoint.
pub fn segment(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    // `.` and `..` would be path steps, not ids.
    if out == "." || out == ".." {
        out = out.replace('.', "%2E");
    }
    out
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Envoy's admin interface (loopback on Envoy's host) [default: http://127.0.0.1:9901, or
    /// envoy_admin in the configuration file].
    #[arg(long, env = "EDGEMESH_ENVOY_ADMIN")]
    envoy_admin: Option<String>,
    /// ext-authz's metrics endpoint [default: http://127.0.0.1:9192/metrics, or ext_authz_metrics in
    /// the configuration file].
    #[arg(long, env = "EDGEMESH_EXT_AUTHZ_METRICS")]
    ext_authz_metrics: Option<String>,
}

/// `status`: asks each service, prints one line each; exit 1 unless all are up.
pub async fn status(
    settings: &Settings,
    args: &StatusArgs,
    out: Output,
) -> Result<ExitCode, Failure> {
    let ca = settings.ca_pem()?;
    let tls = edgemesh_core::tls::client_config(&ca, None)
        .map_err(|e| Failure::Usage(format!("the CA certificate: {e:#}")))?;
    let http = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| Failure::Unreachable(format!("HTTP client: {e}")))?;
    let envoy = args
        .envoy_admin
        .clone()
        .or_else(|| settings.envoy_admin.clone())
        .unwrap_or_else(|| "http://127.0.0.1:9901".to_owned());
    let ext_authz = args
        .ext_authz_metrics
        .clone()
        .or_else(|| settings.ext_authz_metrics.clone())
        .unwrap_or_else(|| "http://127.0.0.1:9192/metrics".to_owned());

    let mut services = Vec::new();
    // The control API and, through it, PostgreSQL.
    let control = match http
        .get(format!("{}/healthz", settings.server))
        .send()
        .await
    {
        Err(e) => Err(error_chain(&e)),
        Ok(response) => {
            let up = response.status().is_success();
            match answer(response).await {
                Ok(body) => Ok((up, body)),
                Err(Failure::Refused { status, .. }) => Err(format!("HTTP {status}")),
                Err(e) => Err(e.to_string()),
            }
        }
    };
    match control {
        Ok((up, body)) => {
            services.push(service(
                "control-api",
                up,
                &settings.server,
                body["version"].as_str(),
                None,
            ));
            let db_up = body["database_version"].is_string();
            services.push(service(
                "postgresql",
                db_up,
                "(through the control API)",
                body["database_version"].as_str(),
                (!db_up).then(|| body["status"].as_str().unwrap_or("unreachable").to_owned()),
            ));
        }
        Err(why) => {
            services.push(service(
                "control-api",
                false,
                &settings.server,
                None,
                Some(why),
            ));
            services.push(service(
                "postgresql",
                false,
                "(through the control API)",
                None,
                Some("unknown: the control API does not answer".to_owned()),
            ));
        }
    }
    // ext-authz: its metrics carry its version.
    services.push(match fetch_text(&http, &ext_authz).await {
        Ok(metrics) => {
            let version = metrics.lines().find_map(|line| {
                line.strip_prefix("edgemesh_ext_authz_build_info{version=\"")
                    .and_then(|rest| rest.split('"').next())
                    .map(str::to_owned)
            });
            service("ext-authz", true, &ext_authz, version.as_deref(), None)
        }
        Err(why) => service("ext-authz", false, &ext_authz, None, Some(why)),
    });
    // Envoy: its admin interface's server_info.
    let info_url = format!("{}/server_info", envoy.trim_end_matches('/'));
    services.push(match fetch_text(&http, &info_url).await {
        Ok(text) => {
            let info: Value = serde_json::from_str(&text).unwrap_or_default();
            let state = info["state"].as_str().unwrap_or("unknown");
            let version = info["version"]
                .as_str()
                .map(|v| v.split('/').nth(1).unwrap_or(v).to_owned());
            service(
                "envoy",
                state == "LIVE",
                &envoy,
                version.as_deref(),
                (state != "LIVE").then(|| format!("state {state}")),
            )
        }
        Err(why) => service("envoy", false, &envoy, None, Some(why)),
    });

    let all_up = services.iter().all(|s| s["up"] == Value::Bool(true));
    let report = json!({ "services": services, "all_up": all_up });
    emit(out, &report, |r| {
        let fields = ["service", "state", "version", "address", "detail"];
        table::print(&fields, &table::rows(&r["services"], &fields));
    });
    Ok(if all_up {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn service(
    name: &str,
    up: bool,
    address: &str,
    version: Option<&str>,
    detail: Option<String>,
) -> Value {
    json!({
        "service": name,
        "up": up,
        "state": if up { "up" } else { "DOWN" },
        "version": version,
        "address": address,
        "detail": detail,
    })
}

async fn fetch_text(http: &reqwest::Client, url: &str) -> Result<String, String> {
    let response = http.get(url).send().await.map_err(|e| error_chain(&e))?;
    if !response.status().is_success() {
        return Err(format!("HTTP {}", response.status()));
    }
    response.text().await.map_err(|e| error_chain(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_a_unit() {
        assert_eq!(parse_ttl("600"), Ok(600));
        assert_eq!(parse_ttl("10m"), Ok(600));
        assert_eq!(parse_ttl("1h"), Ok(3600));
        assert_eq!(parse_ttl("7d"), Ok(604_800));
        assert!(parse_ttl("1w").is_err());
        assert!(parse_ttl("h").is_err());
        assert!(parse_ttl("-1").is_err());
    }

    #[test]
    fn an_argument_stays_one_path_segment() {
        assert_eq!(segment("pi-1"), "pi-1");
        assert_eq!(segment("../users"), "..%2Fusers");
        assert_eq!(segment(".."), "%2E%2E");
        assert_eq!(segment("a b?c#d"), "a%20b%3Fc%23d");
    }
}
