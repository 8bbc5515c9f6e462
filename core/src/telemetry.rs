//! One tracing set-up for every binary: `EDGEMESH_LOG` filters (default `info`), `EDGEMESH_LOG_FORMAT=json`
//! switches to one JSON object per line. Logs go to stderr.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

pub fn init() {
    let filter = EnvFilter::try_from_env("EDGEMESH_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only for a terminal: log files stay plain text.
        .with_ansi(std::io::stderr().is_terminal());
    let json = std::env::var("EDGEMESH_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    // A second initialisation (tests start several services in one process) keeps the first.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
