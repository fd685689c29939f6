//! Where the GPU's time goes: every dispatch between `Gpu::start_profile` and
//! `Gpu::finish_profile` writes a timestamp at its start and end (timestamp
//! queries), labelled with the scope the caller set (`Gpu::set_scope`: a
//! layer's name and `forward` / `backward` / `step`) and the kernel's name.
//! Profiling observes the real work as it runs; nothing is re-enacted.

use std::sync::Arc;

use anyhow::{Result, anyhow};

/// A profiled dispatch: who asked for it, which kernel ran, for how long.
#[derive(Clone, Debug)]
pub struct DispatchTime {
    /// The scope's label, e.g. `conv2d res_2_conv_b`.
    pub label: Arc<str>,
    /// The scope's pass: `forward`, `backward`, `step`, ...
    pub pass: &'static str,
    /// The kernel's shader and entry point, e.g. `gemm_sg8::main`.
    pub kernel: String,
    /// Floating-point operations, where the op said (matrix products do).
    pub flops: Option<f64>,
    /// GPU time from the pass's start to its end timestamp.
    pub ms: f64,
}

/// Two timestamps per dispatch; wgpu allows this many queries in one set.
const MAX_QUERIES: u32 = wgpu::QUERY_SET_MAX_QUERIES;

struct Pending {
    label: Arc<str>,
    pass: &'static str,
    kernel: String,
    flops: Option<f64>,
}

pub(crate) struct Profiler {
    query_set: wgpu::QuerySet,
    pending: Vec<Pending>,
    /// Dispatches past the query set's capacity: run, but not timed.
    untimed: usize,
}

impl Profiler {
    pub(crate) fn new(device: &wgpu::Device) -> Profiler {
        Profiler {
            query_set: device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("profile"),
                ty: wgpu::QueryType::Timestamp,
                count: MAX_QUERIES,
            }),
            pending: vec![],
            untimed: 0,
        }
    }

    /// The timestamp writes for the next dispatch (None once the set is full).
    pub(crate) fn next(
        &mut self,
        scope: (Arc<str>, &'static str),
        kernel: &str,
        flops: Option<f64>,
    ) -> Option<wgpu::ComputePassTimestampWrites<'_>> {
        let index = 2 * self.pending.len() as u32;
        if index + 2 > MAX_QUERIES {
            self.untimed += 1;
            return None;
        }
        // `gemm_sg8::main[("FLAGS", 2.0)]` → `gemm_sg8::main`.
        let kernel = kernel.split('[').next().unwrap_or(kernel).to_string();
        self.pending.push(Pending {
            label: scope.0,
            pass: scope.1,
            kernel,
            flops,
        });
        Some(wgpu::ComputePassTimestampWrites {
            query_set: &self.query_set,
            beginning_of_pass_write_index: Some(index),
            end_of_pass_write_index: Some(index + 1),
        })
    }

    /// Resolve the timestamps (encoded into `encoder`) and, once the caller
    /// has submitted and waited, turn them into times with `read`.
    pub(crate) fn finish(
        self,
        device: &wgpu::Device,
        encoder: &mut wgpu::CommandEncoder,
    ) -> Result<Resolved> {
        if self.untimed > 0 {
            return Err(anyhow!(
                "the profiled work had {} dispatches; at most {} can be timed at once",
                self.pending.len() + self.untimed,
                MAX_QUERIES / 2
            ));
        }
        let count = 2 * self.pending.len() as u32;
        let bytes = (count.max(2) as u64) * 8;
        let resolve = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("profile resolve"),
            size: bytes,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let readback = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("profile read-back"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        if count > 0 {
            encoder.resolve_query_set(&self.query_set, 0..count, &resolve, 0);
            encoder.copy_buffer_to_buffer(&resolve, 0, &readback, 0, bytes);
        }
        Ok(Resolved {
            readback,
            pending: self.pending,
        })
    }
}

/// Timestamps on their way back to the host.
pub(crate) struct Resolved {
    pub(crate) readback: wgpu::Buffer,
    pending: Vec<Pending>,
}

impl Resolved {
    /// The dispatch times, given the mapped timestamps and the queue's period
    /// (nanoseconds per tick).
    pub(crate) fn times(self, ticks: &[u64], period_ns: f64) -> Vec<DispatchTime> {
        self.pending
            .into_iter()
            .zip(ticks.chunks_exact(2))
            .map(|(p, t)| DispatchTime {
                label: p.label,
                pass: p.pass,
                kernel: p.kernel,
                flops: p.flops,
                ms: t[1].saturating_sub(t[0]) as f64 * period_ns * 1e-6,
            })
            .collect()
    }
}
