//! `cargo bench`: every kernel at the tutorial ResNet's shapes (batch 64),
//! the training step and inference (batch 256), on the adapter wgfer picks.
//! The same figures as `wgfer bench`; BENCH_REPS sets the repetitions.

fn main() -> anyhow::Result<()> {
    let reps = std::env::var("BENCH_REPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let gpu = wgfer::engine::Gpu::new(None)?;
    wgfer::fer::bench::run(&gpu, 64, 256, reps, true)?;
    Ok(())
}
