//! The target triple the agent is built for, which it compares with a release's: it takes only a build
//! made for the machine it runs on.
fn main() {
    let target = std::env::var("TARGET").unwrap_or_default();
    println!("cargo::rustc-env=EDGEMESH_AGENT_TARGET={target}");
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=EDGEMESH_AGENT_VERSION");
}
