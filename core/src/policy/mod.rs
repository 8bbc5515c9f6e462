//! The policy set: the `.rego` files of a directory parsed once by regorus and compiled to its virtual
//! machine's program (RVM), evaluated per decision by a pooled VM. A decision never fails: an
//! evaluation error is a deny with a reason.
//! [`PolicyStore`] holds the set in force and replaces it when the files change, refusing a set that
//! does not load (the last good one stays).

pub mod input;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use regorus::rvm::{Program, RegoVM};
use regorus::{CompiledPolicy, Engine};

/// The policy engine's value type: input documents built directly in it skip a JSON conversion.
pub use regorus::Value;
use serde::Serialize;
use sha2::{Digest, Sha256};

/// A runaway policy is stopped and the request denied.
const EVALUATION_LIMIT: Duration = Duration::from_millis(50);
/// A Rego unit test's limit (`PolicySet::run_tests`).
const TEST_EVALUATION_LIMIT: Duration = Duration::from_secs(10);

fn execution_limit() -> regorus::utils::limits::ExecutionTimerConfig {
    regorus::utils::limits::ExecutionTimerConfig {
        limit: EVALUATION_LIMIT,
        check_interval: std::num::NonZeroU32::MIN.saturating_add(63),
    }
}

/// The two rules a decision reads: a boolean and the set of reasons for a `false`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    pub allow: &'static str,
    pub reasons: &'static str,
}

/// May this device use this service now? (`policies/authz.rego`, evaluated by ext-authz.)
pub const AUTHZ: Rules = Rules {
    allow: "data.edgemesh.authz.allow",
    reasons: "data.edgemesh.authz.reasons",
};

/// Is this health report acceptable? (`policies/compliance.rego`, evaluated by control-api.)
pub const COMPLIANCE: Rules = Rules {
    allow: "data.edgemesh.compliance.compliant",
    reasons: "data.edgemesh.compliance.reasons",
};

/// The code of the reason of a deny that an evaluation error made; the error itself is logged, not
/// sent.
pub const EVALUATION_FAILED: &str = "policy_error";
/// The code of a reason a policy gave without one of its own (a bare string, say).
pub const UNSPECIFIED: &str = "unspecified";

/// Why a deny: a code for machines (a metric label and what a client matches on) and a sentence for
/// people. The policies give them as `{"code": …, "message": …}` objects in their `reasons` set.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
pub struct Reason {
    pub code: String,
    pub message: String,
}

impl Reason {
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Self {
            code: code.to_owned(),
            message: message.into(),
        }
    }

    /// A reason as a policy gave it. A code must be 1 to 48 lower-case letters, digits or `_`,
    /// starting with a letter (it becomes a metric label); anything else keeps its text and gets the
    /// code [`UNSPECIFIED`]: the deny stands either way.
    fn from_value(value: &Value) -> Self {
        let field = |name: &str| value[name].as_string().ok().map(|s| s.to_string());
        match (field("code"), field("message")) {
            (Some(code), Some(message)) if valid_code(&code) => Self { code, message },
            _ => Self {
                code: UNSPECIFIED.to_owned(),
                message: match value.as_string() {
                    Ok(text) => text.to_string(),
                    Err(_) => value.to_string(),
                },
            },
        }
    }
}

fn valid_code(code: &str) -> bool {
    (1..=48).contains(&code.len())
        && code.starts_with(|c: char| c.is_ascii_lowercase())
        && code
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// An evaluation that failed: the deny it makes, and the error for the log.
#[derive(Debug, Clone)]
pub struct EvaluationFailed {
    pub deny: Decision,
    pub error: String,
}

/// The outcome of one evaluation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub allow: bool,
    pub reasons: Vec<Reason>,
    pub policy_version: String,
}

impl Decision {
    /// The reasons' sentences, as a deny shows and the audit stores them.
    pub fn messages(&self) -> Vec<String> {
        self.reasons.iter().map(|r| r.message.clone()).collect()
    }
}

