//! Reading the files operators point dnsward at (configuration, lists, root hints, keys):
//! regular files only; and the lock files that keep a second process off a directory.
//!
//! A FIFO, a character device or a socket at such a path would block the read forever (a
//! FIFO's `open` waits for a writer): a reload would hang with the old state serving and every
//! later edit ignored, and `check` would never return. They are refused as what they are.

use std::{
    fs::File,
    io::{self, Read, Write as _},
    os::unix::fs::{FileTypeExt, OpenOptionsExt},
    path::Path,
};

/// The whole content of the regular file at `path` (symbolic links followed).
pub fn read_regular(path: &Path) -> io::Result<Vec<u8>> {
    // Non-blocking, so that opening a FIFO returns at once; checked on the open file, so that
    // a file swapped in after a check of the path cannot slip through.
    let mut file = File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let metadata = file.metadata()?;
    let kind = metadata.file_type();
    if !kind.is_file() {
        let what = if kind.is_dir() {
            "a directory"
        } else if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_socket() {
            "a socket"
        } else if kind.is_char_device() || kind.is_block_device() {
            "a device"
        } else {
            "not a regular file"
        };
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("is {what}, not a regular file"),
        ));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(metadata.len()).unwrap_or(0) + 1);
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Who holds a lock [`try_lock`] could not take.
#[derive(Debug)]
pub struct Held {
    /// `pid N` from the lock file, or the file's name when it names no pid.
    pub holder: String,
}

/// Takes an exclusive `flock` on `file` (the lock file at `path`) without waiting, and writes
/// our pid into it for the message a second process gets. The lock is the kernel's, so it
/// goes with the process (kill -9 included). `Ok(Err(Held))` when another process holds it.
pub fn try_lock(mut file: File, path: &Path) -> io::Result<Result<File, Held>> {
    // rustix, not `File::try_lock`: that needs Rust 1.89, above the crate's MSRV.
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            let holder = std::fs::read_to_string(path)
                .ok()
                .and_then(|text| text.trim().parse::<u32>().ok())
                .map_or_else(|| format!("lock file {name}"), |pid| format!("pid {pid}"));
            return Ok(Err(Held { holder }));
        }
        Err(error) => return Err(error.into()),
    }
    // Best effort: the pid only names the holder, and a full or read-only disk must not keep
    // the holder from running.
    let _ = file
        .set_len(0)
        .and_then(|()| writeln!(file, "{}", std::process::id()));
    Ok(Ok(file))
}

/// [`read_regular`] as UTF-8 text.
pub fn read_regular_text(path: &Path) -> io::Result<String> {
    String::from_utf8(read_regular(path)?)
        .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error.utf8_error()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fifo_or_directory_is_refused_at_once_and_a_file_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        rustix::fs::mkfifoat(rustix::fs::CWD, &fifo, rustix::fs::Mode::from(0o600)).unwrap();
        let error = read_regular(&fifo).unwrap_err();
        assert_eq!(error.to_string(), "is a FIFO, not a regular file");
        let error = read_regular(dir.path()).unwrap_err();
        assert_eq!(error.to_string(), "is a directory, not a regular file");
        let file = dir.path().join("list.txt");
        std::fs::write(&file, "example.com\n").unwrap();
        assert_eq!(read_regular(&file).unwrap(), b"example.com\n");
        assert_eq!(read_regular_text(&file).unwrap(), "example.com\n");
    }
}
