//! `dnsward audit search --follow`: the search, then every matching record as the writer
//! appends it (as `tail -f` on the log, with the search's filters), until the process is
//! stopped.
//!
//! The log is append-only: new records are new lines at the end of the newest segment, or a new
//! segment after it. The follower remembers where the log ended before the search began, and
//! from there reads whole lines as they appear; a record the search already printed (written
//! while it ran) is recognised by its sequence number and not printed twice.

use std::{
    io::{Read, Seek, SeekFrom, Write},
    path::{Path, PathBuf},
    time::Duration,
};

use super::{
    AuditError,
    query::{Filter, Hit, HitWriter, OutputFormat, search},
    segment::{self, Record},
};

/// How often the newest segment is looked at when nothing new was found.
const POLL: Duration = Duration::from_millis(200);

/// The end of the newest segment is found within this many bytes of its end (the writer writes
/// whole lines; a longer torn tail is a crash's, and is skipped like one).
const TAIL_WINDOW: u64 = 256 * 1024;

/// Runs the search, then follows the log forever, writing each match to `out` (flushed per
/// batch). Returns only on an error (the output closed, the log unreadable).
pub fn follow(
    dir: &Path,
    filter: &Filter,
    format: OutputFormat,
    out: &mut dyn Write,
) -> Result<(), AuditError> {
    // Before the search: records written while it runs are read again, and recognised.
    let mut tail = Tail::at_end(dir)?;
    let mut writer = HitWriter::new(format);
    let mut last_seq = 0;
    writer.write(
        search(dir, filter)?.inspect(|hit| {
            if let Ok(hit) = hit {
                last_seq = last_seq.max(hit.record.seq);
            }
        }),
        out,
    )?;
    out.flush().map_err(AuditError::Output)?;
    loop {
        // Looked for before reading: a segment after this one means this one was complete
        // before the read, so the read below takes the rest of it.
        let later = tail.later_segment(dir)?;
        let lines = tail.read_new()?;
        let found = !lines.is_empty();
        let mut hits = Vec::new();
        for line in lines {
            // A line that does not parse is `verify`'s business, as in `search`.
            let Ok(record) = Record::parse(&line) else {
                continue;
            };
            if record.seq <= last_seq {
                continue;
            }
            last_seq = record.seq;
            if filter.matches(&record) {
                hits.push(Ok(Hit { line, record }));
            }
        }
        if !hits.is_empty() {
            writer.write(hits.into_iter(), out)?;
            out.flush().map_err(AuditError::Output)?;
        }
        match later {
            Some(path) => tail.move_to(path),
            None if !found => std::thread::sleep(POLL),
            None => {}
        }
    }
}

/// A read position in one segment: the byte after the last whole line read.
struct Tail {
    path: PathBuf,
    offset: u64,
}

impl Tail {
    /// After the last whole line of the newest segment.
    fn at_end(dir: &Path) -> Result<Self, AuditError> {
        let segments = segment::existing_segments(dir)?;
        // `existing_segments` refuses an empty directory, so there is a last one.
        let path = segments
            .last()
            .map(|segment| segment.path.clone())
            .unwrap_or_default();
        let mut file = std::fs::File::open(&path).map_err(AuditError::io(&path))?;
        let length = file.metadata().map_err(AuditError::io(&path))?.len();
        let from = length.saturating_sub(TAIL_WINDOW);
        file.seek(SeekFrom::Start(from))
            .map_err(AuditError::io(&path))?;
        let mut window = Vec::new();
        file.read_to_end(&mut window)
            .map_err(AuditError::io(&path))?;
        let whole = window
            .iter()
            .rposition(|&byte| byte == b'\n')
            .map_or(0, |at| at as u64 + 1);
        Ok(Self {
            path,
            offset: from + whole,
        })
    }

    /// The whole record lines written since the last call (none while a line is still torn).
    /// A segment that retention removed meanwhile has nothing more.
    fn read_new(&mut self) -> Result<Vec<Vec<u8>>, AuditError> {
        let mut file = match std::fs::File::open(&self.path) {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(AuditError::io(&self.path)(error)),
        };
        file.seek(SeekFrom::Start(self.offset))
            .map_err(AuditError::io(&self.path))?;
        let mut data = Vec::new();
        file.read_to_end(&mut data)
            .map_err(AuditError::io(&self.path))?;
        let Some(end) = data.iter().rposition(|&byte| byte == b'\n') else {
            return Ok(Vec::new());
        };
        let at_start = self.offset == 0;
        self.offset += end as u64 + 1;
        Ok(data[..end]
            .split(|&byte| byte == b'\n')
            // A segment's first line is its header, not a record.
            .skip(usize::from(at_start))
            .filter(|line| !line.is_empty())
            .map(<[u8]>::to_vec)
            .collect())
    }

    /// The segment after this one, if the writer has started it.
    fn later_segment(&self, dir: &Path) -> Result<Option<PathBuf>, AuditError> {
        Ok(segment::existing_segments(dir)?
            .into_iter()
            .map(|segment| segment.path)
            .find(|path| *path > self.path))
    }

    /// Reads `path` from its start from now on.
    fn move_to(&mut self, path: PathBuf) {
        self.path = path;
        self.offset = 0;
    }
}
