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
/// random state left by earlier work on this one leaks into the run). tokio must be built
/// with `--cfg tokio_unstable`: only then does turmoil seed each host's runtime, whose
/// generator picks the first branch `tokio::select!` polls.
pub fn run_seeded<T: Send + 'static>(
    seed: u64,
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    std::thread::Builder::new()
        .name(format!("simulation-{seed}"))
        .spawn(move || {
            seeded::seed_this_thread(seed);
            anyhow::ensure!(
                seeded::is_seeded(),
                "getrandom is not this binary's: runs would not repeat (is build.rs linked?)"
            );
            anyhow::ensure!(
                cfg!(tokio_unstable),
                "built without `--cfg tokio_unstable` (.cargo/config.toml; RUSTFLAGS in the \
                 environment replaces it): each runtime's scheduler would draw its randomness \
                 from a process-wide counter, not from the seed, and runs would not repeat"
            );
            f()
        })?
        .join()
        .map_err(|_| anyhow::anyhow!("the simulation panicked"))?
}
