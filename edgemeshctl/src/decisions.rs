//! `policy replay` and `policy explain`: stored decisions evaluated again, in-process, as ext-authz
//! evaluated them. Each authorization record refers to its decision's context (the device, its
//! certificate, owner and health, the request's host and headers, the server's settings; stored once
//! in `decision_contexts`) and keeps its own parts (service, method, path, the policy clock's second);
//! core's `policy::input::replayed` makes the input document again from the two.
//!
//! Replay reads the contexts (`GET /decision-contexts`) and streams the records
//! (`GET /audit?event_type=authorization&format=ndjson`) of the window, evaluates each with the
//! candidate policies on every core, and compares with what was enforced.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::Args;
use edgemesh_core::policy::input::{Context, Own, replayed, replayed_from};
use edgemesh_core::policy::{AUTHZ, Decision, EVALUATION_FAILED, Files, PolicySet, Reason};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::Output;
use crate::client::Admin;
use crate::failure::Failure;

/// Changed decisions shown per direction (the report holds them all).
const EXAMPLES: usize = 5;
/// Devices shown in the table (the report holds them all).
const TOP_DEVICES: usize = 10;

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The candidate policy directory.
    #[arg(long)]
    candidate: PathBuf,
    /// From this instant (RFC 3339, inclusive).
    #[arg(long)]
    since: String,
    /// Before this instant (RFC 3339, exclusive; default now).
    #[arg(long)]
    until: Option<String>,
    #[command(flatten)]
    filters: crate::audit::Filters,
    /// Where the machine-readable report goes (JSON: the counts and every changed decision).
    #[arg(long, default_value = "replay-report.json")]
    report: PathBuf,
    /// Exit 1 if any decision would change (for a pipeline that gates a policy change).
    #[arg(long)]
    fail_on_change: bool,
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The decision id (the `decision_id` of a deny's body, the `x-edgemesh-decision-id` header).
    id: String,
    /// Explain under these policies instead of the version that was in force.
    #[arg(long)]
    policy_dir: Option<PathBuf>,
}

/// A record of the export, the fields a replay reads.
#[derive(Debug, Deserialize)]
struct Stored {
    id: String,
    occurred_at: String,
    device_id: Option<String>,
    service: Option<String>,
    method: Option<String>,
    path: Option<String>,
    decision: Option<String>,
    reasons: Vec<String>,
    context: Option<String>,
    decided_at: Option<i64>,
}

impl Stored {
    /// The policy clock's second: `decided_at`, or the record's own second.
    fn now(&self) -> anyhow::Result<i64> {
        match self.decided_at {
            Some(at) => Ok(at),
            None => Ok(OffsetDateTime::parse(&self.occurred_at, &Rfc3339)?.unix_timestamp()),
        }
    }

    fn allowed(&self) -> bool {
        self.decision.as_deref() == Some("allow")
    }
}

/// How a decision came out under the candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
enum Change {
    Unchanged,
    AllowToDeny,
    DenyToAllow,
    /// Still a deny, for other reasons.
    Reasons,
}

impl Change {
    fn of(stored: &Stored, candidate: &Decision) -> Self {
        match (stored.allowed(), candidate.allow) {
            (true, false) => Self::AllowToDeny,
            (false, true) => Self::DenyToAllow,
            (true, true) => Self::Unchanged,
            (false, false) => {
                let mut before = stored.reasons.clone();
                let mut after = candidate.messages();
                before.sort();
                after.sort();
                if before == after {
                    Self::Unchanged
                } else {
                    Self::Reasons
                }
            }
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Unchanged => "unchanged",
            Self::AllowToDeny => "allow → deny",
            Self::DenyToAllow => "deny → allow",
            Self::Reasons => "deny, other reasons",
        }
    }
}

/// One changed decision, as the report lists it.
#[derive(Debug, Serialize)]
struct Changed {
    id: String,
    occurred_at: String,
    change: Change,
    device_id: Option<String>,
    service: Option<String>,
    method: Option<String>,
    path: Option<String>,
    enforced: Value,
    candidate: Value,
}

/// Counts of changes, by direction.
#[derive(Debug, Default, Serialize)]
struct Counts {
    allow_to_deny: u64,
    deny_to_allow: u64,
    reasons: u64,
}

