//! `wgfer info`: the adapters wgpu finds and the limits wgfer respects.

use std::process::ExitCode;

use anyhow::Result;

use wgfer::engine::{Gpu, Kernels, gpu};

/// List the GPU adapters wgpu finds, and which one wgfer would use.
#[derive(clap::Args)]
pub struct Args {}

pub fn run(_: Args) -> Result<ExitCode> {
    for line in gpu::describe_adapters() {
        println!("{line}");
    }
    let gpu = Gpu::new(None)?;
    let l = gpu.limits();
    let subgroups = match gpu.subgroup_sizes() {
        Some((min, max)) if min == max => format!("{min} lanes"),
        Some((min, max)) => format!("{min}-{max} lanes"),
        None => "none".to_string(),
    };
    let kernels = match gpu.kernels() {
        Kernels::Fastest => "fastest",
        Kernels::Portable => "portable (WGFER_KERNELS)",
    };
    println!(
        "wgfer uses: {}\n  max_storage_buffer_binding_size {} MiB, max_buffer_size {} MiB, \
         max_compute_workgroups_per_dimension {}, timestamp queries {}\n  subgroups {subgroups}, kernels {kernels}",
        gpu.adapter(),
        l.max_storage_buffer_binding_size >> 20,
        l.max_buffer_size >> 20,
        l.max_compute_workgroups_per_dimension,
        if gpu.has_timestamps() { "yes" } else { "no" }
    );
    Ok(ExitCode::SUCCESS)
}
