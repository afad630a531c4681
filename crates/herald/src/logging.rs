//! The log's destination: stderr, through a writer that never fails its caller.
//!
//! Logging must not be able to take the server down. `eprintln!` panics when stderr
//! cannot be written (a closed pipe after the log shipper died, a full disk under a
//! redirected log), and so does `tracing-subscriber`'s fmt layer, which reports its
//! own write errors with `eprintln!`. A panic there kills the request (its connection
//! closes with nothing written), the shutdown (exit 101) or the store's writer thread,
//! while the probes stay green. So every line the server logs goes through
//! [`StderrLog`]: a failed write is counted (`herald_log_write_errors_total`, read by
//! [`write_errors`]) and otherwise dropped, as Go's `log` and nginx do. The writer
//! still blocks while a pipe reader is merely slow, like every stderr logger.
//!
//! One counter for the whole process, because there is one stderr per process.
//!
//! The per-request access log has a writer of its own ([`access`]): batched, off the
//! request path.

pub mod access;

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};

/// Log lines (events) that could not be written, since start.
static WRITE_ERRORS: AtomicU64 = AtomicU64::new(0);

/// How many log lines could not be written to stderr since the process started.
pub fn write_errors() -> u64 {
    WRITE_ERRORS.load(Ordering::Relaxed)
}

/// A `tracing_subscriber` writer factory for stderr that never reports an error.
#[derive(Debug, Clone, Copy, Default)]
pub struct StderrLog;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for StderrLog {
    type Writer = StderrLine;

    fn make_writer(&'a self) -> Self::Writer {
        StderrLine
    }
}

/// One event's output: the fmt layer hands it the whole formatted line in one
/// `write_all`, so one failed write is one lost line.
#[derive(Debug)]
pub struct StderrLine;

impl Write for StderrLine {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        write_or_count(&mut io::stderr().lock(), buf);
        // Claims the whole buffer either way: the caller must not retry or fail.
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        // Stderr is unbuffered; a failure here would already have been counted.
        Ok(())
    }
}

/// Writes `line` plus a newline to stderr, counting a failure instead of panicking:
/// for the few messages written outside the log (the last error before exiting).
pub fn write_line(line: &str) {
    let mut text = String::with_capacity(line.len() + 1);
    text.push_str(line);
    text.push('\n');
    write_or_count(&mut io::stderr().lock(), text.as_bytes());
}

fn write_or_count(out: &mut impl Write, buf: &[u8]) {
    write_lines_or_count(out, buf, 1);
}

/// Writes `buf`, which holds `lines` log lines; a failure counts each as lost.
fn write_lines_or_count(out: &mut impl Write, buf: &[u8], lines: u64) {
    if out.write_all(buf).is_err() {
        WRITE_ERRORS.fetch_add(lines, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A destination that always fails, like a pipe whose reader is gone.
    struct Broken;

    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_failed_write_is_counted_not_raised() {
        let before = write_errors();
        write_or_count(&mut Broken, b"lost line\n");
        write_or_count(&mut Vec::new(), b"kept line\n");
        assert_eq!(write_errors(), before + 1);
    }
}