impl Counts {
    fn add(&mut self, change: Change) {
        match change {
            Change::AllowToDeny => self.allow_to_deny += 1,
            Change::DenyToAllow => self.deny_to_allow += 1,
            Change::Reasons => self.reasons += 1,
            Change::Unchanged => {}
        }
    }

    fn total(&self) -> u64 {
        self.allow_to_deny + self.deny_to_allow + self.reasons
    }
}

/// The report's summary: everything but the list of changed decisions, which goes to the report
/// file as it is found.
#[derive(Debug, Serialize)]
struct Report {
    candidate: String,
    candidate_version: String,
    since: String,
    until: String,
    filters: BTreeMap<&'static str, String>,
    /// Records read in the window.
    decisions: u64,
    /// Evaluated again with the candidate.
    replayed: u64,
    unchanged: u64,
    changed: Counts,
    /// Denies made before the policies ran (no usable certificate, an unknown device or
    /// certificate): the policies never saw them, a candidate cannot change them.
    before_the_policies: u64,
    /// Records whose context is not stored, or does not hash to its id: not replayed.
    context_missing: u64,
    context_altered: u64,
    /// Candidate evaluations that failed (a candidate error denies, as ext-authz would).
    evaluation_errors: u64,
    by_service: BTreeMap<String, Counts>,
    by_device: BTreeMap<String, Counts>,
    /// Reasons the candidate gives that the enforced decision did not, and the reverse, with how
    /// many changed decisions each.
    reasons_added: BTreeMap<String, u64>,
    reasons_removed: BTreeMap<String, u64>,
    seconds: f64,
    /// The first few changes of each direction (the report file lists them all).
    #[serde(skip)]
    examples: Vec<Changed>,
}

/// Records evaluated per round: read, evaluated on every core, folded into the report, dropped.
const ROUND: usize = 20_000;