pub struct PolicySet {
    /// The interpreter: Rego unit tests run on it.
    engine: Engine,
    compiled: CompiledPolicy,
    program: Arc<Program>,
    /// Idle VMs with the program loaded; a decision takes one (or builds one) and gives it back.
    vms: Mutex<Vec<RegoVM>>,
    version: String,
    test_files: Vec<(String, String)>,
    sources: Vec<(String, String)>,
}

/// The rules decisions read, compiled as the program's entry points.
const ENTRY_POINTS: [&str; 4] = [
    AUTHZ.allow,
    AUTHZ.reasons,
    COMPLIANCE.allow,
    COMPLIANCE.reasons,
];

/// Which files of the directory to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Files {
    /// The policies only (what the servers evaluate).
    Policies,
    /// The policies and their `*_test.rego` files.
    WithTests,
}

/// The policy files of `dir` (not recursive, sorted), tests included or not.
fn policy_files(dir: &Path, files: Files) -> anyhow::Result<Vec<(String, String)>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("failed to read policy directory {}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "rego"))
        .collect();
    paths.sort();
    let mut out = Vec::new();
    for path in paths {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.ends_with("_test.rego") && files == Files::Policies {
            continue;
        }
        let source = std::fs::read_to_string(&path)
            .with_context(|| format!("failed to read {}", path.display()))?;
        out.push((name, source));
    }
    Ok(out)
}

/// The version of a set of policy files: a hash of their names and contents.
fn version_of(files: &[(String, String)]) -> String {
    let mut hasher = Sha256::new();
    for (name, source) in files.iter().filter(|(n, _)| !n.ends_with("_test.rego")) {
        hasher.update(name.as_bytes());
        hasher.update([0]);
        hasher.update(source.as_bytes());
        hasher.update([0]);
    }
    hex::encode(&hasher.finalize()[..8])
}

impl PolicySet {
    /// Loads every `.rego` file of `dir` (not recursively). The version is a hash of the policy files'
    /// names and contents, so the same policies always carry the same version.
    pub fn load_dir(dir: &Path, files: Files) -> anyhow::Result<Self> {
        Self::from_files(dir, policy_files(dir, files)?)
    }

    /// A set from its files' names and sources (as `policy_versions` keeps them), in load order.
    pub fn from_sources(files: Vec<(String, String)>) -> anyhow::Result<Self> {
        Self::from_files(Path::new("the stored policy files"), files)
    }

    /// The policy files of the set (not its tests), in load order, as its version is made from.
    pub fn sources(&self) -> &[(String, String)] {
        &self.sources
    }

