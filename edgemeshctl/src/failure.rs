//! Why a command did not complete, and the exit status that says so.

use std::fmt;

/// Why a command did not complete, and so its exit status.
#[derive(Debug)]
pub enum Failure {
    /// Bad flags or configuration: exit 64.
    Usage(String),
    /// The server refused: exit 1.
    Refused {
        status: u16,
        error: String,
        detail: String,
    },
    /// No answer, or not one of the API's: exit 3.
    Unreachable(String),
}

impl Failure {
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Refused { .. } => 1,
            Self::Usage(_) => edgemesh_core::exit::CONFIG,
            Self::Unreachable(_) => 3,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Usage(message) => write!(f, "error: {message}"),
            Self::Refused {
                status,
                error,
                detail,
            } => write!(f, "refused (HTTP {status}): {error}: {detail}"),
            Self::Unreachable(message) => write!(f, "error: {message}"),
        }
    }
}
