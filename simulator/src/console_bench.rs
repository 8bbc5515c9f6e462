//! The console's pages at fleet scale: signs in to a control API (the bench one, whose database
//! `bench-memory` filled with 100,000 devices) as a browser would, then asks for the fleet page (first
//! page, filtered by verdict, searched by id, a page deep in the list) and a device page, many times
//! each, and reports the server's time per page from its `Server-Timing` header (the client's time
//! beside it).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};

use crate::fleet::Admin;
use crate::stats::percentile;

pub async fn console(
    control_api: &str,
    admin_token_file: &Path,
    requests: u32,
) -> anyhow::Result<()> {
    let token = std::fs::read_to_string(admin_token_file)
        .with_context(|| format!("cannot read {}", admin_token_file.display()))?;
    let token = token.trim();
    let admin = Admin::connect(control_api, token).await?;
    let summary = admin.get("/fleet").await?;
    let devices = summary["devices"].as_i64().unwrap_or_default();
    let page = admin.get("/devices?limit=1000&cursor=mem").await?;
    let deep = page["devices"][500]["id"]
        .as_str()
        .or_else(|| page["devices"][0]["id"].as_str())
        .context("the bench database holds no devices (run bench-memory first)")?
        .to_owned();
    let http = admin.browser()?;
    let signed_in = http
        .post(format!("{control_api}/ui/sign-in"))
        .header("origin", control_api)
        .header("sec-fetch-site", "same-origin")
        .form(&[("token", token)])
        .send()
        .await?;
    ensure!(
        signed_in.status() == reqwest::StatusCode::SEE_OTHER,
        "signing in to the console answered {}",
        signed_in.status()
    );
    let cookie = signed_in
        .headers()
        .get("set-cookie")
        .and_then(|c| c.to_str().ok())
        .and_then(|c| c.split(';').next())
        .context("no session cookie")?
        .to_owned();
    let pages = [
        ("fleet, first page", "/ui/fleet".to_owned()),
        (
            "fleet, unhealthy only",
            "/ui/fleet?health=unhealthy".to_owned(),
        ),
        ("fleet, id search", "/ui/fleet?id_prefix=mem-".to_owned()),
        ("fleet, a page deep in", format!("/ui/fleet?cursor={deep}")),
        ("device page", format!("/ui/devices/{deep}")),
    ];
    println!(
        "console pages with {devices} devices in the database, {requests} requests each (sequential):"
    );
    for (name, path) in pages {
        let mut server = Vec::with_capacity(requests as usize);
        let mut client = Vec::with_capacity(requests as usize);
        for _ in 0..requests {
            let started = Instant::now();
            let response = http
                .get(format!("{control_api}{path}"))
                .header("cookie", &cookie)
                .send()
                .await?;
            ensure!(
                response.status().is_success(),
                "{path} answered {}",
                response.status()
            );
            let timing = response
                .headers()
                .get("server-timing")
                .and_then(|t| t.to_str().ok())
                .and_then(|t| t.strip_prefix("app;dur="))
                .and_then(|ms| ms.parse::<f64>().ok())
                .context("no Server-Timing header")?;
            response.bytes().await?;
            client.push(started.elapsed());
            server.push(Duration::from_secs_f64(timing / 1000.0));
        }
        server.sort();
        client.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "  {name:<24} server p50 {:6.2} ms  p99 {:6.2} ms  max {:6.2} ms   (client p50 {:6.2} ms, p99 {:6.2} ms)",
            ms(percentile(&server, 0.5)),
            ms(percentile(&server, 0.99)),
            ms(*server.last().unwrap_or(&Duration::ZERO)),
            ms(percentile(&client, 0.5)),
            ms(percentile(&client, 0.99)),
        );
    }
    Ok(())
}