    fn from_files(dir: &Path, files: Vec<(String, String)>) -> anyhow::Result<Self> {
        let mut engine = Engine::new();
        engine.set_rego_v0(false);
        engine.set_execution_timer_config(execution_limit());
        let version = version_of(&files);
        let mut policies = 0;
        let mut test_files = Vec::new();
        let sources = files
            .iter()
            .filter(|(name, _)| !name.ends_with("_test.rego"))
            .cloned()
            .collect();
        for (name, source) in files {
            engine
                .add_policy(name.clone(), source.clone())
                .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
            if name.ends_with("_test.rego") {
                test_files.push((name, source));
            } else {
                policies += 1;
            }
        }
        anyhow::ensure!(
            policies > 0,
            "no policy files (*.rego) in {}",
            dir.display()
        );
        // A policy that parses but cannot decide (no `allow` rule, say) is refused at load time. The
        // first evaluation also prepares the engine (analysis, scheduling): done here once, every clone
        // made per decision starts prepared.
        for rules in [AUTHZ, COMPLIANCE] {
            engine
                .eval_rule(rules.allow.to_owned())
                .map_err(|e| anyhow::anyhow!("the policies do not define {}: {e}", rules.allow))?;
        }
        let compiled = engine
            .compile_with_entrypoint(&AUTHZ.allow.into())
            .map_err(|e| anyhow::anyhow!("the policies do not compile: {e}"))?;
        let program = regorus::languages::rego::compiler::Compiler::compile_from_policy(
            &compiled,
            &ENTRY_POINTS,
        )
        .map_err(|e| anyhow::anyhow!("the policies do not compile: {e}"))?;
        Ok(Self {
            engine,
            compiled,
            program,
            vms: Mutex::new(Vec::new()),
            version,
            test_files,
            sources,
        })
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    /// Evaluates `rules` over `input`. Errors and undefined results deny, with a reason.
    pub fn evaluate(&self, rules: Rules, input: &serde_json::Value) -> Decision {
        // Deserialising from the borrowed document saves cloning it first.
        let evaluated = match <Value as serde::Deserialize>::deserialize(input) {
            Ok(input) => self.evaluate_value(rules, input),
            Err(e) => Err(self.failed(&e.into())),
        };
        evaluated.unwrap_or_else(|failed| {
            tracing::warn!(error = %failed.error, "policy evaluation failed; denying");
            failed.deny
        })
    }

    /// Evaluates `rules` over an input document already in the engine's value type (what the hot
    /// path builds, skipping JSON). `Err` is the deny an evaluation error makes, with the error for
    /// the caller to log: the deny's reason says only that evaluation failed (it goes to the client;
    /// the engine's text does not), and it is told apart for a caller that remembers decisions: an
    /// error may not recur.
    pub fn evaluate_value(&self, rules: Rules, input: Value) -> Result<Decision, EvaluationFailed> {
        match self.try_evaluate(rules, input) {
            Ok(outcome) => Ok(self.decision(outcome)),
            Err(e) => Err(self.failed(&e)),
        }
    }

    fn failed(&self, error: &anyhow::Error) -> EvaluationFailed {
        EvaluationFailed {
            deny: self.decision((
                false,
                vec![Reason::new(EVALUATION_FAILED, "policy evaluation failed")],
            )),
            error: format!("{error:#}"),
        }
    }

    fn decision(&self, (allow, reasons): (bool, Vec<Reason>)) -> Decision {
        let mut reasons = reasons;
        if !allow && reasons.is_empty() {
            reasons.push(Reason::new(UNSPECIFIED, "denied by policy"));
        }
        Decision {
            allow,
            reasons,
            policy_version: self.version.clone(),
        }
    }

    fn vm(&self) -> anyhow::Result<RegoVM> {
        let idle = self.vms.lock().unwrap_or_else(|e| e.into_inner()).pop();
        if let Some(vm) = idle {
            return Ok(vm);
        }
        let mut vm = RegoVM::new_with_policy(self.compiled.clone());
        vm.load_program(Arc::clone(&self.program));
        vm.set_execution_timer_config(Some(execution_limit()));
        // The policies use no data document; the VM keeps this empty one across runs.
        vm.set_data(regorus::Value::new_object())?;
        Ok(vm)
    }

    fn try_evaluate(&self, rules: Rules, input: Value) -> anyhow::Result<(bool, Vec<Reason>)> {
        let mut vm = self.vm()?;
        let outcome = Self::run(&mut vm, rules, input);
        // A VM that failed mid-way is dropped rather than reused.
        if outcome.is_ok() {
            self.vms.lock().unwrap_or_else(|e| e.into_inner()).push(vm);
        }
        outcome
    }

    fn run(vm: &mut RegoVM, rules: Rules, input: Value) -> anyhow::Result<(bool, Vec<Reason>)> {
        vm.set_input(input);
        let allow = vm.execute_entry_point_by_name(rules.allow)?;
        // Only `true` allows: undefined, false or any other value is a deny.
        let allow = allow.as_bool().is_ok_and(|b| *b);
        if allow {
            return Ok((true, Vec::new()));
        }
        // A policy without a `reasons` rule still denies; the caller supplies a generic reason.
        let reasons = match vm.execute_entry_point_by_name(rules.reasons) {
            Ok(regorus::Value::Set(set)) => set.iter().map(Reason::from_value).collect(),
            _ => Vec::new(),
        };
        Ok((allow, reasons))
    }

    /// Every rule the files of `package` (such as `edgemesh.authz`) declare, in order, with its value
    /// for `input` as the interpreter evaluates it: what `policy explain` shows as the rules behind
    /// a decision. `None`: undefined for the input (the rule's conditions do not hold).
    pub fn rule_values(
        &self,
        package: &str,
        input: &serde_json::Value,
    ) -> anyhow::Result<Vec<(String, Option<serde_json::Value>)>> {
        let mut engine = self.engine.clone();
        engine.set_input(<Value as serde::Deserialize>::deserialize(input)?);
        let results = engine.eval_query(format!("data.{package}"), false)?;
        let values = match results
            .result
            .first()
            .and_then(|r| r.expressions.first())
            .map(|e| serde_json::to_value(&e.value))
            .transpose()?
        {
            Some(serde_json::Value::Object(values)) => values,
            _ => serde_json::Map::new(),
        };
        let mut names: Vec<String> = Vec::new();
        for (_, source) in self.sources.iter().filter(|(_, source)| {
            source
                .lines()
                .any(|l| l.trim().strip_prefix("package ").map(str::trim) == Some(package))
        }) {
            for line in source.lines() {
                let name: String = line
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                let keyword = ["package", "import", "default", "not", "some", "every"];
                if !name.is_empty()
                    && !name.starts_with(|c: char| c.is_ascii_digit())
                    && !keyword.contains(&name.as_str())
                    && !names.contains(&name)
                {
                    names.push(name);
                }
            }
        }
        Ok(names
            .into_iter()
            .map(|name| {
                let value = values.get(&name).cloned();
                (name, value)
            })
            .collect())
    }

    /// Runs every `test_*` rule of the loaded `*_test.rego` files; answers (rule, passed) pairs.
    ///
    /// A test rule may walk every case of a table (each role and service, each OS version), and the
    /// limit that stops a runaway decision is wall-clock time: on a loaded machine a test could pass
    /// its 50 ms without any fault. Tests get `TEST_EVALUATION_LIMIT` instead.
    pub fn run_tests(&self) -> Vec<(String, bool)> {
        let mut engine = self.engine.clone();
        engine.set_execution_timer_config(regorus::utils::limits::ExecutionTimerConfig {
            limit: TEST_EVALUATION_LIMIT,
            ..execution_limit()
        });
        let mut outcomes = Vec::new();
        for (_, source) in &self.test_files {
            let Some(package) = source
                .lines()
                .find_map(|l| l.trim().strip_prefix("package ").map(str::trim))
            else {
                continue;
            };
            for line in source.lines() {
                let Some(rest) = line.strip_prefix("test_") else {
                    continue;
                };
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                let rule = format!("data.{package}.test_{name}");
                let passed = engine
                    .clone()
                    .eval_rule(rule.clone())
                    .is_ok_and(|v| v.as_bool().is_ok_and(|b| *b));
                outcomes.push((rule, passed));
            }
        }
        outcomes
    }
}

/// An input document to evaluate, as given to `policy eval`: a bare input, or an example of
/// `policies/examples` (`{"description", "input", "expect": {"allow", "reasons"}}`), whose `input` is
/// evaluated and whose `expect` the decision is checked against. An input document never has an
/// `input` key of its own, so a document with one is an example.
pub struct Example {
    pub input: serde_json::Value,
    pub expect: Option<serde_json::Value>,
}

impl Example {
    pub fn from_document(document: serde_json::Value) -> anyhow::Result<Self> {
        let (input, expect) = match document {
            serde_json::Value::Object(mut example) if example.contains_key("input") => (
                example.remove("input").unwrap_or_default(),
                example.remove("expect"),
            ),
            bare => (bare, None),
        };
        anyhow::ensure!(
            input.is_object(),
            "the input document must be a JSON object: a bare input document, or one wrapped as \
             {{\"input\": …}} as in policies/examples"
        );
        Ok(Self { input, expect })
    }

