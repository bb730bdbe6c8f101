fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .without_time()
        .with_ansi(false)
        .init();
    let n: usize = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(3);
    let (t, trace) = std::thread::spawn(move || {
        simulations::seeded::seed_this_thread(7);
        eprintln!("seeded: {}", simulations::seeded::is_seeded());
        use std::hash::BuildHasher;
        eprintln!("hash: {}", std::collections::hash_map::RandomState::new().hash_one(1u32));
        simulations::join(n, 7)
    })
    .join()
    .expect("simulation thread")?;
    for l in trace {
        println!("{l}");
    }
    println!("converged in {t:?}");
    Ok(())
}
