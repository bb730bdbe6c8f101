//! Fixture: every log line of a test binary, at every level, kept in memory so a test can
//! search them (a secret that must never be logged, a refusal that must name its reason).
//!
//! [`capture`] installs the process-wide subscriber once; a binary that uses it must not
//! install another (`init_tracing` of the common fixture does nothing after it).
#![allow(dead_code)]

use std::{
    io,
    sync::{Mutex, OnceLock},
};

static LINES: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct Sink;

impl io::Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        LINES
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Keep every event of every crate, TRACE included, from now on (idempotent).
pub fn capture() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(|| Sink)
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("no other subscriber");
    });
}

/// Everything logged since [`capture`], as text.
pub fn text() -> String {
    String::from_utf8_lossy(&LINES.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
}

/// The logged lines that contain `needle`.
pub fn lines_with(needle: &str) -> Vec<String> {
    text()
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_owned)
        .collect()
}
