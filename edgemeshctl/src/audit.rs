//! `audit query`: one page of the audit trail, or (`--follow`) the records written from now on.
//!
//! Following reads, every `--interval`, the records that occurred since the newest one shown minus
//! `--lag` (ext-authz ships decisions in batches, and a decision journaled while PostgreSQL was away
//! arrives later), and prints those not shown yet, oldest first. The position (the newest time shown
//! and the ids shown since then) lives in the process, so after a lost connection it resumes where it
//! was; to resume in a new process, pass the last time shown as `--since`.

use std::collections::HashMap;
use std::time::Duration;

use clap::{Args, ValueEnum};
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::client::Admin;
use crate::failure::Failure;
use crate::{Output, lower, table};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Decision {
    Allow,
    Deny,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum EventType {
    Authorization,
    Enrollment,
    Renewal,
    Revocation,
    Token,
    User,
    Health,
    /// Console sign-ins (refused ones with decision deny) and sign-outs.
    Console,
    /// Agent releases published, rollouts set, devices moved between channels.
    Release,
    /// The steps of agents' self-updates (installed, completed, refused, rolled back).
    #[value(name = "agent_update")]
    AgentUpdate,
}

/// Which decisions: the filters `audit query` and `policy replay` share.
#[derive(Debug, Args)]
pub struct Filters {
    #[arg(long)]
    device: Option<String>,
    #[arg(long)]
    user: Option<String>,
    #[arg(long)]
    service: Option<String>,
    #[arg(long, value_enum)]
    decision: Option<Decision>,
}

impl Filters {
    /// The query parameters of the filters that are set.
    pub fn query(&self) -> Vec<(&'static str, String)> {
        let mut query = Vec::new();
        query.extend(self.device.clone().map(|v| ("device", v)));
        query.extend(self.user.clone().map(|v| ("user", v)));
        query.extend(self.service.clone().map(|v| ("service", v)));
        query.extend(self.decision.map(|v| ("decision", lower(v))));
        query
    }
}

#[derive(Debug, Args)]
pub struct QueryArgs {
    #[command(flatten)]
    filters: Filters,
    #[arg(long, value_enum)]
    event_type: Option<EventType>,
    /// From this instant (RFC 3339, inclusive).
    #[arg(long)]
    since: Option<String>,
    /// Before this instant (RFC 3339, exclusive).
    #[arg(long)]
    until: Option<String>,
    /// Records per page (1-1000); with --follow, how many recent records to show first.
    #[arg(long, default_value_t = 20)]
    limit: u32,
    /// Older records: the `next_cursor` of a previous page.
    #[arg(long)]
    cursor: Option<String>,
    /// After the page, print new records as they are written (Ctrl-C stops).
    #[arg(long, short, conflicts_with_all = ["until", "cursor"])]
    follow: bool,
    /// With --follow: seconds between polls.
    #[arg(long, default_value_t = 1.0)]
    interval: f64,
    /// With --follow: how late a record may be written after it occurred and still be shown, seconds
    /// (each poll reads this window again: a long one costs reads on a busy fleet).
    #[arg(long, default_value_t = 5)]
    lag: u64,
}

const FIELDS: [&str; 9] = [
    "occurred_at",
    "event_type",
    "action",
    "decision",
    "device_id",
    "service",
    "method",
    "path",
    "reasons",
];

impl QueryArgs {
    fn filters(&self) -> Vec<(&'static str, String)> {
        let mut query = self.filters.query();
        query.extend(
            self.event_type
                .and_then(|v| v.to_possible_value())
                .map(|v| ("event_type", v.get_name().to_owned())),
        );
        query
    }
}

pub async fn query(api: &Admin, args: &QueryArgs, out: Output) -> Result<(), Failure> {
    let mut query = args.filters();
    query.push(("limit", args.limit.to_string()));
    query.extend(args.since.clone().map(|v| ("since", v)));
    query.extend(args.until.clone().map(|v| ("until", v)));
    query.extend(args.cursor.clone().map(|v| ("cursor", v)));
    let page = api.get("/audit", &query).await?;
    if !args.follow {
        match out {
            Output::Json => println!(
                "{}",
                serde_json::to_string_pretty(&page).unwrap_or_default()
            ),
            Output::Table => {
                table::print(&FIELDS, &table::rows(&page["records"], &FIELDS));
                if let Some(next) = page["next_cursor"].as_str() {
                    eprintln!("older: --cursor {next}");
                }
            }
        }
        return Ok(());
    }
    let mut records: Vec<Value> = page["records"].as_array().cloned().unwrap_or_default();
    records.reverse();
    let mut follow = Follow::starting(args.since.as_deref())?;
    if out == Output::Table {
        table::print(&FIELDS, &[]);
    }
    follow.show(records, out);
    follow.run(api, args, out).await
}

/// Where a follow is: the newest time shown, and what was shown within the lag before it.
struct Follow {
    newest: Option<OffsetDateTime>,
    shown: HashMap<String, OffsetDateTime>,
}

impl Follow {
    fn starting(since: Option<&str>) -> Result<Self, Failure> {
        let newest = since
            .map(|s| {
                OffsetDateTime::parse(s, &Rfc3339).map_err(|_| {
                    Failure::Usage(format!("--since {s:?} is not an RFC 3339 instant"))
                })
            })
            .transpose()?;
        Ok(Self {
            newest,
            shown: HashMap::new(),
        })
    }

    /// Prints, oldest first, the records not shown yet.
    fn show(&mut self, mut records: Vec<Value>, out: Output) {
        records.sort_by(|a, b| {
            (a["occurred_at"].as_str(), a["id"].as_str())
                .cmp(&(b["occurred_at"].as_str(), b["id"].as_str()))
        });
        for record in records {
            let (Some(id), Some(at)) = (
                record["id"].as_str(),
                record["occurred_at"]
                    .as_str()
                    .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok()),
            ) else {
                continue;
            };
            if self.shown.insert(id.to_owned(), at).is_some() {
                continue;
            }
            self.newest = Some(self.newest.map_or(at, |n| n.max(at)));
            match out {
                Output::Json => println!("{record}"),
                Output::Table => {
                    let cells: Vec<String> =
                        FIELDS.iter().map(|f| table::cell(&record[*f])).collect();
                    println!("{}", cells.join("  "));
                }
            }
        }
    }

    async fn run(&mut self, api: &Admin, args: &QueryArgs, out: Output) -> Result<(), Failure> {
        let lag = time::Duration::seconds(args.lag as i64);
        let interval = Duration::from_secs_f64(args.interval.clamp(0.1, 3600.0));
        let mut failing = false;
        loop {
            tokio::time::sleep(interval).await;
            let since = self.newest.unwrap_or_else(OffsetDateTime::now_utc) - lag;
            // Forget what is older than the window: it cannot come again.
            self.shown.retain(|_, at| *at >= since);
            match self.poll(api, args, since).await {
                Ok(records) => {
                    if failing {
                        eprintln!("edgemeshctl: reconnected; resuming");
                        failing = false;
                    }
                    self.show(records, out);
                }
                // A refusal (a revoked token, a bad filter) will not get better by retrying.
                Err(e @ Failure::Refused { .. }) => return Err(e),
                Err(e) => {
                    if !failing {
                        eprintln!("edgemeshctl: {e}; retrying");
                    }
                    failing = true;
                }
            }
        }
    }

    /// Every record since `since` (newest-first pages, walked to the end).
    async fn poll(
        &self,
        api: &Admin,
        args: &QueryArgs,
        since: OffsetDateTime,
    ) -> Result<Vec<Value>, Failure> {
        let since = since
            .format(&Rfc3339)
            .map_err(|e| Failure::Usage(e.to_string()))?;
        let mut records = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut query = args.filters();
            query.push(("since", since.clone()));
            query.push(("limit", "1000".to_owned()));
            query.extend(cursor.take().map(|c| ("cursor", c)));
            let page = api.get("/audit", &query).await?;
            records.extend(page["records"].as_array().cloned().unwrap_or_default());
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => return Ok(records),
            }
        }
    }
}
