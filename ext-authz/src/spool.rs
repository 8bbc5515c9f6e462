//! The audit spool: a journal of every decision, appended before its answer leaves ext-authz.
//!
//! Each decision is one JSON line, written (one `write(2)`, no `fsync`) under a lock that also queues
//! it for the audit writer, so the journal's order is the queue's. Once written, a record survives the
//! process (SIGKILL, an OOM kill, a panic): the kernel holds it. A background task flushes the journal
//! to disk every [`FLUSH_EVERY`], which bounds what a crash of the whole machine can take.
//!
//! Offsets are logical: they count every byte ever appended and never go back, so an offset names one
//! record for the life of the spool directory. The journal is split into segment files named by the
//! offset of their first byte (`audit-<offset>.journal`); `audit.shipped` holds the offset up to which
//! everything is known to be in PostgreSQL (written without `fsync`: a stale value only means records
//! are replayed again, and the table's key stores each once). Segments wholly before it are deleted.
//! Files are readable by their owner only.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::Context;

use crate::audit::Record;

/// A segment is closed (and a new one started) once it holds this many bytes.
const SEGMENT_BYTES: u64 = 16 << 20;
/// How often the journal is flushed to disk.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);
const SHIPPED_FILE: &str = "audit.shipped";
/// The spool of releases before the journal: its records are taken over as the first segment.
const LEGACY_SPOOL: &str = "audit.spool";
const LEGACY_OFFSET: &str = "audit.offset";

/// Where one record is in the journal: `[start, end)` in logical offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub start: u64,
    pub end: u64,
}

pub struct Spool {
    dir: PathBuf,
    state: Mutex<State>,
}

struct State {
    /// The segment being appended to.
    file: Arc<File>,
    /// The logical offset of its first byte.
    base: u64,
    /// The logical offset after the last byte appended.
    len: u64,
    /// The first byte's offset of every segment on disk, ascending (the current one last).
    segments: Vec<u64>,
    /// Everything before this offset is in PostgreSQL.
    shipped: u64,
    /// A failed append left part of a line that could not be cut off: the next append ends it first.
    torn: bool,
    /// Closed segments not yet flushed to disk.
    unflushed: Vec<Arc<File>>,
}

/// What opening found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Opened {
    /// Bytes of a torn last line (a crash in the middle of an append) that were cut off.
    pub torn_bytes: u64,
}

fn segment_name(base: u64) -> String {
    format!("audit-{base:020}.journal")
}

fn segment_base(name: &str) -> Option<u64> {
    name.strip_prefix("audit-")?
        .strip_suffix(".journal")?
        .parse()
        .ok()
}

fn open_segment(path: &Path) -> std::io::Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .mode(0o600)
        .open(path)?;
    // The mode given to open() is filtered by the umask and ignored for an existing file.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(file)
}

impl Spool {
    /// Opens (or creates) the spool in `dir`, cutting off a torn last line.
    pub fn open(dir: &Path) -> anyhow::Result<(Self, Opened)> {
        std::fs::create_dir_all(dir).with_context(|| {
            format!(
                "failed to create the audit spool directory {}",
                dir.display()
            )
        })?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("failed to restrict {}", dir.display()))?;
        let mut segments = Self::segments(dir)?;
        let mut shipped = match std::fs::read_to_string(dir.join(SHIPPED_FILE)) {
            Ok(text) => text.trim().parse::<u64>().with_context(|| {
                format!("{} is not a byte offset", dir.join(SHIPPED_FILE).display())
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e).context("failed to read the audit spool's shipped offset"),
        };
        if segments.is_empty() && dir.join(LEGACY_SPOOL).exists() {
            // The earlier spool is a journal of the same lines, of which `audit.offset` bytes were
            // replayed: it becomes the first segment.
            shipped = match std::fs::read_to_string(dir.join(LEGACY_OFFSET)) {
                Ok(text) => text.trim().parse().unwrap_or(0),
                Err(_) => 0,
            };
            std::fs::rename(dir.join(LEGACY_SPOOL), dir.join(segment_name(0)))
                .context("failed to take over the earlier audit spool")?;
            let _ = std::fs::remove_file(dir.join(LEGACY_OFFSET));
            segments = vec![0];
        }
        if segments.is_empty() {
            // Offsets never go back, not even over an emptied spool: start after what was shipped.
            segments.push(shipped);
        }
        let base = *segments.last().unwrap_or(&0);
        let path = dir.join(segment_name(base));
        let file = open_segment(&path)
            .with_context(|| format!("failed to open the audit spool {}", path.display()))?;
        let opened = Opened {
            torn_bytes: cut_torn_tail(&file)
                .with_context(|| format!("failed to check {}", path.display()))?,
        };
        let len = base + file.metadata()?.len();
        let first = segments.first().copied().unwrap_or(base);
        let spool = Self {
            dir: dir.to_owned(),
            state: Mutex::new(State {
                file: Arc::new(file),
                base,
                len,
                segments,
                shipped: shipped.clamp(first, len),
                torn: false,
                unflushed: Vec::new(),
            }),
        };
        Ok((spool, opened))
    }