    /// Whether `decision` is what the example expects: the same allow, and every expected reason among
    /// the decision's. `None` when nothing is expected.
    pub fn expected(&self, decision: &Decision) -> Option<bool> {
        let expect = self.expect.as_ref()?;
        let reasons = expect["reasons"].as_array().map_or(&[][..], Vec::as_slice);
        Some(
            expect["allow"].as_bool() == Some(decision.allow)
                && reasons.iter().all(|r| {
                    decision
                        .reasons
                        .iter()
                        .any(|d| r.as_str() == Some(&d.message))
                }),
        )
    }
}

/// Whether the policy engine knows `timezone` (an IANA name such as `Europe/Berlin`), so a mistyped
/// zone is refused at start-up instead of denying every request.
pub fn valid_timezone(timezone: &str) -> bool {
    let mut engine = Engine::new();
    engine.set_rego_v0(false);
    let query = format!("time.clock([0, {}])", serde_json::Value::from(timezone));
    engine
        .eval_query(query, false)
        .is_ok_and(|r| !r.result.is_empty())
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// The files are those in force.
    Unchanged,
    /// A new set is in force.
    Replaced { version: String },
    /// The files changed but do not load; the set in force stays.
    Refused { error: String },
}

/// The policy set in force, replaced only by a set that loads.
pub struct PolicyStore {
    dir: PathBuf,
    current: RwLock<Arc<PolicySet>>,
    /// The version of files last refused, so a broken file is reported once, not at every poll.
    refused: Mutex<Option<String>>,
    /// When the files last changed, and what reloading them did (`None`: not since the start).
    last: Mutex<Option<(SystemTime, Reload)>>,
}

impl PolicyStore {
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let set = PolicySet::load_dir(dir, Files::Policies)?;
        Ok(Self {
            dir: dir.to_owned(),
            current: RwLock::new(Arc::new(set)),
            refused: Mutex::new(None),
            last: Mutex::new(None),
        })
    }

