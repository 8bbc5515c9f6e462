//! Exit statuses shared by the EdgeMesh binaries: bad configuration (flags, environment, the files it
//! names) exits [`CONFIG`] with a one-line reason; a failure after start exits 1.

use std::process::ExitCode;

/// Bad configuration (BSD's `EX_USAGE`).
pub const CONFIG: u8 = 64;

/// A start-up failure the configuration caused: a bad value, or a file it names that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
pub struct ConfigError(pub anyhow::Error);

impl ConfigError {
    pub fn new(message: impl std::fmt::Display) -> Self {
        Self(anyhow::anyhow!("{message}"))
    }
}

/// Marks a `Result`'s error as the configuration's.
pub trait ConfigContext<T> {
    fn config_error(self) -> Result<T, anyhow::Error>;
}

impl<T> ConfigContext<T> for anyhow::Result<T> {
    fn config_error(self) -> anyhow::Result<T> {
        self.map_err(|e| ConfigError(e).into())
    }
}

/// The command line of `T`, or an exit: help and version print and exit 0; anything else prints the
/// one line that says what is wrong (and where to find help) and exits [`CONFIG`].
pub fn parse_args<T: clap::Parser>(program: &str) -> T {
    match T::try_parse() {
        Ok(parsed) => parsed,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            std::process::exit(0)
        }
        Err(e) => {
            let rendered = e.render().to_string();
            let reason = rendered
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("invalid arguments")
                .trim_start_matches("error: ");
            eprintln!("{program}: error: {reason} (see {program} --help)");
            std::process::exit(i32::from(CONFIG))
        }
    }
}

/// The exit status for an error that ended the program: [`CONFIG`] if the configuration caused it,
/// else 1. The error is printed on one line.
pub fn failed(program: &str, error: &anyhow::Error) -> ExitCode {
    eprintln!("{program}: error: {error:#}");
    if error.downcast_ref::<ConfigError>().is_some() {
        ExitCode::from(CONFIG)
    } else {
        ExitCode::FAILURE
    }
}
