//! What Linux says of this process, for tests that print memory figures.

/// A field of this process's `/proc/self/status` given in KiB (`VmRSS`, `VmHWM`), in
/// bytes; 0 where there is none.
pub(crate) fn status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}
