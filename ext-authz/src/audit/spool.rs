//! The audit spool: a journal of every decision, written before its answer leaves ext-authz.
//!
//! Each decision is one JSON line, copied into the current segment under a lock that also queues it
//! for the audit writer, so the journal's order is the queue's. A segment is a file of
//! [`SEGMENT_BYTES`], allocated on disk ahead of use (reading as zeros) and mapped into memory: an append is a copy
//! into the page cache, with no system call, and it cannot fail halfway, because its space was the
//! file's before any record was written (a full disk shows as a next segment that cannot be made,
//! never as half a record). Once copied, a record survives the process (SIGKILL, an OOM kill, a
//! panic): the page is the kernel's. A background task ([`Spool::flush`]) writes the journal to disk
//! every [`FLUSH_EVERY`], which bounds what a crash of the whole machine can take, and makes the next
//! segment ahead (`audit.next`), so that moving on to it is a rename.
//!
//! Offsets are logical: they count every byte ever appended and never go back, so an offset names one
//! record for the life of the spool directory. Segments are named by the offset of their first byte
//! (`audit-<offset>.journal`); `audit.shipped` holds the offset up to which everything is known to be
//! in PostgreSQL (written without `fsync`: a stale value only means records are replayed again, and
//! the table's key stores each once). Segments wholly before it are deleted. A segment's bytes after
//! its records are zeros, which no JSON line holds: at open, the last segment's records end at its last
//! newline, anything after it (a record torn by a crash mid-copy) is cut off and counted, and appending
//! goes on in a new segment. Files are readable by their owner only.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::Context;
use memmap2::MmapMut;

use super::Record;

/// A segment's size: about 40,000 decisions. The next one is made while this one fills.
const SEGMENT_BYTES: usize = 16 << 20;
/// How often the journal is flushed to disk.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);
const SHIPPED_FILE: &str = "audit.shipped";
/// The next segment, made ahead.
const NEXT_FILE: &str = "audit.next";
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
    segment_bytes: usize,
    state: Mutex<State>,
}

/// A segment file, mapped.
struct Mapped {
    file: Arc<File>,
    map: MmapMut,
}

struct State {
    /// The segment being appended to.
    current: Mapped,
    /// The logical offset of its first byte.
    base: u64,
    /// The logical offset after the last byte appended.
    len: u64,
    /// The first byte's offset of every segment on disk, ascending (the current one last).
    segments: Vec<u64>,
    /// Everything before this offset is in PostgreSQL.
    shipped: u64,
    /// The next segment, made ahead by [`Spool::flush`]; `None` until it is (or while it cannot be).
    next: Option<Mapped>,
    /// Segments closed since the last flush, with the length of their records: cut to it and flushed.
    closed: Vec<(Mapped, u64)>,
    /// The current segment is full and there was no next one: appends are not journaled until there is.
    starved: bool,
}

/// What opening found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Opened {
    /// Bytes of a torn last record (a crash in the middle of an append) that were cut off.
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

/// Maps a segment file into memory, for reading and writing.
#[allow(unsafe_code)]
fn map(file: &File) -> std::io::Result<MmapMut> {
    // SAFETY: the mapping is undefined behaviour only if the file changes size or content behind it.
    // Segment files are this process's own (0600, in a 0700 directory), are written through their
    // mapping only, and are cut to their records only once unmapped ([`Spool::flush`]); one
    // ext-authz uses a spool directory at a time.
    unsafe { MmapMut::map_mut(file) }
}

/// Makes a segment of `bytes` zeros at `path` and maps it. Its blocks are allocated now (`fallocate`,
/// or zeros written where the filesystem has no `fallocate`), not left a hole: a hole filled through a
/// mapping on a full disk would kill the process with SIGBUS, so the disk's blocks are the file's before
/// any record is copied in.
fn make_segment(path: &Path, bytes: usize) -> std::io::Result<Mapped> {
    let made = (|| {
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .mode(0o600)
            .open(path)?;
        // The mode given to open() is filtered by the umask and ignored for an existing file.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        match rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, bytes as u64) {
            Ok(()) => {}
            Err(rustix::io::Errno::OPNOTSUPP) => {
                let zeros = vec![0u8; 1 << 20];
                let mut left = bytes;
                while left > 0 {
                    let n = left.min(zeros.len());
                    file.write_all(&zeros[..n])?;
                    left -= n;
                }
            }
            Err(e) => return Err(e.into()),
        }
        let map = map(&file)?;
        Ok(Mapped {
            file: Arc::new(file),
            map,
        })
    })();
    if made.is_err() {
        // A full disk: leave no part of a segment behind.
        let _ = std::fs::remove_file(path);
    }
    made
}

impl Spool {
    /// Opens (or creates) the spool in `dir`, cutting off a torn last record.
    pub fn open(dir: &Path) -> anyhow::Result<(Self, Opened)> {
        Self::open_with(dir, SEGMENT_BYTES)
    }