pub async fn replay(api: &Admin, args: &ReplayArgs, out: Output) -> Result<ExitCode, Failure> {
    let started = Instant::now();
    let candidate = PolicySet::load_dir(&args.candidate, Files::Policies)
        .map_err(|e| Failure::Usage(format!("the candidate policies: {e:#}")))?;
    let until = match &args.until {
        Some(until) => until.clone(),
        None => OffsetDateTime::now_utc()
            .format(&Rfc3339)
            .map_err(|e| Failure::Usage(e.to_string()))?,
    };
    let filters: BTreeMap<&'static str, String> = args.filters.query().into_iter().collect();
    let mut query: Vec<(&str, String)> = filters.iter().map(|(k, v)| (*k, v.clone())).collect();
    query.push(("since", args.since.clone()));
    query.push(("until", until.clone()));

    // Each context once, checked against its id, parsed once.
    let listed = api.get("/decision-contexts", &query).await?;
    let mut contexts: HashMap<String, Result<Value, ()>> = HashMap::new();
    for context in listed["contexts"].as_array().into_iter().flatten() {
        let (Some(id), Some(body)) = (context["id"].as_str(), context["body"].as_str()) else {
            continue;
        };
        let genuine = hex::encode(Context::id_of(body)) == id;
        let parsed = serde_json::from_str(body)
            .ok()
            .filter(|_| genuine)
            .ok_or(());
        contexts.insert(id.to_owned(), parsed);
    }
    drop(listed);

    let mut report = Report {
        candidate: args.candidate.display().to_string(),
        candidate_version: candidate.version().to_owned(),
        since: args.since.clone(),
        until,
        filters,
        decisions: 0,
        replayed: 0,
        unchanged: 0,
        changed: Counts::default(),
        before_the_policies: 0,
        context_missing: 0,
        context_altered: 0,
        evaluation_errors: 0,
        by_service: BTreeMap::new(),
        by_device: BTreeMap::new(),
        reasons_added: BTreeMap::new(),
        reasons_removed: BTreeMap::new(),
        seconds: 0.0,
        examples: Vec::new(),
    };
    let mut file = ReportFile::create(&args.report)?;
    query.push(("event_type", "authorization".to_owned()));
    query.push(("format", "ndjson".to_owned()));
    let mut lines = Lines::open(api, "/audit", &query).await?;
    let mut round: Vec<Stored> = Vec::with_capacity(ROUND);
    loop {
        let more = lines.read(&mut round, ROUND).await?;
        fold(&mut report, &mut file, &candidate, &contexts, &round)?;
        round.clear();
        if !more {
            break;
        }
    }
    report.seconds = started.elapsed().as_secs_f64();
    file.finish(&report)?;
    match out {
        Output::Json => file.print()?,
        Output::Table => show(&report, &args.report),
    }
    Ok(if args.fail_on_change && report.changed.total() > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Evaluates `records` with the candidate and adds them to the report (each change to the file).
fn fold(
    report: &mut Report,
    file: &mut ReportFile,
    candidate: &PolicySet,
    contexts: &HashMap<String, Result<Value, ()>>,
    records: &[Stored],
) -> Result<(), Failure> {
    report.decisions += records.len() as u64;
    let mut work = Vec::with_capacity(records.len());
    for record in records {
        match record.context.as_deref().map(|id| contexts.get(id)) {
            None => report.before_the_policies += 1,
            Some(None) => report.context_missing += 1,
            Some(Some(Err(()))) => report.context_altered += 1,
            Some(Some(Ok(context))) => work.push((record, context)),
        }
    }
    let outcomes = evaluate_all(candidate, &work);
    for ((record, _), outcome) in work.iter().zip(outcomes) {
        let decision = match outcome {
            Ok(decision) => decision,
            Err(denied) => {
                report.evaluation_errors += 1;
                denied
            }
        };
        report.replayed += 1;
        let change = Change::of(record, &decision);
        if change == Change::Unchanged {
            report.unchanged += 1;
            continue;
        }
        report.changed.add(change);
        report
            .by_service
            .entry(record.service.clone().unwrap_or_else(|| "-".to_owned()))
            .or_default()
            .add(change);
        report
            .by_device
            .entry(record.device_id.clone().unwrap_or_else(|| "-".to_owned()))
            .or_default()
            .add(change);
        let after = decision.messages();
        for reason in after.iter().filter(|r| !record.reasons.contains(r)) {
            *report.reasons_added.entry(reason.clone()).or_default() += 1;
        }
        for reason in record.reasons.iter().filter(|r| !after.contains(r)) {
            *report.reasons_removed.entry(reason.clone()).or_default() += 1;
        }
        let changed = Changed {
            id: record.id.clone(),
            occurred_at: record.occurred_at.clone(),
            change,
            device_id: record.device_id.clone(),
            service: record.service.clone(),
            method: record.method.clone(),
            path: record.path.clone(),
            enforced: json!({"decision": record.decision, "reasons": record.reasons}),
            candidate: json!({
                "decision": if decision.allow { "allow" } else { "deny" },
                "reasons": after,
            }),
        };
        file.change(&changed)?;
        if report
            .examples
            .iter()
            .filter(|c| c.change == change)
            .count()
            < EXAMPLES
        {
            report.examples.push(changed);
        }
    }
    Ok(())
}

/// The report file, written as the replay goes: `{"changes": [ … ], <the summary's fields>}`.
struct ReportFile {
    path: PathBuf,
    out: std::io::BufWriter<std::fs::File>,
    first: bool,
}

impl ReportFile {
    fn create(path: &Path) -> Result<Self, Failure> {
        let file = std::fs::File::create(path).map_err(|e| {
            Failure::Usage(format!("cannot write the report {}: {e}", path.display()))
        })?;
        let mut out = std::io::BufWriter::new(file);
        out.write_all(b"{\"changes\": [")
            .map_err(|e| Self::failed(path, &e))?;
        Ok(Self {
            path: path.to_owned(),
            out,
            first: true,
        })
    }

    fn failed(path: &Path, e: &dyn std::fmt::Display) -> Failure {
        Failure::Usage(format!("cannot write the report {}: {e}", path.display()))
    }

    fn change(&mut self, change: &Changed) -> Result<(), Failure> {
        let separator: &[u8] = if self.first { b"\n  " } else { b",\n  " };
        self.first = false;
        self.out
            .write_all(separator)
            .and_then(|()| serde_json::to_writer(&mut self.out, change).map_err(Into::into))
            .map_err(|e| Self::failed(&self.path, &e))
    }

    fn finish(&mut self, report: &Report) -> Result<(), Failure> {
        let summary = serde_json::to_value(report).map_err(|e| Self::failed(&self.path, &e))?;
        let mut text = String::from("\n],\n");
        if let Value::Object(fields) = summary {
            let fields: Vec<String> = fields
                .iter()
                .map(|(k, v)| format!("{}: {v}", Value::from(k.as_str())))
                .collect();
            text.push_str(&fields.join(",\n"));
        }
        text.push_str("\n}\n");
        self.out
            .write_all(text.as_bytes())
            .and_then(|()| self.out.flush())
            .map_err(|e| Self::failed(&self.path, &e))
    }

    /// The whole report on standard output (`--output json`).
    fn print(&self) -> Result<(), Failure> {
        let mut file = std::fs::File::open(&self.path).map_err(|e| Self::failed(&self.path, &e))?;
        std::io::copy(&mut file, &mut std::io::stdout().lock())
            .map(|_| ())
            .map_err(|e| Self::failed(&self.path, &e))
    }
}

/// The candidate's decision for each record, on every core; a decision repeated within its second
/// (the same context, route and request) is evaluated once per core. `Err` is the deny of a failed
/// evaluation.
fn evaluate_all(
    candidate: &PolicySet,
    work: &[(&Stored, &Value)],
) -> Vec<Result<Decision, Decision>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = work.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = work
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    type Key<'a> = (
                        &'a str,
                        Option<&'a str>,
                        Option<&'a str>,
                        Option<&'a str>,
                        i64,
                    );
                    let mut memo: HashMap<Key<'_>, Result<Decision, Decision>> = HashMap::new();
                    part.iter()
                        .map(|(record, context)| {
                            let Ok(now) = record.now() else {
                                return Err(failed(candidate, "the record's time does not parse"));
                            };
                            let key = (
                                record.context.as_deref().unwrap_or_default(),
                                record.service.as_deref(),
                                record.method.as_deref(),
                                record.path.as_deref(),
                                now,
                            );
                            memo.entry(key)
                                .or_insert_with(|| evaluate(candidate, record, context, now))
                                .clone()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| {
                h.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    })
}

fn evaluate(
    policies: &PolicySet,
    record: &Stored,
    context: &Value,
    now: i64,
) -> Result<Decision, Decision> {
    let own = Own {
        service: record.service.as_deref(),
        method: record.method.as_deref(),
        path: record.path.as_deref(),
        now,
    };
    let input = replayed_from(context.clone(), own)
        .map_err(|_| failed(policies, "the stored context is not a decision context"))?;
    let input = <edgemesh_core::policy::Value as Deserialize>::deserialize(&input)
        .map_err(|_| failed(policies, "the input document does not convert"))?;
    policies
        .evaluate_value(AUTHZ, input)
        .map_err(|failed| failed.deny)
}

/// The deny of a decision that could not be evaluated again.
fn failed(policies: &PolicySet, message: &str) -> Decision {
    Decision {
        allow: false,
        reasons: vec![Reason::new(EVALUATION_FAILED, message)],
        policy_version: policies.version().to_owned(),
    }
}

/// The lines of an NDJSON answer, parsed as they arrive.
struct Lines {
    response: reqwest::Response,
    pending: Vec<u8>,
    path: String,
    done: bool,
}

impl Lines {
    async fn open(api: &Admin, path: &str, query: &[(&str, String)]) -> Result<Self, Failure> {
        Ok(Self {
            response: api.stream(path, query).await?,
            pending: Vec::new(),
            path: path.to_owned(),
            done: false,
        })
    }

    /// Parses lines into `into` until it holds `max` or the answer ends; `false` once it ended.
    async fn read(&mut self, into: &mut Vec<Stored>, max: usize) -> Result<bool, Failure> {
        let path = self.path.clone();
        let bad = |e: &dyn std::fmt::Display| Failure::Unreachable(format!("{path}: {e}"));
        let parse = |line: &[u8], into: &mut Vec<Stored>| -> Result<(), Failure> {
            if !line.iter().all(u8::is_ascii_whitespace) {
                into.push(serde_json::from_slice(line).map_err(|e| bad(&e))?);
            }
            Ok(())
        };
        loop {
            // The complete lines buffered, up to `max`; the rest stays for the next call.
            let mut start = 0;
            while into.len() < max {
                let Some(end) = self.pending[start..].iter().position(|b| *b == b'\n') else {
                    break;
                };
                parse(&self.pending[start..start + end], into)?;
                start += end + 1;
            }
            self.pending.drain(..start);
            if into.len() >= max {
                return Ok(true);
            }
            if self.done {
                parse(&self.pending, into)?;
                self.pending.clear();
                return Ok(false);
            }
            match self.response.chunk().await.map_err(|e| {
                Failure::Unreachable(format!("{}: {}", self.path, crate::client::error_chain(&e)))
            })? {
                Some(chunk) => self.pending.extend_from_slice(&chunk),
                None => self.done = true,
            }
        }
    }
}

fn show(report: &Report, path: &Path) {
    println!(
        "replayed {} of {} decisions from {} to {} against {} (policy version {}) in {:.1} s",
        report.replayed,
        report.decisions,
        report.since,
        report.until,
        report.candidate,
        report.candidate_version,
        report.seconds
    );
    println!("  unchanged            {}", report.unchanged);
    println!("  allow → deny         {}", report.changed.allow_to_deny);
    println!("  deny → allow         {}", report.changed.deny_to_allow);
    println!("  deny, other reasons  {}", report.changed.reasons);
    if report.before_the_policies > 0 {
        println!(
            "  not replayed: {} denied before the policies ran (no usable certificate, unknown device)",
            report.before_the_policies
        );
    }
    if report.context_missing + report.context_altered > 0 {
        println!(
            "  NOT REPLAYED: {} without a stored context, {} whose context does not match its id",
            report.context_missing, report.context_altered
        );
    }
    if report.evaluation_errors > 0 {
        println!(
            "  the candidate failed to evaluate {} decisions (denied)",
            report.evaluation_errors
        );
    }
    let counts = |title: &str, map: &BTreeMap<String, Counts>, top: usize| {
        if map.is_empty() {
            return;
        }
        let mut rows: Vec<_> = map.iter().collect();
        rows.sort_by(|a, b| b.1.total().cmp(&a.1.total()).then(a.0.cmp(b.0)));
        println!(
            "\n{title:<24} {:>12} {:>12} {:>12}",
            "allow→deny", "deny→allow", "reasons"
        );
        for (name, c) in rows.iter().take(top) {
            println!(
                "{name:<24} {:>12} {:>12} {:>12}",
                c.allow_to_deny, c.deny_to_allow, c.reasons
            );
        }
        if rows.len() > top {
            println!("… and {} more (in the report)", rows.len() - top);
        }
    };
    counts("by service", &report.by_service, usize::MAX);
    counts("by device", &report.by_device, TOP_DEVICES);
    let reasons = |title: &str, map: &BTreeMap<String, u64>| {
        if map.is_empty() {
            return;
        }
        println!("\n{title}");
        let mut rows: Vec<_> = map.iter().collect();
        rows.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        for (reason, n) in rows {
            println!("  {n:>8}  {reason}");
        }
    };
    reasons("reasons the candidate adds", &report.reasons_added);
    reasons("reasons the candidate drops", &report.reasons_removed);
    for change in [Change::AllowToDeny, Change::DenyToAllow, Change::Reasons] {
        let examples: Vec<_> = report
            .examples
            .iter()
            .filter(|c| c.change == change)
            .collect();
        if examples.is_empty() {
            continue;
        }
        println!("\nexamples, {}:", change.label());
        for c in examples {
            println!(
                "  {} {} {} {} {} {} → {}",
                c.id,
                c.occurred_at,
                c.device_id.as_deref().unwrap_or("-"),
                c.method.as_deref().unwrap_or("-"),
                c.path.as_deref().unwrap_or("-"),
                c.enforced["reasons"],
                c.candidate["reasons"]
            );
        }
    }
    println!("\nreport: {}", path.display());
}

pub async fn explain(api: &Admin, args: &ExplainArgs, out: Output) -> Result<ExitCode, Failure> {
    let detail = api.get(&format!("/decisions/{}", args.id), &[]).await?;
    let record: Stored = serde_json::from_value(detail["record"].clone())
        .map_err(|e| Failure::Unreachable(format!("the decision's record: {e}")))?;
    let enforced_version = detail["record"]["policy_version"].as_str().unwrap_or("-");
    let Some(body) = detail["context"].as_str() else {
        return Err(Failure::Usage(format!(
            "decision {} was made before the policies ran ({}): there is no input to explain",
            args.id,
            record.reasons.join("; ")
        )));
    };
    if record.context.as_deref() != Some(hex::encode(Context::id_of(body)).as_str()) {
        return Err(Failure::Usage(format!(
            "the stored context of decision {} does not match the record's reference: it was altered",
            args.id
        )));
    }
    let policies = match &args.policy_dir {
        Some(dir) => PolicySet::load_dir(dir, Files::Policies)
            .map_err(|e| Failure::Usage(format!("{}: {e:#}", dir.display())))?,
        None => {
            let files: Vec<(String, String)> = serde_json::from_value(detail["policy_files"].clone())
                .map_err(|_| {
                    Failure::Usage(format!(
                        "the files of policy version {enforced_version} are not stored; pass --policy-dir"
                    ))
                })?;
            PolicySet::from_sources(files)
                .map_err(|e| Failure::Usage(format!("policy version {enforced_version}: {e:#}")))?
        }
    };
    let now = record
        .now()
        .map_err(|e| Failure::Unreachable(format!("the decision's time: {e}")))?;
    let input = replayed(
        body,
        Own {
            service: record.service.as_deref(),
            method: record.method.as_deref(),
            path: record.path.as_deref(),
            now,
        },
    )
    .map_err(|e| Failure::Unreachable(format!("the decision's context: {e:#}")))?;
    let decision = policies.evaluate(AUTHZ, &input);
    let reproduced = Change::of(&record, &decision) == Change::Unchanged;
    let rules = |package: &str| {
        policies
            .rule_values(package, &input)
            .map_err(|e| Failure::Usage(format!("{package}: {e:#}")))
    };
    let authz = rules("edgemesh.authz")?;
    let compliance = rules("edgemesh.compliance")?;
    match out {
        Output::Json => {
            let rules = |values: &[(String, Option<Value>)]| {
                values
                    .iter()
                    .map(|(name, value)| (name.clone(), value.clone().unwrap_or(Value::Null)))
                    .collect::<serde_json::Map<_, _>>()
            };
            let document = json!({
                "record": detail["record"],
                "input": input,
                "policy_version": policies.version(),
                "decision": decision,
                "reproduced": reproduced,
                "rules": {"edgemesh.authz": rules(&authz), "edgemesh.compliance": rules(&compliance)},
            });
            println!(
                "{}",
                serde_json::to_string_pretty(&document).unwrap_or_default()
            );
        }
        Output::Table => {
            println!(
                "decision {} at {}: {} {} {} {} on service {}",
                record.id,
                record.occurred_at,
                record.decision.as_deref().unwrap_or("-"),
                record.device_id.as_deref().unwrap_or("-"),
                record.method.as_deref().unwrap_or("-"),
                record.path.as_deref().unwrap_or("-"),
                record.service.as_deref().unwrap_or("-"),
            );
            println!(
                "enforced under policy version {enforced_version}: {}{}",
                record.decision.as_deref().unwrap_or("-"),
                reasons_text(&record.reasons)
            );
            println!(
                "evaluated again under policy version {}: {}{} ({})",
                policies.version(),
                if decision.allow { "allow" } else { "deny" },
                reasons_text(&decision.messages()),
                if reproduced {
                    "the same decision"
                } else {
                    "NOT the decision that was enforced"
                }
            );
            for (package, values) in [
                ("edgemesh.authz", &authz),
                ("edgemesh.compliance", &compliance),
            ] {
                println!("\nrules of {package}:");
                for (name, value) in values.iter().filter(|(name, _)| name != "reasons") {
                    let shown = match value {
                        Some(value) => value.to_string(),
                        None => "undefined (its conditions do not hold)".to_owned(),
                    };
                    println!("  {name:<24} {shown:.120}");
                }
            }
            println!(
                "\ninput:\n{}",
                serde_json::to_string_pretty(&input).unwrap_or_default()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn reasons_text(reasons: &[String]) -> String {
    if reasons.is_empty() {
        String::new()
    } else {
        format!(" ({})", reasons.join("; "))
    }
}
