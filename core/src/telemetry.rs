//! One tracing set-up for every binary: `EDGEMESH_LOG` filters (default `info`), `EDGEMESH_LOG_FORMAT=json`
//! switches to one JSON object per line. Logs go to stderr in batches: a line is appended to a buffer
//! that a background thread writes out every [`FLUSH_EVERY`], so logging costs its formatting, not a
//! system call. ext-authz logs every decision, and a write per decision was about a tenth of its CPU
//! per Check (BENCHMARKS.md).

use std::io::{IsTerminal, Write};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::Duration;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// How long a log line may wait in the buffer.
pub const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// Beyond this many buffered bytes (stderr blocked or far behind), lines are dropped and counted
/// rather than held in memory without bound; the count is logged once stderr takes lines again.
const MAX_BUFFERED: usize = 4 << 20;

/// Sets up logging; keep the answer until the process ends (dropping it writes what is buffered).
#[must_use = "buffered log lines are written when the guard is dropped"]
pub fn init() -> FlushGuard {
    let filter = EnvFilter::try_from_env("EDGEMESH_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(BatchedStderr)
        // Colours only for a terminal: log files stay plain text.
        .with_ansi(std::io::stderr().is_terminal());
    let json = std::env::var("EDGEMESH_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    // A second initialisation (tests start several services in one process) keeps the first.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    std::thread::Builder::new()
        .name("log-writer".to_owned())
        .spawn(move || {
            loop {
                // Asleep while there is nothing to write (the agent idles for minutes on a Pi).
                drop(
                    BUFFER
                        .pending
                        .wait_while(
                            BUFFER.state.lock().unwrap_or_else(PoisonError::into_inner),
                            |state| state.lines.is_empty() && state.dropped == 0,
                        )
                        .unwrap_or_else(PoisonError::into_inner),
                );
                std::thread::sleep(FLUSH_EVERY);
                BUFFER.flush();
            }
        })
        .map(|_| ())
        // Without the thread, lines are still written when the guard drops (at exit) or when the
        // buffer is full; say so once, directly.
        .unwrap_or_else(|e| eprintln!("edgemesh: cannot start the log writer thread: {e}"));
    FlushGuard(())
}

/// Writes the buffered lines when dropped.
pub struct FlushGuard(());

/// Writes out the lines buffered so far (before the process is replaced by `exec`, say).
pub fn flush() {
    BUFFER.flush();
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        flush();
    }
}

static BUFFER: Buffer = Buffer {
    state: Mutex::new(State {
        lines: Vec::new(),
        dropped: 0,
    }),
    pending: Condvar::new(),
    output: Mutex::new(()),
};

struct Buffer {
    state: Mutex<State>,
    /// Signalled when the first line goes into an empty buffer.
    pending: Condvar,
    /// Held while writing to stderr, so batches keep their order.
    output: Mutex<()>,
}

struct State {
    lines: Vec<u8>,
    dropped: u64,
}

impl Buffer {
    fn flush(&self) {
        let _output = self.output.lock().unwrap_or_else(PoisonError::into_inner);
        let (lines, dropped) = {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            let lines = std::mem::take(&mut state.lines);
            (lines, std::mem::take(&mut state.dropped))
        };
        let mut stderr = std::io::stderr().lock();
        let _ = stderr.write_all(&lines);
        if dropped > 0 {
            let _ = writeln!(
                stderr,
                "edgemesh: {dropped} log lines dropped: stderr did not keep up"
            );
        }
        let _ = stderr.flush();
    }
}

/// The writer the formatter is given: stderr, through the buffer.
struct BatchedStderr;

/// What one log event writes through (the formatter hands it a whole line).
pub struct Line;

impl Write for Line {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let mut state = BUFFER.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.lines.is_empty() && state.dropped == 0 {
            BUFFER.pending.notify_one();
        }
        if state.lines.len() + bytes.len() > MAX_BUFFERED {
            state.dropped += 1;
        } else {
            state.lines.extend_from_slice(bytes);
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl MakeWriter<'_> for BatchedStderr {
    type Writer = Line;

    fn make_writer(&self) -> Self::Writer {
        Line
    }
}