    fn open_with(dir: &Path, segment_bytes: usize) -> anyhow::Result<(Self, Opened)> {
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
        // Offsets never go back, not even over an emptied spool: start after what was shipped.
        let mut len = shipped;
        let mut opened = Opened::default();
        if let Some(&last) = segments.last() {
            // The last segment was being appended to: its records end at its last newline. It is
            // closed (cut to them) and appending goes on in a new one.
            let path = dir.join(segment_name(last));
            let records = close_last(&path, &mut opened)
                .with_context(|| format!("failed to check the audit spool {}", path.display()))?;
            if records == 0 {
                std::fs::remove_file(&path)
                    .with_context(|| format!("failed to remove {}", path.display()))?;
                segments.pop();
            }
            len = last + records;
        }
        let path = dir.join(segment_name(len));
        let current = make_segment(&path, segment_bytes).with_context(|| {
            format!(
                "failed to make the audit spool segment {} ({} MiB)",
                path.display(),
                segment_bytes >> 20
            )
        })?;
        segments.push(len);
        let first = segments.first().copied().unwrap_or(len);
        let spool = Self {
            dir: dir.to_owned(),
            segment_bytes,
            state: Mutex::new(State {
                current,
                base: len,
                len,
                segments,
                shipped: shipped.clamp(first, len),
                next: None,
                closed: Vec::new(),
                starved: false,
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
    /// makes a system call unless the segment is full (then a rename, once per segment).
    pub fn append<T>(&self, record: Record, then: impl FnOnce(Record, Option<Span>) -> T) -> T {
        let mut line = Vec::with_capacity(512);
        if serde_json::to_writer(&mut line, &record).is_err() {
            return then(record, None);
        }
        line.push(b'\n');
        let mut state = self.lock();
        let span = state.write(&line, &self.dir);
        then(record, span)
    }

    /// Up to `max` records from `from` on (within one segment): the records, the offset after them,
    /// and how many lines could not be read (skipped).
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

    /// Flushes what was appended to disk, cuts closed segments to their records, and makes the next
    /// segment if there is none (off the Check path: the flushing task calls it). On an error (a full
    /// disk), the rest is still done and the first error answered.
    pub fn flush(&self) -> std::io::Result<()> {
        let (current, closed, wants_next) = {
            let mut state = self.lock();
            (
                Arc::clone(&state.current.file),
                std::mem::take(&mut state.closed),
                state.next.is_none(),
            )
        };
        let mut result = Ok(());
        for (Mapped { file, map }, records) in closed {
            drop(map);
            result = result.and(file.set_len(records).and_then(|()| file.sync_data()));
        }
        result = result.and(current.sync_data());
        if wants_next {
            match make_segment(&self.dir.join(NEXT_FILE), self.segment_bytes) {
                Ok(next) => self.lock().next = Some(next),
                Err(e) => result = result.and(Err(e)),
            }
        }
        result
    }
}

impl State {
    /// Copies `line` in, moving on to the next segment if it does not fit in this one.
    fn write(&mut self, line: &[u8], dir: &Path) -> Option<Span> {
        let n = line.len() as u64;
        if self.len - self.base + n > self.current.map.len() as u64
            && let Err(e) = self.rotate(dir, n)
        {
            if !self.starved {
                self.starved = true;
                tracing::error!(error = %e, "the audit spool segment is full and the next one could \
                    not be made: decisions are not journaled (only queued) until it is");
            }
            return None;
        }
        let at = usize::try_from(self.len - self.base).ok()?;
        self.current.map[at..at + line.len()].copy_from_slice(line);
        let start = self.len;
        self.len += n;
        Some(Span {
            start,
            end: self.len,
        })
    }

    /// Closes the current segment and appends in the next, made ahead (a rename, no allocation).
    fn rotate(&mut self, dir: &Path, need: u64) -> std::io::Result<()> {
        let next = self.next.take().ok_or_else(|| {
            std::io::Error::other("the next segment is not ready (it is made every second)")
        })?;
        if (next.map.len() as u64) < need {
            self.next = Some(next);
            return Err(std::io::Error::other("a record longer than a segment"));
        }
        if let Err(e) = std::fs::rename(dir.join(NEXT_FILE), dir.join(segment_name(self.len))) {
            self.next = Some(next);
            return Err(e);
        }
        let closed = std::mem::replace(&mut self.current, next);
        self.closed.push((closed, self.len - self.base));
        self.base = self.len;
        self.segments.push(self.len);
        if self.starved {
            self.starved = false;
            tracing::info!("the audit spool has a segment again; decisions are journaled");
        }
        Ok(())
    }
}

/// Closes the segment that was being appended to when the spool was last open: finds the end of its
/// records (after the last newline; zeros follow the records), cuts off anything after it (a record
/// torn by a crash mid-copy, counted in `opened`) and the zeros, and answers the records' length.
fn close_last(path: &Path, opened: &mut Opened) -> std::io::Result<u64> {
    let mut file = OpenOptions::new().read(true).write(true).open(path)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    let len = file.metadata()?.len();
    let mut block = vec![0u8; 64 << 10];
    // The offset after the last byte that is not zero, and after the last newline, read backwards.
    let (mut written, mut records) = (None, 0);
    let mut end = len;
    while end > 0 {
        let start = end.saturating_sub(block.len() as u64);
        let chunk = &mut block[..usize::try_from(end - start).unwrap_or(0)];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(chunk)?;
        end = start;
        let search = match written {
            Some(_) => &chunk[..],
            None => match chunk.iter().rposition(|b| *b != 0) {
                Some(i) => {
                    written = Some(start + i as u64 + 1);
                    &chunk[..=i]
                }
                None => continue,
            },
        };
        if let Some(i) = search.iter().rposition(|b| *b == b'\n') {
            records = start + i as u64 + 1;
            break;
        }
    }
    opened.torn_bytes += written.unwrap_or(0).saturating_sub(records);
    if len != records {
        file.set_len(records)?;
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;

    use super::*;
    use crate::audit::tests::record;

    fn append(spool: &Spool, record: &Record) -> Option<Span> {
        spool.append(record.clone(), |_, span| span)
    }

    /// Every record from `from` to the end, across segments, and the unreadable lines.
    fn read_all(spool: &Spool, mut from: u64) -> (Vec<Record>, u64) {
        let (mut all, mut corrupt) = (Vec::new(), 0);
        while from < spool.end() {
            let (records, end, bad) = spool.read(from, 100).expect("read");
            assert!(end > from, "no progress at {from}");
            all.extend(records);
            corrupt += bad;
            from = end;
        }
        (all, corrupt)
    }

    fn line_len(n: u32) -> usize {
        serde_json::to_vec(&record(n)).expect("json").len() + 1
    }

    #[test]
    fn records_come_back_in_order_from_where_shipping_stopped_across_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let written: Vec<Record> = (0..5).map(record).collect();
        {
            let (spool, opened) = Spool::open(dir.path()).expect("open");
            assert_eq!(opened, Opened::default());
            let spans: Vec<Span> = written
                .iter()
                .map(|r| append(&spool, r).expect("journaled"))
                .collect();
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
        let (spool, opened) = Spool::open(dir.path()).expect("reopen");
        assert_eq!(opened, Opened::default(), "a clean end is not torn");
        assert_eq!(spool.shipped(), {
            let (_, end, _) = spool.read(0, 2).expect("read");
            end
        });
        assert_eq!(
            read_all(&spool, spool.shipped()),
            (written[2..].to_vec(), 0)
        );
        // Appending goes on after them.
        let more = append(&spool, &record(5)).expect("journaled");
        assert_eq!(more.start, spool.end() - line_len(5) as u64);
        assert_eq!(read_all(&spool, 0).0.len(), 6);
    }

    #[test]
    fn a_torn_last_record_is_cut_off_at_open_and_counted() {
        // A crash mid-copy leaves part of a record before the segment's zeros; a journal of the
        // previous release (written with write(2), no zeros) leaves it at the file's end.
        for zeros_after in [true, false] {
            let dir = tempfile::tempdir().expect("tempdir");
            let written: Vec<Record> = (1..4).map(record).collect();
            {
                let (spool, _) = Spool::open(dir.path()).expect("open");
                append(&spool, &written[0]).expect("journaled");
                append(&spool, &written[1]).expect("journaled");
            }
            let path = dir.path().join(segment_name(0));
            let whole = (line_len(1) + line_len(2)) as u64;
            let file = OpenOptions::new().write(true).open(&path).expect("open");
            if !zeros_after {
                file.set_len(whole).expect("cut");
            }
            file.write_at(br#"{"id":"0b6f1c1e-"#, whole).expect("tear");
            drop(file);
            let (spool, opened) = Spool::open(dir.path()).expect("reopen");
            assert_eq!(opened.torn_bytes, 16, "zeros after: {zeros_after}");
            assert_eq!(spool.end(), whole);
            assert_eq!(std::fs::metadata(&path).expect("segment").len(), whole);
            let (records, end, corrupt) = spool.read(0, 100).expect("read");
            assert_eq!((records.len(), end, corrupt), (2, whole, 0));
            // Appending goes on at a record's start.
            append(&spool, &written[2]).expect("journaled");
            assert_eq!(read_all(&spool, 0), (written.clone(), 0));
        }
    }

    #[test]
    fn an_unreadable_line_is_counted_and_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (spool, _) = Spool::open(dir.path()).expect("open");
        append(&spool, &record(1)).expect("journaled");
        spool
            .lock()
            .write(b"{not json\n", dir.path())
            .expect("write");
        append(&spool, &record(2)).expect("journaled");
        let (records, end, corrupt) = spool.read(0, 10).expect("read");
        assert_eq!((records.len(), corrupt, end), (2, 1, spool.end()));
    }

    #[test]
    fn segments_roll_over_and_shipped_ones_are_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Room for two records per segment.
        let size = 2 * line_len(0) + 10;
        let (spool, _) = Spool::open_with(dir.path(), size).expect("open");
        spool.flush().expect("flush: makes the next segment");
        let spans: Vec<Span> = (0..3)
            .map(|n| append(&spool, &record(n)).expect("journaled"))
            .collect();
        assert_eq!(
            spans[2].start, spans[1].end,
            "offsets go on across segments"
        );
        assert_eq!(
            Spool::segments(dir.path()).expect("list"),
            [0, spans[2].start]
        );
        // Reading stops at a segment's end and continues in the next.
        let (a, end, _) = spool.read(0, 100).expect("read");
        assert_eq!((a.len(), end), (2, spans[2].start));
        let (b, end, _) = spool.read(end, 100).expect("read");
        assert_eq!((b.len(), end), (1, spans[2].end));
        // Flushing cuts the closed segment to its records.
        spool.flush().expect("flush");
        let first = dir.path().join(segment_name(0));
        assert_eq!(
            std::fs::metadata(&first).expect("first").len(),
            spans[2].start
        );
        spool.set_shipped(spans[2].start);
        assert_eq!(Spool::segments(dir.path()).expect("list"), [spans[2].start]);
    }

    #[test]
    fn a_full_disk_costs_the_journal_whole_records_only() {
        // The next segment cannot be made (here its path is taken; on a full disk, allocating its blocks
        // fails): once the current one is full, appends are not journaled, none is journaled in part,
        // and journaling resumes where it stopped once a segment can be made.
        let dir = tempfile::tempdir().expect("tempdir");
        let size = 2 * line_len(0) + 10;
        let (spool, _) = Spool::open_with(dir.path(), size).expect("open");
        std::fs::create_dir(dir.path().join(NEXT_FILE)).expect("block the next segment");
        assert!(spool.flush().is_err(), "the next segment cannot be made");
        let written: Vec<Record> = (0..5).map(record).collect();
        let first: Vec<Option<Span>> = written[..4].iter().map(|r| append(&spool, r)).collect();
        assert!(first[0].is_some() && first[1].is_some(), "{first:?}");
        assert_eq!(first[2..], [None, None], "no room, no half record");
        let full = spool.end();
        assert_eq!(full, first[1].expect("journaled").end);
        std::fs::remove_dir(dir.path().join(NEXT_FILE)).expect("free");
        spool.flush().expect("flush: the next segment is made");
        let resumed = append(&spool, &written[4]).expect("journaled again");
        assert_eq!(resumed.start, full, "offsets go on where they stopped");
        drop(spool);
        let (spool, opened) = Spool::open_with(dir.path(), size).expect("reopen");
        assert_eq!(opened.torn_bytes, 0);
        let (records, corrupt) = read_all(&spool, 0);
        assert_eq!(corrupt, 0);
        assert_eq!(
            records,
            [written[0].clone(), written[1].clone(), written[4].clone()]
        );
    }

    #[test]
    fn spool_files_are_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (spool, _) = Spool::open(&dir.path().join("spool")).expect("open");
        append(&spool, &record(0)).expect("journaled");
        spool.save_shipped().expect("save");
        spool.flush().expect("flush");
        let mode = |p: &Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
        let spool_dir = dir.path().join("spool");
        assert_eq!(mode(&spool_dir), 0o700);
        for file in [segment_name(0).as_str(), SHIPPED_FILE, NEXT_FILE] {
            assert_eq!(mode(&spool_dir.join(file)), 0o600, "{file}");
        }
    }

    #[test]
    fn the_earlier_spool_is_taken_over_with_its_replayed_offset() {
        let dir = tempfile::tempdir().expect("tempdir");
        let written: Vec<Record> = (0..3).map(record).collect();
        let lines: Vec<String> = written
            .iter()
            .map(|r| serde_json::to_string(r).expect("json") + "\n")
            .collect();
        std::fs::write(dir.path().join(LEGACY_SPOOL), lines.concat()).expect("write");
        std::fs::write(dir.path().join(LEGACY_OFFSET), lines[0].len().to_string()).expect("write");
        let (spool, _) = Spool::open(dir.path()).expect("open");
        let (records, _) = read_all(&spool, spool.shipped());
        assert_eq!(
            records,
            written[1..],
            "the replayed first record is not read again"
        );
        assert!(!dir.path().join(LEGACY_SPOOL).exists());
    }
}
