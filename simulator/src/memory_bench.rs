//! ext-authz's resident memory as its caches fill: N devices are written straight into a bench
//! database (each with a certificate and a healthy report), then one Check per device is sent to an
//! ext-authz serving that database, and its `process_resident_memory_bytes` is read at milestones.

use std::time::Instant;

use anyhow::{Context, ensure};
use edgemesh_core::cert::CertInfo;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use rcgen::{
    CertificateParams, DnType, Issuer, KeyPair, PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use sqlx::postgres::PgPoolOptions;
use tonic::transport::Channel;

use crate::bench::check_request;
use crate::db::{self, Seeded};
use crate::fleet::run_id;
use crate::stats::sample;

/// The CA in `ca_cert` and `ca_key` (the one the bench's ext-authz trusts: it checks the
/// certificates' signature, Envoy is not in these benches).
pub fn read_issuer(
    ca_cert: &std::path::Path,
    ca_key: &std::path::Path,
) -> anyhow::Result<Issuer<'static, KeyPair>> {
    let read = |path: &std::path::Path| {
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
    };
    Issuer::from_ca_cert_pem(&read(ca_cert)?, KeyPair::from_pem(&read(ca_key)?)?)
        .context("the bench CA is not usable")
}

/// `count` devices `<prefix>-<n>`, each with a certificate of `ca` for one shared key and a serial
/// unique to the run `run` (hexadecimal), issued on every core.
pub fn issue_fleet(
    ca: &Issuer<'static, KeyPair>,
    prefix: &str,
    run: &str,
    count: u32,
) -> anyhow::Result<Vec<Seeded>> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let run_tag = u64::from_str_radix(run, 16).unwrap_or_default();
    let issue = |i: u32| -> anyhow::Result<Seeded> {
        let id = format!("{prefix}-{i:07}");
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, &id);
        params.subject_alt_names = vec![SanType::URI(
            format!("spiffe://edgemesh.local/device/{id}").try_into()?,
        )];
        // Unique across runs too: the run's tag, then the index.
        let mut serial = [0x40u8; 16];
        serial[1..8].copy_from_slice(&run_tag.to_be_bytes()[1..]);
        serial[8..].copy_from_slice(&u64::from(i).to_be_bytes());
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        let cert = params.signed_by(&key, ca)?;
        let info = CertInfo::from_der(cert.der())?;
        Ok(Seeded {
            id,
            cert_pem: cert.pem(),
            info,
        })
    };
    // Each thread a contiguous share, joined in order: device n is element n.
    let threads = std::thread::available_parallelism().map_or(1, usize::from) as u32;
    let share = count.div_ceil(threads);
    std::thread::scope(|scope| {
        let shares: Vec<_> = (0..threads)
            .map(|t| {
                let issue = &issue;
                scope.spawn(move || {
                    (t * share..((t + 1) * share).min(count))
                        .map(issue)
                        .collect::<anyhow::Result<Vec<_>>>()
                })
            })
            .collect();
        let mut devices = Vec::with_capacity(count as usize);
        for share in shares {
            devices.extend(
                share
                    .join()
                    .map_err(|_| anyhow::anyhow!("an issuing thread panicked"))??,
            );
        }
        Ok(devices)
    })
}

pub async fn memory(
    database_url: &str,
    ext_authz: &str,
    metrics: &str,
    milestones: &[u32],
    (ca_cert, ca_key): (&std::path::Path, &std::path::Path),
) -> anyhow::Result<()> {
    let total = milestones.iter().copied().max().unwrap_or(0);
    ensure!(total > 0, "give at least one milestone");
    let db = PgPoolOptions::new()
        .max_connections(4)
        .connect(database_url)
        .await
        .context("cannot connect to the bench database")?;
    let run = run_id();

    let started = Instant::now();
    let ca = read_issuer(ca_cert, ca_key)?;
    let devices = issue_fleet(&ca, &format!("mem-{run}"), &run, total)?;
    eprintln!(
        "issued {total} certificates in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let started = Instant::now();
    db::bench_admin(&db).await?;
    for chunk in devices.chunks(10_000) {
        db::insert_fleet(&db, chunk).await?;
    }
    eprintln!(
        "wrote {total} devices, certificates and health reports in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let channel = Channel::from_shared(ext_authz.to_owned())?
        .connect()
        .await
        .with_context(|| format!("cannot connect to ext-authz at {ext_authz}"))?;
    let client = AuthorizationClient::new(channel);
    let rss = || async {
        let text = reqwest::get(metrics).await?.text().await?;
        let rss = sample(&text, "process_resident_memory_bytes").context("no RSS metric")?;
        let entries = sample(&text, "edgemesh_ext_authz_cache_entries").unwrap_or(0.0);
        anyhow::Ok((rss / 1_048_576.0, entries))
    };
    // The writes above notify ext-authz once per row; let it finish applying them, or late
    // invalidations would empty entries the Checks below fill.
    let mut last = -1.0;
    loop {
        let text = reqwest::get(metrics).await?.text().await?;
        let applied = sample(&text, "edgemesh_ext_authz_cache_invalidations_total").unwrap_or(0.0);
        if applied == last {
            break;
        }
        last = applied;
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
    let (base, _) = rss().await?;
    println!("ext-authz resident memory before: {base:.1} MiB");
    let started = Instant::now();
    let mut checked = 0u32;
    let mut allowed = 0u32;
    let mut sorted = milestones.to_vec();
    sorted.sort_unstable();
    for milestone in sorted {
        // 16 in flight, each device once.
        let mut tasks = tokio::task::JoinSet::new();
        while checked < milestone {
            while tasks.len() < 16 && checked < milestone {
                let device = &devices[checked as usize];
                let request = check_request(&device.id, &device.cert_pem);
                let mut client = client.clone();
                tasks.spawn(async move { client.check(request).await });
                checked += 1;
            }
            if let Some(done) = tasks.join_next().await {
                let answer = done??.into_inner();
                allowed += u32::from(answer.status.is_some_and(|s| s.code == 0));
            }
        }
        while let Some(done) = tasks.join_next().await {
            let answer = done??.into_inner();
            allowed += u32::from(answer.status.is_some_and(|s| s.code == 0));
        }
        // Let moka's maintenance settle before reading the entry count.
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        let (rss, entries) = rss().await?;
        println!(
            "ext-authz resident memory with {milestone} devices checked ({entries:.0} cached): {rss:.1} MiB \
             (+{:.1} MiB; {:.0} s)",
            rss - base,
            started.elapsed().as_secs_f64()
        );
    }
    // A few denies are possible (a lookup that timed out under this load); many mean the seeded
    // devices are not what ext-authz expects, and the entries measured are not the ones meant.
    ensure!(
        u64::from(checked - allowed) * 1000 <= u64::from(checked),
        "{} of {checked} Checks were not allowed: the seeded devices are not what ext-authz expects",
        checked - allowed
    );
    if allowed < checked {
        println!("({} of {checked} Checks were denied)", checked - allowed);
    }
    Ok(())
}