    /// The directory the policies are loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The policy files as they are on disk now (names and sources, tests left out).
    pub fn files(&self) -> anyhow::Result<Vec<(String, String)>> {
        policy_files(&self.dir, Files::Policies)
    }

    /// The last reload that found changed files: when, and whether they were put in force or refused.
    pub fn last_outcome(&self) -> Option<(SystemTime, Reload)> {
        self.last.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn remember(&self, outcome: &Reload) {
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((SystemTime::now(), outcome.clone()));
    }

    pub fn current(&self) -> Arc<PolicySet> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Loads the directory again if its policy files changed.
    pub fn reload(&self) -> Reload {
        let files = match policy_files(&self.dir, Files::Policies) {
            Ok(files) => files,
            Err(e) => return self.refuse(None, format!("{e:#}")),
        };
        let version = version_of(&files);
        if version == self.current().version() {
            return Reload::Unchanged;
        }
        match PolicySet::from_files(&self.dir, files) {
            Ok(set) => {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(set);
                *self.refused.lock().unwrap_or_else(|e| e.into_inner()) = None;
                tracing::info!(policy_version = %version, "policies reloaded");
                let outcome = Reload::Replaced { version };
                self.remember(&outcome);
                outcome
            }
            Err(e) => self.refuse(Some(version), format!("{e:#}")),
        }
    }

    /// Reloads when the files change (checked every `every`) or on SIGHUP, until `stop` completes;
    /// `on_reload` sees every outcome.
    pub async fn watch(
        self: Arc<Self>,
        every: Duration,
        on_reload: impl Fn(&Reload) + Send + 'static,
        stop: impl std::future::Future<Output = ()> + Send,
    ) {
        let mut stop = std::pin::pin!(stop);
        let mut hangup =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let hup = async {
                match hangup.as_mut() {
                    Some(signal) => {
                        signal.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = tick.tick() => {}
                () = hup => tracing::info!("SIGHUP: checking the policy files"),
                () = &mut stop => return,
            }
            let store = Arc::clone(&self);
            // Parsing is CPU work; keep it off the threads answering requests.
            if let Ok(outcome) = tokio::task::spawn_blocking(move || store.reload()).await {
                on_reload(&outcome);
            }
        }
    }

    fn refuse(&self, version: Option<String>, error: String) -> Reload {
        let mut refused = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        // Files already refused are refused again at every poll; they are reported once.
        let new = version.is_none() || *refused != version;
        if new {
            tracing::error!(error = %error, policy_version = %self.current().version(),
                "policy files do not load; the policies in force stay");
        }
        *refused = version;
        let outcome = Reload::Refused { error };
        if new {
            self.remember(&outcome);
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policies_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies")
    }

    #[test]
    fn the_rego_unit_tests_pass() {
        let set = PolicySet::load_dir(&policies_dir(), Files::WithTests).expect("policies load");
        let outcomes = set.run_tests();
        assert!(
            outcomes.len() >= 10,
            "the test rules were found: {outcomes:?}"
        );
        let failed: Vec<_> = outcomes.iter().filter(|(_, ok)| !ok).collect();
        assert!(failed.is_empty(), "failing Rego tests: {failed:?}");
    }

    /// Runs the `reasons` rule alone (a decision skips it for an allow).
    fn reasons_of(set: &PolicySet, rules: Rules, input: &serde_json::Value) -> Vec<String> {
        let mut vm = set.vm().expect("a VM");
        vm.set_input(serde_json::from_value(input.clone()).expect("an input value"));
        match vm
            .execute_entry_point_by_name(rules.reasons)
            .expect("reasons evaluate")
        {
            Value::Set(reasons) => reasons.iter().map(|r| r.to_string()).collect(),
            other => panic!("reasons is not a set: {other:?}"),
        }
    }

    /// `allow` and `compliant` spell their checks out for speed while `reasons` goes through the named
    /// rules: for the allowed example changed in one or two ways (every check failed, passed at its
    /// boundary, missing or of the wrong type), each is true exactly when its reasons are empty (and,
    /// for `compliant`, the device reported).
    #[test]
    fn a_decision_allows_exactly_when_it_has_no_reason() {
        use serde_json::json;
        let set = PolicySet::load_dir(&policies_dir(), Files::Policies).expect("policies load");
        let example: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(policies_dir().join("examples/allow-healthy-developer.json"))
                .expect("read"),
        )
        .expect("json");
        // `None` removes the field.
        let changes: Vec<(&str, Option<serde_json::Value>)> = vec![
            ("/device/id", Some(json!(""))),
            ("/device/id", Some(json!(7))),
            ("/device/id", None),
            ("/device/status", Some(json!("suspended"))),
            ("/device/os", Some(json!("windows"))),
            ("/device/os", Some(json!("MacOS"))),
            ("/device/os", None),
            ("/device/os_version", Some(json!("14.1"))),
            ("/device/os_version", Some(json!("11"))),
            ("/device/os_version", Some(json!(12))),
            ("/certificate/revoked", Some(json!(true))),
            ("/certificate/revoked", Some(json!(null))),
            ("/certificate/revoked", None),
            ("/health", Some(json!(null))),
            ("/health", Some(json!("healthy"))),
            ("/health/age_seconds", Some(json!(300))),
            ("/health/age_seconds", Some(json!(301))),
            ("/health/age_seconds", Some(json!("30"))),
            ("/health/age_seconds", None),
            ("/config/max_health_age_seconds", Some(json!(10))),
            ("/health/os_patches_current", Some(json!(false))),
            ("/health/os_patches_current", Some(json!(null))),
            ("/health/antivirus_enabled", Some(json!(false))),
            ("/health/antivirus_enabled", None),
            ("/health/disk_encrypted", Some(json!("true"))),
            ("/health/cpu_usage", Some(json!(89.9))),
            ("/health/cpu_usage", Some(json!(90))),
            ("/health/cpu_usage", Some(json!(null))),
            ("/health/memory_usage", Some(json!(95))),
            ("/health/memory_usage", Some(json!("5"))),
            ("/user/role", Some(json!("admin"))),
            ("/user/role", Some(json!("analyst"))),
            ("/user/role", Some(json!("intern"))),
            ("/user/role", Some(json!(null))),
            ("/service", Some(json!("analytics"))),
            ("/service", Some(json!("storage"))),
            ("/service", Some(json!("mainframe"))),
            ("/service", None),
            // Saturday 10:30, Wednesday 08:59 and 17:00 UTC; Wednesday 10:30 UTC is 19:30 in Tokyo.
            ("/time/now_ns", Some(json!(1_795_257_000_000_000_000_i64))),
            ("/time/now_ns", Some(json!(1_794_992_340_000_000_000_i64))),
            ("/time/now_ns", Some(json!(1_795_021_200_000_000_000_i64))),
            ("/time/timezone", Some(json!("Asia/Tokyo"))),
        ];
        let changed = |applied: &[&(&str, Option<serde_json::Value>)]| {
            let mut input = example["input"].clone();
            for (pointer, value) in applied {
                let (parent, key) = pointer.rsplit_once('/').expect("a pointer");
                let object = input.pointer_mut(parent).and_then(|p| p.as_object_mut());
                // Changing a field of a health that is no longer an object changes nothing.
                if let Some(object) = object {
                    match value {
                        Some(value) => object.insert(key.to_owned(), value.clone()),
                        None => object.remove(key),
                    };
                }
            }
            input
        };
        let (mut allowed, mut denied) = (0, 0);
        for (i, first) in changes.iter().enumerate() {
            for second in std::iter::once(None).chain(changes[i + 1..].iter().map(Some)) {
                let applied: Vec<_> = std::iter::once(first).chain(second).collect();
                let input = changed(&applied);
                // A device that never reported is not compliant, with no health reason: "never
                // reported" is authz's reason for it.
                let reported = input["health"].is_object();
                for rules in [AUTHZ, COMPLIANCE] {
                    let allow = set.evaluate(rules, &input).allow;
                    let reasons = reasons_of(&set, rules, &input);
                    assert_eq!(
                        allow,
                        reasons.is_empty() && (reported || rules.allow == AUTHZ.allow),
                        "{} after {applied:?}: allow {allow}, reasons {reasons:?}",
                        rules.allow
                    );
                    if rules.allow == AUTHZ.allow {
                        if allow { allowed += 1 } else { denied += 1 }
                    }
                }
            }
        }
        assert!(
            allowed >= 10 && denied >= 100,
            "{allowed} allowed, {denied} denied"
        );
    }

    /// Every example input document decides as its `expect` field says.
    #[test]
    fn the_examples_decide_as_documented() {
        let set = PolicySet::load_dir(&policies_dir(), Files::Policies).expect("policies load");
        let mut paths: Vec<_> = std::fs::read_dir(policies_dir().join("examples"))
            .expect("examples")
            .map(|e| e.expect("entry").path())
            .collect();
        paths.sort();
        assert!(paths.len() >= 6, "an allow and each kind of deny");
        for path in paths {
            let example = Example::from_document(
                serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json"),
            )
            .expect("an example");
            let expect = example.expect.as_ref().expect("an expected decision");
            assert!(expect["reasons"].is_array(), "{}", path.display());
            let decision = set.evaluate(AUTHZ, &example.input);
            assert_eq!(
                example.expected(&decision),
                Some(true),
                "{}: {decision:?}, expected {expect}",
                path.display()
            );
        }
    }

    #[test]
    fn an_example_is_unwrapped_and_a_bare_input_is_taken_as_it_is() {
        let example = Example::from_document(serde_json::json!({
            "description": "d", "input": {"device": {"id": "pi"}},
            "expect": {"allow": false, "reasons": ["no"]}
        }))
        .expect("example");
        assert_eq!(example.input, serde_json::json!({"device": {"id": "pi"}}));
        let decision = |allow, reasons: &[&str]| Decision {
            allow,
            reasons: reasons.iter().map(|r| Reason::new("test", *r)).collect(),
            policy_version: String::new(),
        };
        assert_eq!(
            example.expected(&decision(false, &["no", "more"])),
            Some(true)
        );
        assert_eq!(example.expected(&decision(false, &["other"])), Some(false));
        assert_eq!(example.expected(&decision(true, &[])), Some(false));
        let bare =
            Example::from_document(serde_json::json!({"device": {"id": "pi"}})).expect("bare");
        assert_eq!(
            (bare.input["device"]["id"].as_str(), bare.expect),
            (Some("pi"), None)
        );
        let err = Example::from_document(serde_json::json!({"input": 3}))
            .err()
            .expect("refused");
        assert!(err.to_string().contains("JSON object"), "{err}");
    }

    // A policy set must define both decisions' rules; these reasons never hold, so a deny falls back
    // to the generic reason.
    const GOOD: &str = "package edgemesh.authz\nimport rego.v1\ndefault allow := false\n\
        allow if input.ok == true\nreasons contains \"never\" if input.nothing == 1\n";
    const COMPLIANCE_STUB: &str = "package edgemesh.compliance\nimport rego.v1\n\
        default compliant := false\nreasons contains \"never\" if input.nothing == 1\n";

    fn policy_dir_with(authz: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("a.rego"), authz).expect("write");
        std::fs::write(dir.path().join("compliance.rego"), COMPLIANCE_STUB).expect("write");
        dir
    }

    #[test]
    fn a_broken_policy_is_refused_and_the_version_follows_the_content() {
        let good = GOOD;
        let dir = policy_dir_with(good);
        let first = PolicySet::load_dir(dir.path(), Files::Policies).expect("loads");
        assert!(
            first
                .evaluate(AUTHZ, &serde_json::json!({"ok": true}))
                .allow
        );
        let denied = first.evaluate(AUTHZ, &serde_json::json!({"ok": "yes"}));
        assert_eq!(
            denied.reasons,
            [Reason::new(UNSPECIFIED, "denied by policy")],
            "a deny always carries a reason"
        );

        std::fs::write(
            dir.path().join("a.rego"),
            format!("{good}allow if {{ input.x ==\n"),
        )
        .expect("write");
        assert!(
            PolicySet::load_dir(dir.path(), Files::Policies).is_err(),
            "syntax error refused"
        );

        std::fs::write(
            dir.path().join("a.rego"),
            good.replace("input.ok", "input.fine"),
        )
        .expect("write");
        let second = PolicySet::load_dir(dir.path(), Files::Policies).expect("loads");
        assert_ne!(
            first.version(),
            second.version(),
            "a new content, a new version"
        );
    }

    #[test]
    fn time_zones_are_checked() {
        assert!(valid_timezone("UTC"));
        assert!(valid_timezone("Europe/Berlin"));
        assert!(!valid_timezone("Mars/Olympus"));
    }

    #[test]
    fn v0_syntax_is_not_silently_accepted() {
        // Rego v0: no `if`. Parsed as v1 this is an error, never a silently different policy.
        let dir =
            policy_dir_with("package edgemesh.authz\ndefault allow = false\nallow { input.ok }\n");
        assert!(PolicySet::load_dir(dir.path(), Files::Policies).is_err());
    }

    #[test]
    fn a_policy_without_the_compliance_rules_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("a.rego"), GOOD).expect("write");
        let error = PolicySet::load_dir(dir.path(), Files::Policies)
            .err()
            .expect("refused");
        assert!(error.to_string().contains(COMPLIANCE.allow), "{error}");
    }

    #[test]
    fn the_store_keeps_the_last_good_policies_until_the_files_load_again() {
        let dir = policy_dir_with(GOOD);
        let store = PolicyStore::load(dir.path()).expect("loads");
        let first = store.current().version().to_owned();
        assert_eq!(store.reload(), Reload::Unchanged);

        std::fs::write(dir.path().join("a.rego"), format!("{GOOD}allow if {{\n")).expect("write");
        assert!(matches!(store.reload(), Reload::Refused { .. }));
        assert_eq!(store.current().version(), first, "the good set stays");
        let still = store
            .current()
            .evaluate(AUTHZ, &serde_json::json!({"ok": true}));
        assert!(still.allow, "and keeps deciding");

        std::fs::write(
            dir.path().join("a.rego"),
            GOOD.replace("input.ok", "input.fine"),
        )
        .expect("write");
        let Reload::Replaced { version } = store.reload() else {
            panic!("the fixed files load");
        };
        assert_ne!(version, first);
        assert_eq!(store.current().version(), version);
        assert!(
            !store
                .current()
                .evaluate(AUTHZ, &serde_json::json!({"ok": true}))
                .allow
        );
    }
}