    fn segments(dir: &Path) -> anyhow::Result<Vec<u64>> {
        let mut segments = Vec::new();
        for entry in std::fs::read_dir(dir)
            .with_context(|| format!("failed to read the audit spool {}", dir.display()))?
        {
            let entry = entry?;
            if let Some(base) = entry.file_name().to_str().and_then(segment_base) {
                segments.push(base);
            }
        }
        segments.sort_unstable();
        Ok(segments)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends `record` and then, still holding the journal, runs `then` with it and where it was written
    /// (`None` if it could not be), so that whatever `then` queues is in the journal's order. Never
    /// flushes to disk.
    pub fn append<T>(&self, record: Record, then: impl FnOnce(Record, Option<Span>) -> T) -> T {
        let mut line = Vec::with_capacity(512);
        if serde_json::to_writer(&mut line, &record).is_err() {
            return then(record, None);
        }
        line.push(b'\n');
        let mut state = self.lock();
        let span = match state.write(&line) {
            Ok(span) => Some(span),
            Err(e) => {
                tracing::error!(error = %e, "the audit spool could not be written");
                None
            }
        };
        if state.len - state.base >= SEGMENT_BYTES
            && let Err(e) = state.rotate(&self.dir)
        {
            tracing::error!(error = %e, "a new audit spool segment could not be started");
        }
        then(record, span)
    }

    /// Up to `max` records from `from` on (within one segment): the records, the offset after them,
    /// and how many lines could not be read (skipped). A last line still without its newline is left.
    pub fn read(&self, from: u64, max: usize) -> std::io::Result<(Vec<Record>, u64, u64)> {
        let (base, end) = {
            let state = self.lock();
            let index = state.segments.partition_point(|b| *b <= from);
            let base = state.segments[index.saturating_sub(1)];
            let end = state.segments.get(index).copied().unwrap_or(state.len);
            (base, end)
        };
        let mut reader = BufReader::new(File::open(self.dir.join(segment_name(base)))?);
        reader.seek(SeekFrom::Start(from.saturating_sub(base)))?;
        let (mut records, mut corrupt, mut offset) = (Vec::new(), 0, from);
        let mut line = String::new();
        while records.len() < max && offset < end {
            line.clear();
            let n = reader.read_line(&mut line)?;
            if n == 0 || !line.ends_with('\n') {
                break;
            }
            offset += n as u64;
            match serde_json::from_str::<Record>(&line) {
                Ok(record) => records.push(record),
                Err(_) => corrupt += 1,
            }
        }
        Ok((records, offset, corrupt))
    }

    /// The offset after the last record appended.
    pub fn end(&self) -> u64 {
        self.lock().len
    }

    /// The offset up to which everything is in PostgreSQL.
    pub fn shipped(&self) -> u64 {
        self.lock().shipped
    }

    /// Records that everything before `offset` is in PostgreSQL (in memory; [`Spool::save_shipped`]
    /// writes it down) and deletes the segments wholly before it.
    pub fn set_shipped(&self, offset: u64) {
        let done: Vec<u64> = {
            let mut state = self.lock();
            state.shipped = state.shipped.max(offset);
            let shipped = state.shipped;
            let keep_from = state
                .segments
                .partition_point(|b| *b <= shipped)
                .saturating_sub(1);
            state.segments.drain(..keep_from).collect()
        };
        for base in done {
            if let Err(e) = std::fs::remove_file(self.dir.join(segment_name(base))) {
                tracing::warn!(error = %e, base, "a shipped audit spool segment could not be removed");
            }
        }
    }

    /// Writes the shipped offset down (without flushing: a stale one means a larger replay).
    pub fn save_shipped(&self) -> std::io::Result<()> {
        let shipped = self.shipped();
        let tmp = self.dir.join(format!("{SHIPPED_FILE}.tmp"));
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(shipped.to_string().as_bytes())?;
        std::fs::rename(&tmp, self.dir.join(SHIPPED_FILE))
    }

    /// Flushes what was appended to disk (off the Check path: the flushing task calls it).
    pub fn flush(&self) -> std::io::Result<()> {
        let (current, closed) = {
            let mut state = self.lock();
            (
                Arc::clone(&state.file),
                std::mem::take(&mut state.unflushed),
            )
        };
        for file in closed {
            file.sync_data()?;
        }
        current.sync_data()
    }
}

impl State {
    fn write(&mut self, line: &[u8]) -> std::io::Result<Span> {
        if self.torn {
            // End the fragment a failed append left, so it is one unreadable line, not part of this.
            self.write_raw(b"\n")?;
            self.torn = false;
        }
        let start = self.len;
        self.write_raw(line)?;
        Ok(Span {
            start,
            end: self.len,
        })
    }

