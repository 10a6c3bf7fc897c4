//! `dnsward audit search --follow`: the search, then every matching record as the writer
//! appends it (as `tail -f` on the log, with the search's filters), until the process is
//! stopped or its output's reader has gone.
//!
//! The log is append-only: new records are new lines at the end of the newest segment, or a new
//! segment after it. The follower notes where the log ends before the search begins (the
//! newest segment, the byte after its last whole line, and that line's seq); the search prints
//! the matches up to that seq, and the follower every whole line after that byte as it
//! appears. A segment cut back after a failed write (the writer's recovery) is read on from
//! its new end; one replaced under the same name, from its start.

use std::{
    io::{Read, Seek, SeekFrom, Write},
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    time::Duration,
};

use super::{
    AuditError,
    query::{Filter, Hit, HitWriter, OutputFormat, search},
    segment::{self, Header, LinkView, Record},
};

/// How often the newest segment is looked at when nothing new was found.
const POLL: Duration = Duration::from_millis(200);

/// The end of the newest segment is found within this many bytes of its end (the writer writes
/// whole lines; a longer torn tail is a crash's, and is skipped like one).
const TAIL_WINDOW: u64 = 256 * 1024;

/// A segment header line is shorter than this.
const HEADER_MAX: usize = 4096;

/// Most bytes read from a segment at a time, so a follower that fell behind (a slow pipe)
/// does not hold a whole segment in memory.
const READ_CHUNK: u64 = 4 << 20;

/// Runs the search, then follows the log forever, writing each match to `out` (flushed per
/// batch). Returns when `out_closed` says the output's reader has gone (checked every `POLL`,
/// as `tail -f` does: a filter that matches nothing more would otherwise never find out), or
/// on an error (the output failed, the log unreadable). `note` gets what the reader should
/// know beside the matches: records that went before they could be read (retention removed
/// segments while the follower was behind), which would otherwise pass unseen.
pub fn follow(
    dir: &Path,
    filter: &Filter,
    format: OutputFormat,
    out: &mut dyn Write,
    out_closed: &dyn Fn() -> bool,
    note: &mut dyn FnMut(&str),
) -> Result<(), AuditError> {
    let (mut tail, end_seq) = Tail::at_end(dir)?;
    let mut writer = HitWriter::new(format).following();
    writer.write(
        search(dir, filter)?
            .filter(|hit| hit.as_ref().map_or(true, |hit| hit.record.seq <= end_seq)),
        out,
    )?;
    out.flush().map_err(AuditError::Output)?;
    let mut next_check = std::time::Instant::now();
    loop {
        // Busy or idle: a filter that matches nothing writes nothing, and would never find out
        // from a failed write.
        if std::time::Instant::now() >= next_check {
            if out_closed() {
                return Ok(());
            }
            next_check = std::time::Instant::now() + POLL;
        }
        let lines = tail.read_new()?;
        if let Some((first, last)) = tail.skipped.take() {
            note(&format!(
                "records {first} to {last} were removed (by retention) before they could be \
                 read; matches among them are not shown"
            ));
        }
        if !lines.is_empty() {
            write_matches(lines, filter, &mut writer, out)?;
            continue;
        }
        let Some(later) = tail.later_segment(dir)? else {
            std::thread::sleep(POLL);
            continue;
        };
        tail.finish_and_move(later, |rest| write_matches(rest, filter, &mut writer, out))?;
    }
}

/// Writes the lines that match `filter`, and flushes if there were any.
fn write_matches(
    lines: Vec<Vec<u8>>,
    filter: &Filter,
    writer: &mut HitWriter,
    out: &mut dyn Write,
) -> Result<(), AuditError> {
    let hits: Vec<_> = lines
        .into_iter()
        // A line that does not parse is `verify`'s business, as in `search`.
        .filter_map(|line| Some((Record::parse(&line).ok()?, line)))
        .filter(|(record, _)| filter.matches(record))
        .map(|(record, line)| Ok(Hit { line, record }))
        .collect();
    if !hits.is_empty() {
        writer.write(hits.into_iter(), out)?;
        out.flush().map_err(AuditError::Output)?;
    }
    Ok(())
}

