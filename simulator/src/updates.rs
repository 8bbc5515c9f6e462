//! `edgemesh-simulator update-checks`: a fleet playing its agents' update checks. Each simulated device
//! reports health as an agent of `--agent-version` on `--target`; a device offered a release fetches its
//! signed manifest and binary, checks the binary against the manifest (size and SHA-256), reports the
//! steps as the agent does, and reports again as the new version. The summary says which devices were
//! offered what, so a rollout's share can be checked from outside.

use anyhow::Context;
use edgemesh_core::api::{UpdateEvent, UpdateStep};
use edgemesh_core::client::ControlApi;
use edgemesh_core::id::DeviceId;
use edgemesh_core::release::Manifest;
use serde_json::json;

use crate::bench::ControlPlane;
use crate::fleet::{Admin, enroll_all, healthy_report, run_id};

pub async fn play(
    control: &ControlPlane<'_>,
    devices: u32,
    agent_version: &str,
    target: &str,
) -> anyhow::Result<()> {
    let admin = Admin::connect(control.api, control.admin_token).await?;
    let run = run_id();
    let (token, fingerprint) = admin
        .owner_with_token(&format!("update-checks-{run}"), "developer", devices)
        .await?;
    let ids = (0..devices)
        .map(|i| DeviceId::parse(&format!("u{run}-{i}")))
        .collect::<Result<Vec<_>, _>>()?;
    let fleet = enroll_all(control.api, &token, &fingerprint, ids, 16).await?;
    let mut offered = Vec::new();
    let mut updated = 0;
    for device in &fleet {
        let api = ControlApi::new(
            control.device_api,
            &device.ca_pem,
            Some((&device.cert_pem, &device.key_pem)),
        )?;
        let mut report = healthy_report();
        report.agent_version = agent_version.to_owned();
        report.agent_target = Some(target.to_owned());
        let verdict = api.report_health(&report).await?;
        let Some(offer) = verdict.update else {
            continue;
        };
        offered.push(json!({"device_id": device.id, "version": offer.version}));
        let signed = api.release_manifest(&offer.manifest_path).await?;
        let manifest = Manifest::parse(&signed.manifest)
            .map_err(|r| anyhow::anyhow!("{r}"))
            .with_context(|| format!("the manifest of {}", offer.version))?;
        let binary = api
            .release_binary(&offer.binary_path, manifest.size)
            .await?;
        let step = |step, reason: Option<String>, detail: String| UpdateEvent {
            version: offer.version.clone(),
            running_version: agent_version.to_owned(),
            step,
            reason,
            detail,
        };
        if let Err(refused) = manifest.check_binary(&binary) {
            api.report_update(&step(
                UpdateStep::Refused,
                Some(refused.code.to_owned()),
                refused.detail,
            ))
            .await?;
            continue;
        }
        api.report_update(&step(UpdateStep::Installed, None, String::new()))
            .await?;
        let mut report = healthy_report();
        report.agent_version = offer.version.clone();
        report.agent_target = Some(target.to_owned());
        api.report_health(&report).await?;
        api.report_update(&step(UpdateStep::Completed, None, String::new()))
            .await?;
        updated += 1;
    }
    println!(
        "{}",
        json!({
            "fleet": fleet.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
            "offered": offered,
            "updated": updated,
        })
    );
    Ok(())
}