    /// Writes all of `bytes` or, on failure (a full disk), leaves the segment as it was, or if it
    /// cannot, at its true length with the next append ending the fragment.
    fn write_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match (&*self.file).write_all(bytes) {
            Ok(()) => {
                self.len += bytes.len() as u64;
                Ok(())
            }
            Err(e) => {
                let before = self.len - self.base;
                if self.file.set_len(before).is_err() {
                    let actual = self.file.metadata().map(|m| m.len()).unwrap_or(before);
                    self.len = self.base + actual;
                    self.torn = actual > before;
                }
                Err(e)
            }
        }
    }

    fn rotate(&mut self, dir: &Path) -> std::io::Result<()> {
        let file = open_segment(&dir.join(segment_name(self.len)))?;
        let closed = std::mem::replace(&mut self.file, Arc::new(file));
        self.unflushed.push(closed);
        self.base = self.len;
        self.segments.push(self.len);
        Ok(())
    }
}

/// Cuts off a last line without its newline (a crash mid-append); answers how many bytes it had.
fn cut_torn_tail(file: &File) -> std::io::Result<u64> {
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(0);
    }
    let mut reader = BufReader::new(file);
    // The last newline is found by reading backwards in blocks.
    let mut end = len;
    let mut block = vec![0u8; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(block.len() as u64);
        let chunk = &mut block[..(end - start) as usize];
        reader.seek(SeekFrom::Start(start))?;
        std::io::Read::read_exact(&mut reader, chunk)?;
        if let Some(i) = chunk.iter().rposition(|b| *b == b'\n') {
            let keep = start + i as u64 + 1;
            if keep < len {
                file.set_len(keep)?;
            }
            return Ok(len - keep);
        }
        end = start;
    }
    file.set_len(0)?;
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::tests::record;

    fn append(spool: &Spool, record: &Record) -> Span {
        spool.append(record.clone(), |_, span| span.expect("appended"))
    }

    #[test]
    fn records_come_back_in_order_from_where_shipping_stopped_across_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let written: Vec<Record> = (0..5).map(record).collect();
        {
            let (spool, opened) = Spool::open(dir.path()).expect("open");
            assert_eq!(opened, Opened::default());
            let spans: Vec<Span> = written.iter().map(|r| append(&spool, r)).collect();
            assert!(
                spans.windows(2).all(|w| w[0].end == w[1].start),
                "{spans:?}"
            );
            let (first, end, corrupt) = spool.read(0, 2).expect("read");
            assert_eq!((first.as_slice(), corrupt), (&written[..2], 0));
            assert_eq!(end, spans[1].end);
            spool.set_shipped(end);
            spool.save_shipped().expect("save");
        }
        let (spool, _) = Spool::open(dir.path()).expect("reopen");
        assert_eq!(spool.shipped(), {
            let (_, end, _) = spool.read(0, 2).expect("read");
            end
        });
        let (rest, end, _) = spool.read(spool.shipped(), 100).expect("read");
        assert_eq!(rest, written[2..]);
        assert_eq!(end, spool.end());
    }

    #[test]
    fn a_torn_last_line_is_cut_off_at_open_and_counted() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (spool, _) = Spool::open(dir.path()).expect("open");
            append(&spool, &record(1));
            append(&spool, &record(2));
        }
        let path = dir.path().join(segment_name(0));
        let whole = std::fs::metadata(&path).expect("segment").len();
        let mut file = OpenOptions::new().append(true).open(&path).expect("open");
        file.write_all(br#"{"id":"0b6f1c1e-"#).expect("tear");
        drop(file);
        let (spool, opened) = Spool::open(dir.path()).expect("reopen");
        assert_eq!(opened.torn_bytes, 16);
        assert_eq!(spool.end(), whole);
        let (records, end, corrupt) = spool.read(0, 100).expect("read");
        assert_eq!((records.len(), end, corrupt), (2, whole, 0));
        // Appending goes on at a line's start.
        append(&spool, &record(3));
        assert_eq!(spool.read(0, 100).expect("read").0.len(), 3);
    }

    #[test]
    fn an_unreadable_line_is_counted_and_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (spool, _) = Spool::open(dir.path()).expect("open");
        append(&spool, &record(1));
        spool.lock().write(b"{not json\n").expect("write");
        append(&spool, &record(2));
        let (records, end, corrupt) = spool.read(0, 10).expect("read");
        assert_eq!((records.len(), corrupt, end), (2, 1, spool.end()));
    }

    #[test]
    fn segments_roll_over_and_shipped_ones_are_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (spool, _) = Spool::open(dir.path()).expect("open");
        let first = append(&spool, &record(0));
        spool.lock().rotate(dir.path()).expect("rotate");
        let second = append(&spool, &record(1));
        assert_eq!(second.start, first.end, "offsets go on across segments");
        assert_eq!(Spool::segments(dir.path()).expect("list"), [0, first.end]);
        // Reading stops at a segment's end and continues in the next.
        let (a, end, _) = spool.read(0, 100).expect("read");
        assert_eq!((a.len(), end), (1, first.end));
        let (b, end, _) = spool.read(end, 100).expect("read");
        assert_eq!((b.len(), end), (1, second.end));
        spool.set_shipped(first.end);
        assert_eq!(Spool::segments(dir.path()).expect("list"), [first.end]);
        spool.flush().expect("flush");
    }

    #[test]
    fn spool_files_are_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (spool, _) = Spool::open(&dir.path().join("spool")).expect("open");
        append(&spool, &record(0));
        spool.save_shipped().expect("save");
        let mode = |p: &Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
        assert_eq!(mode(&dir.path().join("spool")), 0o700);
        assert_eq!(mode(&dir.path().join("spool").join(segment_name(0))), 0o600);
        assert_eq!(mode(&dir.path().join("spool").join(SHIPPED_FILE)), 0o600);
    }

    #[test]
    fn the_earlier_spool_is_taken_over_with_its_replayed_offset() {
        let dir = tempfile::tempdir().expect("tempdir");
        let lines: Vec<String> = (0..3)
            .map(|n| serde_json::to_string(&record(n)).expect("json") + "\n")
            .collect();
        std::fs::write(dir.path().join(LEGACY_SPOOL), lines.concat()).expect("write");
        std::fs::write(dir.path().join(LEGACY_OFFSET), lines[0].len().to_string()).expect("write");
        let (spool, _) = Spool::open(dir.path()).expect("open");
        let (records, _, _) = spool.read(spool.shipped(), 100).expect("read");
        assert_eq!(
            records.len(),
            2,
            "the replayed first record is not read again"
        );
        assert!(!dir.path().join(LEGACY_SPOOL).exists());
    }
}