/// A read position in one segment: the byte after the last whole line read.
struct Tail {
    path: PathBuf,
    offset: u64,
    /// The segment's header line (with its newline), once read: a segment replaced under the
    /// same name (the writer's recovery removes an emptied one and starts it again; the file
    /// may even get the same inode) has another header, and is read from its start.
    header: Vec<u8>,
    /// The seq after the last record read, when known.
    next_seq: Option<u64>,
    /// Seqs that a segment read from its start began after (`next_seq` to its first seq - 1),
    /// until reported: records that were gone before they could be read.
    skipped: Option<(u64, u64)>,
}

impl Tail {
    /// After the last whole line of the newest segment, with that line's seq (the header's
    /// `first_seq - 1` when the segment has no record yet).
    fn at_end(dir: &Path) -> Result<(Self, u64), AuditError> {
        let segments = segment::existing_segments(dir)?;
        // `existing_segments` refuses an empty directory, so there is a last one.
        let path = segments
            .last()
            .map(|segment| segment.path.clone())
            .unwrap_or_default();
        let mut file = std::fs::File::open(&path).map_err(AuditError::io(&path))?;
        let metadata = file.metadata().map_err(AuditError::io(&path))?;
        let from = metadata.len().saturating_sub(TAIL_WINDOW);
        file.seek(SeekFrom::Start(from))
            .map_err(AuditError::io(&path))?;
        let mut window = Vec::new();
        file.read_to_end(&mut window)
            .map_err(AuditError::io(&path))?;
        let whole = window
            .iter()
            .rposition(|&byte| byte == b'\n')
            .map_or(0, |at| at + 1);
        let last_line = window[..whole.saturating_sub(1)]
            .rsplit(|&byte| byte == b'\n')
            .next()
            .unwrap_or_default();
        // Unknown (no whole line in the window): the search prints everything, the follower
        // what comes after; a record written meanwhile may then show twice, none is missed.
        let end_seq = Record::parse(last_line)
            .map(|record| record.seq)
            .ok()
            .or_else(|| Header::parse(last_line).map(|header| header.first_seq.saturating_sub(1)))
            .unwrap_or(u64::MAX);
        let mut tail = Self {
            path,
            offset: from + whole as u64,
            header: Vec::new(),
            next_seq: end_seq.checked_add(1),
            skipped: None,
        };
        tail.header = tail.read_header(&file);
        Ok((tail, end_seq))
    }

    /// The whole record lines written since the last call (none while a line is still torn),
    /// at most `READ_CHUNK` bytes of them. A segment that retention removed meanwhile has
    /// nothing more.
    fn read_new(&mut self) -> Result<Vec<Vec<u8>>, AuditError> {
        let mut file = match std::fs::File::open(&self.path) {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(AuditError::io(&self.path)(error)),
        };
        let metadata = file.metadata().map_err(AuditError::io(&self.path))?;
        if self.offset > 0 && self.read_header(&file) != self.header {
            self.offset = 0;
        } else if metadata.len() < self.offset {
            // Cut back to its last complete write after a failed one: the lines past that
            // were withdrawn, and the log goes on in a new segment.
            self.offset = metadata.len();
        }
        file.seek(SeekFrom::Start(self.offset))
            .map_err(AuditError::io(&self.path))?;
        let mut data = Vec::new();
        file.take(READ_CHUNK)
            .read_to_end(&mut data)
            .map_err(AuditError::io(&self.path))?;
        let Some(end) = data.iter().rposition(|&byte| byte == b'\n') else {
            return Ok(Vec::new());
        };
        let at_start = self.offset == 0;
        self.offset += end as u64 + 1;
        if at_start {
            self.header =
                data[..data.iter().position(|&byte| byte == b'\n').unwrap_or(end) + 1].to_vec();
            let first_seq = Header::parse(self.header.trim_ascii_end()).map(|h| h.first_seq);
            // A later start than expected: what came between is gone. An earlier one is the
            // writer's recovery reusing the seqs of lines it withdrew, not a loss.
            if let (Some(expected), Some(first)) = (self.next_seq, first_seq)
                && first > expected
            {
                // Two such starts before a report: one range, from the first gap's start.
                let from = self.skipped.map_or(expected, |(from, _)| from);
                self.skipped = Some((from, first - 1));
            }
            if first_seq.is_some() {
                // From the header on, not only from a record line that may not come.
                self.next_seq = first_seq;
            }
        }
        let lines: Vec<Vec<u8>> = data[..end]
            .split(|&byte| byte == b'\n')
            // A segment's first line is its header, not a record.
            .skip(usize::from(at_start))
            .filter(|line| !line.is_empty())
            .map(<[u8]>::to_vec)
            .collect();
        // The last line that parses: one that does not (`verify`'s business) must not leave
        // an older seq here, which a later segment would take for a gap.
        if let Some(seq) = lines
            .iter()
            .rev()
            .find_map(|line| LinkView::parse(line))
            .and_then(|link| link.seq.checked_add(1))
        {
            self.next_seq = Some(seq);
        }
        Ok(lines)
    }

