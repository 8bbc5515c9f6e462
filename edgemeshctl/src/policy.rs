//! `policy eval` and `policy test`: the policies evaluated in-process, as ext-authz evaluates them.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use edgemesh_core::policy::{AUTHZ, Example, Files, PolicySet};

use crate::Output;

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Evaluate an input document and print the decision as JSON. An example of policies/examples
    /// (`{"input": …, "expect": …}`) is unwrapped, and its expected decision checked (exit 1 if not met).
    Eval {
        /// The input document (JSON); `-` or absent reads standard input.
        #[arg(long)]
        input: Option<PathBuf>,
        #[command(flatten)]
        dir: PolicyDir,
    },
    /// Run the Rego unit tests (`test_*` rules of `*_test.rego`); exit 1 if one fails.
    Test {
        #[command(flatten)]
        dir: PolicyDir,
    },
    /// Evaluate the stored decisions of a time window again with a candidate policy directory: how
    /// many would change, in which direction, for which services, devices and reasons (through the
    /// control API; writes a JSON report).
    Replay(crate::decisions::ReplayArgs),
    /// One stored decision evaluated again under the policy version that made it: its input, the
    /// value of every rule, and its reasons (through the control API).
    Explain(crate::decisions::ExplainArgs),
}

impl PolicyCommand {
    /// Whether it runs without the control API.
    pub fn is_local(&self) -> bool {
        matches!(self, Self::Eval { .. } | Self::Test { .. })
    }
}

#[derive(Debug, clap::Args)]
pub struct PolicyDir {
    /// Directory of the Rego policies.
    #[arg(long, env = "EDGEMESH_POLICY_DIR", default_value = "policies")]
    policy_dir: PathBuf,
}

/// Runs a policy command; `Err` is a usage error (unreadable files, a policy that does not compile).
pub fn run(command: &PolicyCommand, out: Output) -> anyhow::Result<ExitCode> {
    match command {
        PolicyCommand::Eval { input, dir } => eval(&dir.policy_dir, input.as_deref()),
        PolicyCommand::Test { dir } => test(&dir.policy_dir, out),
        PolicyCommand::Replay(_) | PolicyCommand::Explain(_) => {
            unreachable!("replay and explain run through the control API")
        }
    }
}

fn eval(policy_dir: &Path, input: Option<&Path>) -> anyhow::Result<ExitCode> {
    let policies = PolicySet::load_dir(policy_dir, Files::Policies)?;
    let text = match input {
        None => read_stdin()?,
        Some(p) if p.as_os_str() == "-" => read_stdin()?,
        Some(p) => {
            std::fs::read_to_string(p).with_context(|| format!("failed to read {}", p.display()))?
        }
    };
    let example =
        Example::from_document(serde_json::from_str(&text).context("the input is not JSON")?)?;
    let decision = policies.evaluate(AUTHZ, &example.input);
    println!("{}", serde_json::to_string_pretty(&decision)?);
    Ok(match example.expected(&decision) {
        None => ExitCode::SUCCESS,
        Some(true) => {
            eprintln!("as the example expects");
            ExitCode::SUCCESS
        }
        Some(false) => {
            eprintln!(
                "NOT as the example expects: {}",
                example.expect.unwrap_or_default()
            );
            ExitCode::FAILURE
        }
    })
}

fn test(policy_dir: &Path, out: Output) -> anyhow::Result<ExitCode> {
    let policies = PolicySet::load_dir(policy_dir, Files::WithTests)?;
    let outcomes = policies.run_tests();
    let failed = outcomes.iter().filter(|(_, ok)| !ok).count();
    match out {
        Output::Json => println!(
            "{}",
            serde_json::json!({
                "policy_version": policies.version(),
                "tests": outcomes.iter().map(|(rule, ok)| serde_json::json!({"rule": rule, "passed": ok})).collect::<Vec<_>>(),
                "failed": failed,
            })
        ),
        Output::Table => {
            for (rule, ok) in &outcomes {
                println!("{} {rule}", if *ok { "PASS" } else { "FAIL" });
            }
            println!(
                "{} tests, {failed} failed (policy version {})",
                outcomes.len(),
                policies.version()
            );
        }
    }
    Ok(if failed == 0 && !outcomes.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn read_stdin() -> anyhow::Result<String> {
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .context("failed to read standard input")?;
    Ok(text)
}
