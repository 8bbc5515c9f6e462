//! The policy set: the `.rego` files of a directory parsed once into a regorus engine, evaluated per
//! decision on a clone of it. A decision never fails: an evaluation error is a deny with a reason.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use regorus::Engine;
use serde::Serialize;
use sha2::{Digest, Sha256};

const ALLOW_RULE: &str = "data.edgemesh.authz.allow";
const REASONS_RULE: &str = "data.edgemesh.authz.reasons";
/// A runaway policy is stopped and the request denied.
const EVALUATION_LIMIT: Duration = Duration::from_millis(50);

/// The outcome of one evaluation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub allow: bool,
    pub reasons: Vec<String>,
    pub policy_version: String,
}

#[derive(Clone)]
pub struct PolicySet {
    engine: Engine,
    version: String,
    test_files: Vec<(String, String)>,
}

/// Which files of the directory to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Files {
    /// The policies only (what the server evaluates).
    Policies,
    /// The policies and their `*_test.rego` files.
    WithTests,
}

impl PolicySet {
    /// Loads every `.rego` file of `dir` (not recursively). The version is a hash of the policy files'
    /// names and contents, so the same policies always carry the same version.
    pub fn load_dir(dir: &Path, files: Files) -> anyhow::Result<Self> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("failed to read policy directory {}", dir.display()))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "rego"))
            .collect();
        paths.sort();
        let mut engine = Engine::new();
        engine.set_rego_v0(false);
        engine.set_execution_timer_config(regorus::utils::limits::ExecutionTimerConfig {
            limit: EVALUATION_LIMIT,
            check_interval: std::num::NonZeroU32::MIN.saturating_add(63),
        });
        let mut hasher = Sha256::new();
        let mut policies = 0;
        let mut test_files = Vec::new();
        for path in paths {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let is_test = name.ends_with("_test.rego");
            if is_test && files == Files::Policies {
                continue;
            }
            let source = std::fs::read_to_string(&path)
                .with_context(|| format!("failed to read {}", path.display()))?;
            engine
                .add_policy(name.clone(), source.clone())
                .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
            if is_test {
                test_files.push((name, source));
            } else {
                hasher.update(name.as_bytes());
                hasher.update([0]);
                hasher.update(source.as_bytes());
                hasher.update([0]);
                policies += 1;
            }
        }
        anyhow::ensure!(
            policies > 0,
            "no policy files (*.rego) in {}",
            dir.display()
        );
        let set = Self {
            engine,
            version: hex::encode(&hasher.finalize()[..8]),
            test_files,
        };
        // A policy that parses but cannot decide (no `allow` rule, say) is refused at load time.
        set.engine
            .clone()
            .eval_rule(ALLOW_RULE.to_owned())
            .map_err(|e| anyhow::anyhow!("the policies do not define {ALLOW_RULE}: {e}"))?;
        Ok(set)
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    /// Evaluates the policies over `input`. Errors and undefined results deny, with a reason.
    pub fn evaluate(&self, input: &serde_json::Value) -> Decision {
        let (allow, reasons) = match self.try_evaluate(input) {
            Ok(outcome) => outcome,
            Err(e) => {
                tracing::warn!(error = %e, "policy evaluation failed; denying");
                (false, vec![format!("policy evaluation failed: {e}")])
            }
        };
        let mut reasons = reasons;
        if !allow && reasons.is_empty() {
            reasons.push("denied by policy".to_owned());
        }
        Decision {
            allow,
            reasons,
            policy_version: self.version.clone(),
        }
    }

    fn try_evaluate(&self, input: &serde_json::Value) -> anyhow::Result<(bool, Vec<String>)> {
        let mut engine = self.engine.clone();
        engine.set_input(regorus::Value::from(input.clone()));
        let allow = engine.eval_rule(ALLOW_RULE.to_owned())?;
        // Only `true` allows: undefined, false or any other value is a deny.
        let allow = allow.as_bool().is_ok_and(|b| *b);
        if allow {
            return Ok((true, Vec::new()));
        }
        // A policy without a `reasons` rule still denies; the caller supplies a generic reason.
        let reasons = match engine.eval_rule(REASONS_RULE.to_owned()) {
            Ok(regorus::Value::Set(set)) => set
                .iter()
                .filter_map(|r| r.as_string().ok().map(|s| s.to_string()))
                .collect(),
            _ => Vec::new(),
        };
        Ok((allow, reasons))
    }

    /// Runs every `test_*` rule of the loaded `*_test.rego` files; answers (rule, passed) pairs.
    pub fn run_tests(&self) -> Vec<(String, bool)> {
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
                let passed = self
                    .engine
                    .clone()
                    .eval_rule(rule.clone())
                    .is_ok_and(|v| v.as_bool().is_ok_and(|b| *b));
                outcomes.push((rule, passed));
            }
        }
        outcomes
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
            let example: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
            let decision = set.evaluate(&example["input"]);
            let expect = &example["expect"];
            assert_eq!(
                decision.allow,
                expect["allow"] == true,
                "{}: {decision:?}",
                path.display()
            );
            for reason in expect["reasons"].as_array().expect("reasons") {
                assert!(
                    decision
                        .reasons
                        .iter()
                        .any(|r| r == reason.as_str().expect("string")),
                    "{}: missing reason {reason}: {decision:?}",
                    path.display()
                );
            }
        }
    }

    #[test]
    fn a_broken_policy_is_refused_and_the_version_follows_the_content() {
        let dir = tempfile::tempdir().expect("tempdir");
        let good = "package edgemesh.authz\nimport rego.v1\ndefault allow := false\nallow if input.ok == true\n";
        std::fs::write(dir.path().join("a.rego"), good).expect("write");
        let first = PolicySet::load_dir(dir.path(), Files::Policies).expect("loads");
        assert!(first.evaluate(&serde_json::json!({"ok": true})).allow);
        let denied = first.evaluate(&serde_json::json!({"ok": "yes"}));
        assert_eq!(
            denied.reasons,
            ["denied by policy"],
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
    fn v0_syntax_is_not_silently_accepted() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Rego v0: no `if`. Parsed as v1 this is an error, never a silently different policy.
        std::fs::write(
            dir.path().join("a.rego"),
            "package edgemesh.authz\ndefault allow = false\nallow { input.ok }\n",
        )
        .expect("write");
        assert!(PolicySet::load_dir(dir.path(), Files::Policies).is_err());
    }
}