    /// The segment after this one, if the writer has started it.
    fn later_segment(&self, dir: &Path) -> Result<Option<PathBuf>, AuditError> {
        // Not `existing_segments`: during a restart's recovery the directory may be empty for
        // a moment, which is not the end of the log.
        Ok(segment::list_segments(dir)?
            .into_iter()
            .map(|segment| segment.path)
            .find(|path| *path > self.path))
    }

    /// There is a segment after this one, so this one was complete before the look: hands
    /// the rest of it to `take`, however many reads (of at most `READ_CHUNK`) that needs, then
    /// reads `later` from its start. (One read was not enough: a busy writer appends more than
    /// a chunk between a poll and the look at the directory.)
    fn finish_and_move(
        &mut self,
        later: PathBuf,
        mut take: impl FnMut(Vec<Vec<u8>>) -> Result<(), AuditError>,
    ) -> Result<(), AuditError> {
        loop {
            let rest = self.read_new()?;
            if rest.is_empty() {
                break;
            }
            take(rest)?;
        }
        self.move_to(later);
        Ok(())
    }

    /// Reads `path` from its start from now on.
    fn move_to(&mut self, path: PathBuf) {
        self.path = path;
        self.offset = 0;
        self.header.clear();
    }

    /// The first line of `file` with its newline (empty if it has no whole first line).
    fn read_header(&self, file: &std::fs::File) -> Vec<u8> {
        let mut start = vec![0u8; HEADER_MAX];
        let read = file.read_at(&mut start, 0).unwrap_or(0);
        start.truncate(read);
        match start.iter().position(|&byte| byte == b'\n') {
            Some(end) => {
                start.truncate(end + 1);
                start
            }
            None => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{Arc, Mutex},
        time::Instant,
    };

    use super::*;
    use crate::audit::{
        record::{Entry, QueryEntry, Timestamp},
        segment::{GENESIS, Hash, HeaderKind, encode_record, segment_name},
    };

    fn query(name: &str) -> Entry {
        Entry::Query(QueryEntry::sample(name))
    }

    /// A segment file: header, then the named records from `first_seq` on.
    fn segment(first_seq: u64, prev: &mut Hash, entries: &[Entry]) -> Vec<u8> {
        let mut bytes = Vec::new();
        Header::new(HeaderKind::Segment, first_seq, prev, "i1")
            .encode(&mut bytes)
            .unwrap();
        for (seq, entry) in (first_seq..).zip(entries) {
            *prev = encode_record(&mut bytes, seq, prev, Timestamp::now(), "i1", entry).unwrap();
        }
        bytes
    }

    /// What a follower thread printed, shared with the test.
    #[derive(Clone, Default)]
    struct Printed(Arc<Mutex<Vec<u8>>>);

    impl Write for Printed {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Printed {
        fn names(&self) -> Vec<String> {
            String::from_utf8(self.0.lock().unwrap().clone())
                .unwrap()
                .lines()
                .map(|line| {
                    let record: serde_json::Value = serde_json::from_str(line).unwrap();
                    record["qname"].as_str().unwrap().to_owned()
                })
                .collect()
        }

        /// Waits until the follower has printed exactly `names`.
        fn wait_for(&self, names: &[&str]) {
            let deadline = Instant::now() + Duration::from_secs(10);
            while self.names() != names {
                assert!(Instant::now() < deadline, "printed {:?}", self.names());
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    fn start(dir: &Path) -> Printed {
        start_with_notes(dir).0
    }

    /// Also returns the follower's notes.
    fn start_with_notes(dir: &Path) -> (Printed, Arc<Mutex<Vec<String>>>) {
        let printed = Printed::default();
        let notes = Arc::new(Mutex::new(Vec::new()));
        let mut out = printed.clone();
        let dir = dir.to_owned();
        let noted = notes.clone();
        std::thread::spawn(move || {
            follow(
                &dir,
                &Filter::default(),
                OutputFormat::Jsonl,
                &mut out,
                &|| false,
                &mut |text| noted.lock().unwrap().push(text.to_owned()),
            )
        });
        (printed, notes)
    }

    /// Retention removed segments the follower had not read yet (it was behind): the records
    /// it missed are named in a note, not passed over in silence. Seqs a new segment reuses
    /// after the writer's recovery are no loss, and get none (`a_cut_back_segment_…`).
    #[test]
    fn records_removed_before_they_were_read_are_noted() {
        let dir = tempfile::tempdir().unwrap();
        let mut head = GENESIS;
        let first = segment(1, &mut head, &[query("a."), query("b.")]);
        std::fs::write(dir.path().join(segment_name(1)), first).unwrap();
        let (printed, notes) = start_with_notes(dir.path());
        printed.wait_for(&["a.", "b."]);
        // Seqs 3 and 4 were in a segment that came and went between two looks (the follower
        // does not check links, so `head` need not be theirs).
        std::fs::write(
            dir.path().join(segment_name(5)),
            segment(5, &mut head, &[query("e.")]),
        )
        .unwrap();
        printed.wait_for(&["a.", "b.", "e."]);
        let notes = notes.lock().unwrap().clone();
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(
            notes[0].starts_with("records 3 to 4 were removed"),
            "{notes:?}"
        );
    }

    fn append(path: &Path, bytes: &[u8]) {
        std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .unwrap()
            .write_all(bytes)
            .unwrap();
    }

    /// A failed write leaves whole lines that the writer then cuts off (`set_len`); the log
    /// goes on in a new segment that reuses their seqs. The new records are printed too.
    #[test]
    fn a_cut_back_segment_and_reused_seqs() {
        let dir = tempfile::tempdir().unwrap();
        let first = dir.path().join(segment_name(1));
        let mut head = GENESIS;
        let bytes = segment(1, &mut head, &[query("a."), query("b.")]);
        std::fs::write(&first, &bytes).unwrap();
        let (printed, notes) = start_with_notes(dir.path());
        printed.wait_for(&["a.", "b."]);
        let kept = head;
        let mut lost = Vec::new();
        for (seq, name) in [(3, "lost3."), (4, "lost4.")] {
            head =
                encode_record(&mut lost, seq, &head, Timestamp::now(), "i1", &query(name)).unwrap();
        }
        lost.extend_from_slice(b"{\"seq\":5,\"ti");
        append(&first, &lost);
        printed.wait_for(&["a.", "b.", "lost3.", "lost4."]);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&first)
            .unwrap()
            .set_len(bytes.len() as u64)
            .unwrap();
        let mut head = kept;
        let next = segment(
            3,
            &mut head,
            &[query("new3."), query("new4."), query("new5.")],
        );
        std::fs::write(dir.path().join(segment_name(3)), next).unwrap();
        printed.wait_for(&["a.", "b.", "lost3.", "lost4.", "new3.", "new4.", "new5."]);
        assert!(notes.lock().unwrap().is_empty(), "reused seqs are no loss");
    }

    /// More than a read's worth appended between a poll and the look at the directory, then a
    /// new segment: all of the old one's rest is read before moving on.
    #[test]
    fn the_rest_of_a_segment_is_read_whole_before_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let first = dir.path().join(segment_name(1));
        let mut head = GENESIS;
        std::fs::write(&first, segment(1, &mut head, &[query("a.")])).unwrap();
        let (mut tail, end_seq) = Tail::at_end(dir.path()).unwrap();
        assert_eq!(end_seq, 1);
        assert!(tail.read_new().unwrap().is_empty());

        let mut more = Vec::new();
        let count = 30_000;
        for seq in 2..2 + count {
            head =
                encode_record(&mut more, seq, &head, Timestamp::now(), "i1", &query("b.")).unwrap();
        }
        assert!(more.len() as u64 > 2 * READ_CHUNK, "{} bytes", more.len());
        append(&first, &more);
        let second = dir.path().join(segment_name(2 + count));
        std::fs::write(&second, segment(2 + count, &mut head, &[query("c.")])).unwrap();

        let later = tail.later_segment(dir.path()).unwrap().unwrap();
        assert_eq!(later, second);
        let mut read = 0;
        tail.finish_and_move(later, |lines| {
            read += lines.len() as u64;
            Ok(())
        })
        .unwrap();
        assert_eq!(read, count, "every record of the first segment's rest");
        assert_eq!(tail.read_new().unwrap().len(), 1, "then the next segment");
    }

    /// A line that does not parse (damage is `verify`'s business) after the last record read:
    /// the next segment, which starts right after that record, is no gap.
    #[test]
    fn a_damaged_last_line_is_no_gap() {
        let dir = tempfile::tempdir().unwrap();
        let first = dir.path().join(segment_name(1));
        let mut head = GENESIS;
        std::fs::write(&first, segment(1, &mut head, &[query("a.")])).unwrap();
        let (printed, notes) = start_with_notes(dir.path());
        printed.wait_for(&["a."]);
        let mut more = Vec::new();
        head = encode_record(&mut more, 2, &head, Timestamp::now(), "i1", &query("b.")).unwrap();
        more.extend_from_slice(b"{damaged\n");
        append(&first, &more);
        printed.wait_for(&["a.", "b."]);
        std::fs::write(
            dir.path().join(segment_name(3)),
            segment(3, &mut head, &[query("c.")]),
        )
        .unwrap();
        printed.wait_for(&["a.", "b.", "c."]);
        assert!(
            notes.lock().unwrap().is_empty(),
            "{:?}",
            notes.lock().unwrap()
        );
    }

    /// A new segment whose first write fails is emptied, removed and started again under the
    /// same name: the follower reads the new file from its start.
    #[test]
    fn a_segment_started_again_under_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let mut head = GENESIS;
        let bytes = segment(1, &mut head, &[query("a."), query("b.")]);
        std::fs::write(dir.path().join(segment_name(1)), bytes).unwrap();
        let printed = start(dir.path());
        printed.wait_for(&["a.", "b."]);
        let kept = head;
        let again = dir.path().join(segment_name(3));
        std::fs::write(
            &again,
            segment(3, &mut head, &[query("lost3."), query("lost4.")]),
        )
        .unwrap();
        printed.wait_for(&["a.", "b.", "lost3.", "lost4."]);
        std::fs::remove_file(&again).unwrap();
        let mut head = kept;
        let gap = Entry::Gap {
            dropped: 2,
            first: Timestamp::now(),
            last: Timestamp::now(),
        };
        std::fs::write(
            &again,
            segment(3, &mut head, &[gap, query("new4."), query("new5.")]),
        )
        .unwrap();
        printed.wait_for(&["a.", "b.", "lost3.", "lost4.", "new4.", "new5."]);
    }
}
