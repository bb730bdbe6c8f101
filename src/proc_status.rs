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

/// Run test `test` of this test binary again, alone, in a child process with `env` set
/// (`ignored` for a test marked `#[ignore]`): the child and the lines it prints, on a
/// channel read by a thread of their own. Only gossip's tests run a node in a child.
#[cfg(feature = "cluster-gossip")]
pub(crate) fn child_test(
    test: &str,
    env: &[(&str, &str)],
    ignored: bool,
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    use std::io::BufRead;
    let mut command = std::process::Command::new(std::env::current_exe().unwrap());
    if ignored {
        command.arg("--ignored");
    }
    let mut child = command
        .args(["--exact", "--nocapture", "--test-threads=1", test])
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (child, lines)
}
