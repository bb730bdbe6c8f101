//! Many-node socketioxide-cluster scenarios under faults.
//!
//! Deterministic mode runs every node — gossip, QUIC mesh and adapter — on turmoil's
//! simulated network and clock, with every random choice drawn from the run's seed, so a
//! run is a function of its seed and a failing one replays exactly.

pub mod node;
pub mod real;
pub mod report;
pub mod scenarios;
pub mod seeded;
pub mod sim_net;
pub mod world;

/// Run `f` on a fresh thread whose randomness follows `seed` (a new thread, so that no
/// random state left by earlier work on this one leaks into the run).
pub fn run_seeded<T: Send + 'static>(
    seed: u64,
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    // One simulation at a time per process: two running side by side on a loaded machine
    // have been seen to make one of them differ from its replay, so runs that are compared
    // must not overlap.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _running = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    std::thread::Builder::new()
        .name(format!("simulation-{seed}"))
        .spawn(move || {
            seeded::seed_this_thread(seed);
            anyhow::ensure!(
                seeded::is_seeded(),
                "getrandom is not this binary's: runs would not repeat (is build.rs linked?)"
            );
            f()
        })?
        .join()
        .map_err(|_| anyhow::anyhow!("the simulation panicked"))?
}
