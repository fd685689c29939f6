//! `cargo bench`: the training step (batch 64) and inference (batch 256),
//! profiled kernel by kernel, on the adapter wgfer picks.
//! The same figures as `wgfer bench`; BENCH_REPS sets the repetitions.

fn main() -> anyhow::Result<()> {
    let reps = std::env::var("BENCH_REPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let gpu = wgfer::engine::Gpu::new(None)?;
    wgfer::fer::bench::run(
        &gpu,
        wgfer::fer::model::ArchKind::Tutorial,
        64,
        256,
        reps,
        true,
    )?;
    Ok(())
}
