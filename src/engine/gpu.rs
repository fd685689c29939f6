//! The GPU context: adapter choice, device, pipeline cache, buffer pool,
//! command recording and read-back.
//!
//! Every op encodes its dispatches into one pending command encoder; the
//! encoder is submitted only when the host needs a result (`read`), new data
//! (`write`) or an explicit `flush`. Pipelines, uniform buffers and bind groups
//! are created once and cached, and tensor buffers come from a pool, so a
//! steady-state training step allocates no GPU memory.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use anyhow::{Result, anyhow, bail};

use crate::engine::profile::{DispatchTime, Profiler};
use crate::engine::record::{Binding, Recording};
use crate::engine::tensor::{Storage, Tensor};

/// A WGSL source compiled into the binary.
#[derive(Clone, Copy, Debug)]
pub struct Shader {
    pub name: &'static str,
    pub source: &'static str,
}

/// A compiled compute pipeline. Binding 0 is always the uniform parameter
/// block; the tensors are bound at the slots `dispatch` names, which must be
/// exactly the bindings the entry point uses.
pub struct Kernel {
    pub name: String,
    /// What it was compiled from, for recordings.
    shader: Shader,
    entry: String,
    constants: Vec<(String, f64)>,
    id: u64,
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
}

/// How the adapter was chosen and what it is.
#[derive(Clone, Debug)]
pub struct AdapterSummary {
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    pub is_software: bool,
}

impl std::fmt::Display for AdapterSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}, {}", self.name, self.backend, self.device_type)?;
        if !self.driver.is_empty() {
            write!(f, ", {}", self.driver)?;
        }
        write!(f, ")")
    }
}

/// Which kernels to run where an op has more than one for the same work.
///
/// Some kernels rely on what only some adapters offer (the 8-lane gemm needs
/// subgroups exactly 8 lanes wide, as lavapipe's are); every other adapter
/// runs the portable ones. `Portable` runs those everywhere, so that the
/// kernels most GPUs run are tested on any machine. `Gpu::new` reads it from
/// `WGFER_KERNELS`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Kernels {
    /// The fastest kernels this adapter supports.
    #[default]
    Fastest,
    /// Only the kernels every adapter runs.
    Portable,
}

impl Kernels {
    /// The environment variable `Gpu::new` reads.
    pub const ENV: &'static str = "WGFER_KERNELS";

    /// A value of `WGFER_KERNELS`: unset or empty means `Fastest`.
    pub fn parse(value: Option<&str>) -> Result<Kernels> {
        match value.unwrap_or("") {
            "" | "fastest" => Ok(Kernels::Fastest),
            "portable" => Ok(Kernels::Portable),
            other => bail!(
                "{}={other} is not a kernel choice: use `portable` (only the kernels every GPU runs) \
                 or `fastest` (the default)",
                Kernels::ENV
            ),
        }
    }

    /// `WGFER_KERNELS` from the environment.
    pub fn from_env() -> Result<Kernels> {
        match std::env::var(Kernels::ENV) {
            Ok(v) => Kernels::parse(Some(&v)),
            Err(std::env::VarError::NotPresent) => Ok(Kernels::Fastest),
            Err(e) => bail!("{}: {e}", Kernels::ENV),
        }
    }
}

/// Counters that tests and benchmarks read to prove the hot loop is lean.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GpuStats {
    pub buffers_created: u64,
    pub bind_groups_created: u64,
    pub pipelines_created: u64,
    pub submits: u64,
    pub dispatches: u64,
}

/// Free buffers by size. The lowest id is handed out first, so which buffer a
/// tensor gets does not depend on the order tensors were dropped in: a
/// training loop then binds the same buffers every step and its bind groups
/// come from the cache.
#[derive(Default)]
pub(crate) struct Pool {
    free: HashMap<u64, BTreeMap<u64, wgpu::Buffer>>,
}

impl Pool {
    pub(crate) fn give_back(&mut self, bytes: u64, id: u64, buffer: wgpu::Buffer) {
        self.free.entry(bytes).or_default().insert(id, buffer);
    }

    fn take(&mut self, bytes: u64) -> Option<(u64, wgpu::Buffer)> {
        self.free.get_mut(&bytes)?.pop_first()
    }
}

#[derive(Clone)]
pub struct Gpu(Arc<Inner>);

struct Inner {
    device: wgpu::Device,
    queue: wgpu::Queue,
    summary: AdapterSummary,
    limits: wgpu::Limits,
    timestamps: bool,
    /// (min, max) subgroup size when the SUBGROUP feature is on.
    subgroup_sizes: Option<(u32, u32)>,
    kernel_choice: Kernels,
    /// Dispatches per shader name, so tests can tell which kernel ran.
    shader_dispatches: Mutex<HashMap<&'static str, u64>>,
    modules: Mutex<HashMap<&'static str, wgpu::ShaderModule>>,
    kernels: Mutex<HashMap<String, Arc<Kernel>>>,
    pool: Arc<Mutex<Pool>>,
    staging: Mutex<HashMap<u64, Vec<wgpu::Buffer>>>,
    uniforms: Mutex<HashMap<Vec<u8>, (u64, wgpu::Buffer)>>,
    bind_groups: Mutex<HashMap<Vec<u64>, wgpu::BindGroup>>,
    encoder: Mutex<Option<wgpu::CommandEncoder>>,
    nan_source: Mutex<Option<wgpu::Buffer>>,
    dummy: Mutex<Option<Tensor>>,
    sink: Mutex<Option<Tensor>>,
    error: Arc<Mutex<Option<String>>>,
    poison: AtomicBool,
    stats: Mutex<GpuStats>,
    /// The label and pass the next dispatches are profiled under.
    scope: Mutex<(Arc<str>, &'static str)>,
    /// Work the next dispatch does, as its op declared it (profiles only).
    flops_note: Mutex<Option<f64>>,
    profiler: Mutex<Option<Profiler>>,
    recording: Mutex<Option<Recording>>,
}

/// Bytes are rounded up to this so that any tensor can also be bound as
/// `array<vec4<f32>>` (a binding's size must cover whole elements).
const SIZE_ALIGN: u64 = 16;
/// Bind groups kept at most; the cache is cleared past this (it only grows if
/// the program's buffer use is not periodic, which a training loop's is).
const MAX_BIND_GROUPS: usize = 16384;

fn device_type_name(t: wgpu::DeviceType) -> &'static str {
    match t {
        wgpu::DeviceType::DiscreteGpu => "discrete GPU",
        wgpu::DeviceType::IntegratedGpu => "integrated GPU",
        wgpu::DeviceType::VirtualGpu => "virtual GPU",
        wgpu::DeviceType::Cpu => "software (CPU)",
        wgpu::DeviceType::Other => "other",
    }
}

/// Hardware first; a software adapter (lavapipe) last.
fn preference(t: wgpu::DeviceType) -> u32 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    }
}

pub(crate) fn no_adapter_help() -> &'static str {
    "wgpu found no GPU adapter. On Linux without a GPU install a software Vulkan driver: \
     `sudo apt-get install -y mesa-vulkan-drivers` (Debian/Ubuntu), then check `vulkaninfo --summary` \
     lists llvmpipe. Otherwise install your GPU's Vulkan, Metal or DX12 driver."
}

/// One line per adapter wgpu finds (for `wgfer info`).
pub fn describe_adapters() -> Vec<String> {
    let backends = wgpu::Backends::from_env().unwrap_or(wgpu::Backends::PRIMARY);
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    desc.backends = backends;
    let instance = wgpu::Instance::new(desc);
    let adapters = pollster::block_on(instance.enumerate_adapters(backends));
    if adapters.is_empty() {
        return vec![no_adapter_help().to_string()];
    }
    adapters
        .iter()
        .map(|a| {
            let i = a.get_info();
            format!(
                "adapter: {} ({:?}, {}, {} {})",
                i.name,
                i.backend,
                device_type_name(i.device_type),
                i.driver,
                i.driver_info
            )
        })
        .collect()
}

impl Gpu {
    /// Pick an adapter and open a device with the adapter's own limits.
    ///
    /// `adapter_name`: a case-insensitive substring of the adapter's name; when
    /// `None`, the `WGPU_ADAPTER_NAME` environment variable is used if set.
    /// `WGPU_BACKEND` (e.g. `vulkan`, `metal`, `dx12`, `gl`) limits the backends.
    /// `WGFER_KERNELS=portable` runs only the kernels every adapter runs.
    pub fn new(adapter_name: Option<&str>) -> Result<Gpu> {
        Gpu::with_kernels(adapter_name, Kernels::from_env()?)
    }

    /// `new` with the kernel choice given rather than read from `WGFER_KERNELS`.
    pub fn with_kernels(adapter_name: Option<&str>, kernels: Kernels) -> Result<Gpu> {
        // Vulkan, Metal and DX12 unless WGPU_BACKEND says otherwise: the GL
        // backend lacks what the kernels need (and probing it opens displays).
        let backends = wgpu::Backends::from_env().unwrap_or(wgpu::Backends::PRIMARY);
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
        desc.backends = backends;
        let instance = wgpu::Instance::new(desc);
        let wanted = adapter_name
            .map(str::to_string)
            .or_else(|| std::env::var("WGPU_ADAPTER_NAME").ok())
            .filter(|s| !s.is_empty());
        let adapters = pollster::block_on(instance.enumerate_adapters(backends));
        if adapters.is_empty() {
            match std::env::var("WGPU_BACKEND") {
                Ok(b) => bail!(
                    "{} (WGPU_BACKEND={b} limits the backends searched)",
                    no_adapter_help()
                ),
                Err(_) => bail!("{}", no_adapter_help()),
            }
        }
        let mut candidates = adapters;
        if let Some(w) = &wanted {
            let w = w.to_lowercase();
            let names: Vec<String> = candidates.iter().map(|a| a.get_info().name).collect();
            candidates.retain(|a| a.get_info().name.to_lowercase().contains(&w));
            if candidates.is_empty() {
                bail!(
                    "no adapter matches `{w}`; available adapters: {}",
                    names.join(", ")
                );
            }
        }
        candidates.sort_by_key(|a| preference(a.get_info().device_type));
        let adapter = candidates
            .into_iter()
            .next()
            .ok_or_else(|| anyhow!("{}", no_adapter_help()))?;
        let info = adapter.get_info();
        let limits = adapter.limits();
        let timestamps = adapter.features().contains(wgpu::Features::TIMESTAMP_QUERY);
        let subgroups = adapter.features().contains(wgpu::Features::SUBGROUP);
        let mut required_features = wgpu::Features::empty();
        required_features.set(wgpu::Features::TIMESTAMP_QUERY, timestamps);
        required_features.set(wgpu::Features::SUBGROUP, subgroups);
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("wgfer"),
            required_features,
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| {
            anyhow!(
                "could not open the GPU device on adapter {}: {e}",
                info.name
            )
        })?;

        let error = Arc::new(Mutex::new(None::<String>));
        let sink = error.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let mut slot = sink.lock().unwrap();
            if slot.is_none() {
                *slot = Some(e.to_string());
            }
        }));
        let sink = error.clone();
        device.set_device_lost_callback(move |reason, msg| {
            if reason != wgpu::DeviceLostReason::Destroyed {
                *sink.lock().unwrap() =
                    Some(format!("the GPU device was lost ({reason:?}): {msg}"));
            }
        });

        let summary = AdapterSummary {
            name: info.name.clone(),
            backend: format!("{:?}", info.backend),
            device_type: device_type_name(info.device_type).to_string(),
            driver: [info.driver.as_str(), info.driver_info.as_str()]
                .iter()
                .filter(|s| !s.is_empty())
                .copied()
                .collect::<Vec<_>>()
                .join(" "),
            is_software: info.device_type == wgpu::DeviceType::Cpu,
        };
        Ok(Gpu(Arc::new(Inner {
            device,
            queue,
            summary,
            limits,
            timestamps,
            subgroup_sizes: subgroups.then_some((info.subgroup_min_size, info.subgroup_max_size)),
            kernel_choice: kernels,
            shader_dispatches: Mutex::default(),
            modules: Mutex::default(),
            kernels: Mutex::default(),
            pool: Arc::default(),
            staging: Mutex::default(),
            uniforms: Mutex::default(),
            bind_groups: Mutex::default(),
            encoder: Mutex::new(None),
            nan_source: Mutex::new(None),
            dummy: Mutex::new(None),
            sink: Mutex::new(None),
            error,
            poison: AtomicBool::new(false),
            scope: Mutex::new((Arc::from(""), "")),
            flops_note: Mutex::new(None),
            profiler: Mutex::new(None),
            recording: Mutex::new(None),
            stats: Mutex::default(),
        })))
    }

    /// The one-line notice to show when wgfer fell back to a software adapter.
    pub fn software_notice(&self) -> Option<String> {
        self.0.summary.is_software.then(|| {
            format!(
                "note: no hardware GPU adapter found; using the software adapter {} (slow; see `wgfer info`)",
                self.0.summary
            )
        })
    }

    pub fn adapter(&self) -> &AdapterSummary {
        &self.0.summary
    }

    pub fn limits(&self) -> &wgpu::Limits {
        &self.0.limits
    }

    pub fn device(&self) -> &wgpu::Device {
        &self.0.device
    }

    pub fn queue(&self) -> &wgpu::Queue {
        &self.0.queue
    }

    /// (min, max) subgroup size, when subgroup operations are available.
    pub fn subgroup_sizes(&self) -> Option<(u32, u32)> {
        self.0.subgroup_sizes
    }

    /// Which kernels ops pick where they have a choice.
    pub fn kernels(&self) -> Kernels {
        self.0.kernel_choice
    }

    /// The subgroup width every subgroup of this adapter has, which a kernel
    /// may be written for; `None` when widths vary, subgroups are missing, or
    /// only portable kernels may run.
    pub fn fixed_subgroup_size(&self) -> Option<u32> {
        match (self.0.kernel_choice, self.0.subgroup_sizes) {
            (Kernels::Fastest, Some((min, max))) if min == max => Some(min),
            _ => None,
        }
    }

    /// How many dispatches of kernels compiled from the shader named `shader`
    /// were encoded so far (tests check which of two kernels ran).
    pub fn dispatches_of(&self, shader: &str) -> u64 {
        let counts = self.0.shader_dispatches.lock().unwrap();
        counts.get(shader).copied().unwrap_or(0)
    }

    pub fn has_timestamps(&self) -> bool {
        self.0.timestamps
    }

    pub fn stats(&self) -> GpuStats {
        *self.0.stats.lock().unwrap()
    }

    /// Tests turn this on: every tensor an op allocates for its output is
    /// filled with NaN first, so an element the kernel forgets to write fails.
    pub fn set_poison_outputs(&self, on: bool) {
        self.0.poison.store(on, Ordering::Relaxed);
    }

    pub(crate) fn next_id(&self) -> u64 {
        crate::engine::tensor::fresh_id()
    }

    /// The largest tensor (in f32 elements) a single binding may hold.
    pub fn max_binding_elements(&self) -> usize {
        let l = &self.0.limits;
        (l.max_storage_buffer_binding_size.min(l.max_buffer_size) / 4) as usize
    }

    // ------------------------------------------------------------ buffers

    /// A tensor whose contents are undefined (NaN when poisoning is on).
    pub fn empty(&self, shape: &[usize]) -> Result<Tensor> {
        let t = self.alloc(shape)?;
        if self.0.poison.load(Ordering::Relaxed) {
            self.fill_nan(&t);
        }
        Ok(t)
    }

    /// A tensor of zeros (cleared in order with the pending commands).
    pub fn zeros(&self, shape: &[usize]) -> Result<Tensor> {
        let t = self.alloc(shape)?;
        let bytes = t.padded_bytes();
        self.with_encoder(|enc| enc.clear_buffer(t.buffer(), t.byte_offset(), Some(bytes)));
        Ok(t)
    }

    /// A tensor holding `data`.
    pub fn upload(&self, shape: &[usize], data: &[f32]) -> Result<Tensor> {
        let t = self.alloc(shape)?;
        self.write(&t, data)?;
        Ok(t)
    }

    /// Overwrite a tensor with host data. Pending commands are submitted
    /// first so they still see the old contents.
    pub fn write(&self, t: &Tensor, data: &[f32]) -> Result<()> {
        if data.len() != t.len() {
            bail!(
                "write: tensor of shape {:?} holds {} values, got {}",
                t.shape(),
                t.len(),
                data.len()
            );
        }
        self.flush();
        self.0
            .queue
            .write_buffer(t.buffer(), t.byte_offset(), bytemuck::cast_slice(data));
        Ok(())
    }

    /// Allocate from the pool (exact byte size match) or create a buffer.
    fn alloc(&self, shape: &[usize]) -> Result<Tensor> {
        self.alloc_in(shape, true)
    }

    fn alloc_in(&self, shape: &[usize], pooled: bool) -> Result<Tensor> {
        let len: usize = shape.iter().product();
        let max = self.max_binding_elements();
        if len > max {
            bail!(
                "a tensor of shape {shape:?} ({len} values, {} MiB) exceeds this adapter's \
                 max_storage_buffer_binding_size of {} MiB; use a smaller batch size",
                (len * 4) >> 20,
                (max * 4) >> 20
            );
        }
        let bytes = ((len.max(1) as u64 * 4).div_ceil(SIZE_ALIGN)) * SIZE_ALIGN;
        let reused = self.0.pool.lock().unwrap().take(bytes);
        let (id, buffer) = match reused {
            Some(b) => b,
            None => {
                let buffer = self.0.device.create_buffer(&wgpu::BufferDescriptor {
                    label: None,
                    size: bytes,
                    usage: wgpu::BufferUsages::STORAGE
                        | wgpu::BufferUsages::COPY_SRC
                        | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                self.0.stats.lock().unwrap().buffers_created += 1;
                (self.next_id(), buffer)
            }
        };
        let pool = if pooled {
            Arc::downgrade(&self.0.pool)
        } else {
            Weak::new()
        };
        let storage = Storage::new(buffer, id, bytes, pool);
        Ok(Tensor::from_storage(
            Arc::new(storage),
            0,
            shape.to_vec(),
            self.next_id(),
        ))
    }

    /// A buffer that is never returned to the pool, for long-lived data such
    /// as the flat parameter, gradient and optimizer-state vectors that other
    /// tensors view into.
    pub fn persistent(&self, len: usize) -> Result<Tensor> {
        self.alloc_in(&[len], false)
    }

    /// A small zero tensor to bind where a kernel's optional input is absent.
    pub fn dummy(&self) -> Result<Tensor> {
        let mut slot = self.0.dummy.lock().unwrap();
        if let Some(t) = slot.as_ref() {
            return Ok(t.clone());
        }
        let t = self.alloc_in(&[4], false)?;
        self.with_encoder(|enc| enc.clear_buffer(t.buffer(), 0, None));
        *slot = Some(t.clone());
        Ok(t)
    }

    /// A small tensor to bind where a kernel's optional output is not
    /// wanted (the kernel must not write it then; `dummy` cannot serve, as
    /// one buffer may not be bound for reading and writing at once).
    pub fn sink(&self) -> Result<Tensor> {
        let mut slot = self.0.sink.lock().unwrap();
        if let Some(t) = slot.as_ref() {
            return Ok(t.clone());
        }
        let t = self.alloc_in(&[4], false)?;
        *slot = Some(t.clone());
        Ok(t)
    }

    fn fill_nan(&self, t: &Tensor) {
        let bytes = t.padded_bytes().min(t.storage_bytes() - t.byte_offset());
        let mut src = self.0.nan_source.lock().unwrap();
        if src.as_ref().is_none_or(|b| b.size() < bytes) {
            let size = bytes.next_power_of_two().max(1 << 16);
            let buffer = self.0.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("nan source"),
                size,
                usage: wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            // A fresh buffer no pending command uses: writing it needs no flush.
            let nans = vec![f32::NAN; size as usize / 4];
            self.0
                .queue
                .write_buffer(&buffer, 0, bytemuck::cast_slice(&nans));
            *src = Some(buffer);
        }
        let src = src.as_ref().unwrap();
        self.with_encoder(|enc| {
            enc.copy_buffer_to_buffer(src, 0, t.buffer(), t.byte_offset(), bytes)
        });
    }

    // ------------------------------------------------------------ kernels

    /// The pipeline for `entry` of `shader` with the given override constants,
    /// compiled on first use.
    pub fn kernel(&self, shader: &Shader, entry: &str, constants: &[(&str, f64)]) -> Arc<Kernel> {
        let key = format!("{}::{entry}{constants:?}", shader.name);
        if let Some(k) = self.0.kernels.lock().unwrap().get(&key) {
            return k.clone();
        }
        let module = {
            let mut modules = self.0.modules.lock().unwrap();
            modules
                .entry(shader.name)
                .or_insert_with(|| {
                    self.checked(shader.name, || {
                        let desc = wgpu::ShaderModuleDescriptor {
                            label: Some(shader.name),
                            source: wgpu::ShaderSource::Wgsl(shader.source.into()),
                        };
                        self.0.device.create_shader_module(desc)
                    })
                })
                .clone()
        };
        let pipeline = self.checked(&key, || {
            self.0
                .device
                .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(&key),
                    layout: None,
                    module: &module,
                    entry_point: Some(entry),
                    compilation_options: wgpu::PipelineCompilationOptions {
                        constants,
                        zero_initialize_workgroup_memory: false,
                    },
                    cache: None,
                })
        });
        let layout = pipeline.get_bind_group_layout(0);
        let kernel = Arc::new(Kernel {
            name: key.clone(),
            shader: *shader,
            entry: entry.to_string(),
            constants: constants.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            id: self.next_id(),
            pipeline,
            layout,
        });
        self.0.stats.lock().unwrap().pipelines_created += 1;
        self.0.kernels.lock().unwrap().insert(key, kernel.clone());
        kernel
    }

    /// Run `f` in a validation error scope; a shader that does not compile is
    /// a bug in wgfer, so it panics with the compiler's message.
    fn checked<T>(&self, what: &str, f: impl FnOnce() -> T) -> T {
        let scope = self
            .0
            .device
            .push_error_scope(wgpu::ErrorFilter::Validation);
        let value = f();
        if let Some(e) = pollster::block_on(scope.pop()) {
            panic!("internal error: {what} failed to compile: {e}");
        }
        value
    }

    /// The cached uniform buffer holding exactly these bytes.
    fn uniform(&self, params: &[u8]) -> (u64, wgpu::Buffer) {
        let mut uniforms = self.0.uniforms.lock().unwrap();
        if let Some(u) = uniforms.get(params) {
            return u.clone();
        }
        let size = (params.len() as u64).div_ceil(16).max(1) * 16;
        let buffer = self.0.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("params"),
            size,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut padded = params.to_vec();
        padded.resize(size as usize, 0);
        // A fresh buffer no pending command uses: writing it needs no flush.
        self.0.queue.write_buffer(&buffer, 0, &padded);
        self.0.stats.lock().unwrap().buffers_created += 1;
        let entry = (self.next_id(), buffer);
        uniforms.insert(params.to_vec(), entry.clone());
        entry
    }

    /// Split a workgroup count over x and y so that neither exceeds the
    /// adapter's per-dimension limit. Kernels linearise `wg.x + wg.y * nwg.x`
    /// and skip ids past the count they were given.
    pub fn grid(&self, workgroups: u32) -> Result<(u32, u32)> {
        let max = self.0.limits.max_compute_workgroups_per_dimension.max(1);
        if workgroups <= max {
            return Ok((workgroups.max(1), 1));
        }
        let y = workgroups.div_ceil(max);
        if y > max {
            bail!(
                "a dispatch of {workgroups} workgroups exceeds this adapter's limit of {max} x {max} \
                 (max_compute_workgroups_per_dimension); use a smaller batch size"
            );
        }
        Ok((workgroups.div_ceil(y), y))
    }

    /// Encode one dispatch of `workgroups` workgroups (split over x and y).
    pub fn dispatch(
        &self,
        kernel: &Kernel,
        params: &[u8],
        tensors: &[(u32, &Tensor)],
        workgroups: u32,
    ) -> Result<()> {
        let (x, y) = self.grid(workgroups)?;
        self.dispatch_xyz(kernel, params, tensors, [x, y, 1])
    }

    /// Encode one dispatch with an explicit grid.
    pub fn dispatch_xyz(
        &self,
        kernel: &Kernel,
        params: &[u8],
        tensors: &[(u32, &Tensor)],
        grid: [u32; 3],
    ) -> Result<()> {
        let max = self.0.limits.max_compute_workgroups_per_dimension;
        if grid.iter().any(|&g| g > max) {
            bail!(
                "{}: grid {grid:?} exceeds max_compute_workgroups_per_dimension {max}",
                kernel.name
            );
        }
        let bind_group = self.bind_group(kernel, params, tensors);
        if let Some(rec) = self.0.recording.lock().unwrap().as_mut() {
            let bindings = tensors
                .iter()
                .map(|(slot, t)| {
                    let b = Binding {
                        slot: *slot,
                        buffer: t.storage_id(),
                        offset: t.byte_offset(),
                        size: t.binding_bytes(),
                    };
                    (b, t.storage_bytes())
                })
                .collect();
            let shader = (kernel.shader.name, kernel.shader.source);
            rec.dispatch(
                shader,
                &kernel.entry,
                &kernel.constants,
                params,
                bindings,
                grid,
            );
        }
        let flops = self.0.flops_note.lock().unwrap().take();
        let mut profiler = self.0.profiler.lock().unwrap();
        let timestamp_writes = profiler
            .as_mut()
            .and_then(|p| p.next(self.scope(), &kernel.name, flops));
        self.with_encoder(|enc| {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: None,
                timestamp_writes,
            });
            pass.set_pipeline(&kernel.pipeline);
            pass.set_bind_group(0, &bind_group, &[]);
            pass.dispatch_workgroups(grid[0], grid[1], grid[2]);
        });
        self.0.stats.lock().unwrap().dispatches += 1;
        *self
            .0
            .shader_dispatches
            .lock()
            .unwrap()
            .entry(kernel.shader.name)
            .or_default() += 1;
        Ok(())
    }

    fn bind_group(
        &self,
        kernel: &Kernel,
        params: &[u8],
        tensors: &[(u32, &Tensor)],
    ) -> wgpu::BindGroup {
        let (uid, ubuf) = self.uniform(params);
        let mut key = Vec::with_capacity(2 + tensors.len() * 3);
        key.extend([kernel.id, uid]);
        for (slot, t) in tensors {
            key.extend([
                *slot as u64,
                t.storage_id(),
                t.byte_offset(),
                t.binding_bytes(),
            ]);
        }
        let mut cache = self.0.bind_groups.lock().unwrap();
        if let Some(bg) = cache.get(&key) {
            return bg.clone();
        }
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: ubuf.as_entire_binding(),
        }];
        for (slot, t) in tensors {
            entries.push(wgpu::BindGroupEntry {
                binding: *slot,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: t.buffer(),
                    offset: t.byte_offset(),
                    size: std::num::NonZeroU64::new(t.binding_bytes()),
                }),
            });
        }
        let bg = self.0.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &kernel.layout,
            entries: &entries,
        });
        if cache.len() >= MAX_BIND_GROUPS {
            cache.clear();
        }
        cache.insert(key, bg.clone());
        self.0.stats.lock().unwrap().bind_groups_created += 1;
        bg
    }

    /// Encode with the pending encoder (created on demand).
    pub fn with_encoder<R>(&self, f: impl FnOnce(&mut wgpu::CommandEncoder) -> R) -> R {
        let mut slot = self.0.encoder.lock().unwrap();
        let enc = slot.get_or_insert_with(|| {
            self.0
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None })
        });
        f(enc)
    }

    /// Submit the pending commands (if any) without waiting.
    pub fn flush(&self) {
        let enc = self.0.encoder.lock().unwrap().take();
        if let Some(enc) = enc {
            self.0.queue.submit([enc.finish()]);
            self.0.stats.lock().unwrap().submits += 1;
        }
    }

    /// Submit and wait until the GPU is idle; report any error it raised.
    pub fn sync(&self) -> Result<()> {
        self.flush();
        self.0
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| anyhow!("waiting for the GPU failed: {e}"))?;
        self.check()
    }

    /// An error the device reported since the last check (validation error,
    /// out of memory, device lost).
    pub fn check(&self) -> Result<()> {
        match self.0.error.lock().unwrap().take() {
            Some(e) => bail!("GPU error: {e}"),
            None => Ok(()),
        }
    }

    /// Copy a tensor back to the host (submits and waits).
    pub fn read(&self, t: &Tensor) -> Result<Vec<f32>> {
        if t.is_empty() {
            return Ok(Vec::new());
        }
        let bytes = (t.len() as u64 * 4).max(4);
        let padded = bytes.div_ceil(SIZE_ALIGN) * SIZE_ALIGN;
        let staging = self
            .0
            .staging
            .lock()
            .unwrap()
            .get_mut(&padded)
            .and_then(|v| v.pop());
        let staging = staging.unwrap_or_else(|| {
            self.0.stats.lock().unwrap().buffers_created += 1;
            self.0.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("staging"),
                size: padded,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        });
        self.with_encoder(|enc| {
            enc.copy_buffer_to_buffer(t.buffer(), t.byte_offset(), &staging, 0, t.len() as u64 * 4)
        });
        let out = bytemuck::pod_collect_to_vec(&self.map_read(&staging, t.len() as u64 * 4)?);
        self.0
            .staging
            .lock()
            .unwrap()
            .entry(padded)
            .or_default()
            .push(staging);
        Ok(out)
    }

    /// Submit the pending commands, wait, and copy the first `bytes` of a
    /// MAP_READ buffer to the host (the buffer is unmapped again).
    fn map_read(&self, buffer: &wgpu::Buffer, bytes: u64) -> Result<Vec<u8>> {
        self.flush();
        let (tx, rx) = std::sync::mpsc::channel();
        buffer.map_async(wgpu::MapMode::Read, ..bytes, move |r| {
            let _ = tx.send(r);
        });
        self.0
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| anyhow!("waiting for the GPU failed: {e}"))?;
        self.check()?;
        rx.recv()
            .map_err(|_| anyhow!("GPU read-back was cancelled"))?
            .map_err(|e| anyhow!("GPU read-back failed: {e}"))?;
        let out = buffer
            .get_mapped_range(..bytes)
            .map_err(|e| anyhow!("GPU read-back failed: {e}"))?
            .to_vec();
        buffer.unmap();
        Ok(out)
    }

    /// Copy `len` elements between tensors, in order with the pending commands.
    pub fn copy(
        &self,
        src: &Tensor,
        src_at: usize,
        dst: &Tensor,
        dst_at: usize,
        len: usize,
    ) -> Result<()> {
        if src_at + len > src.len() || dst_at + len > dst.len() {
            bail!(
                "copy of {len} values out of range ({:?} at {src_at} -> {:?} at {dst_at})",
                src.shape(),
                dst.shape()
            );
        }
        if let Some(rec) = self.0.recording.lock().unwrap().as_mut() {
            let at = |t: &Tensor, i: usize| {
                (
                    t.storage_id(),
                    t.byte_offset() + i as u64 * 4,
                    t.storage_bytes(),
                )
            };
            rec.copy(at(src, src_at), at(dst, dst_at), len as u64 * 4);
        }
        self.with_encoder(|enc| {
            enc.copy_buffer_to_buffer(
                src.buffer(),
                src.byte_offset() + src_at as u64 * 4,
                dst.buffer(),
                dst.byte_offset() + dst_at as u64 * 4,
                len as u64 * 4,
            )
        });
        Ok(())
    }

    // ---------------------------------------------------------- profiling

    /// Label the dispatches that follow (e.g. `conv2d res_2_conv_b`,
    /// `forward`): profiles group GPU time by it.
    pub fn set_scope(&self, label: &Arc<str>, pass: &'static str) {
        *self.0.scope.lock().unwrap() = (label.clone(), pass);
    }

    /// The label and pass set last.
    pub fn scope(&self) -> (Arc<str>, &'static str) {
        self.0.scope.lock().unwrap().clone()
    }

    /// The next dispatch does `flops` floating-point operations (a profile
    /// turns its time into GFLOP/s).
    pub fn note_flops(&self, flops: f64) {
        *self.0.flops_note.lock().unwrap() = Some(flops);
    }

    /// Time every dispatch from now until `finish_profile`.
    pub fn start_profile(&self) -> Result<()> {
        if !self.0.timestamps {
            bail!(
                "{} has no timestamp queries: cannot profile kernels",
                self.0.summary.name
            );
        }
        self.flush();
        *self.0.profiler.lock().unwrap() = Some(Profiler::new(&self.0.device));
        Ok(())
    }

    /// Wait for the profiled work and return each dispatch's GPU time, in
    /// dispatch order.
    pub fn finish_profile(&self) -> Result<Vec<DispatchTime>> {
        let profiler = self.0.profiler.lock().unwrap().take();
        let Some(profiler) = profiler else {
            bail!("finish_profile without start_profile");
        };
        let resolved = self.with_encoder(|enc| profiler.finish(&self.0.device, enc))?;
        let bytes = self.map_read(&resolved.readback, resolved.readback.size())?;
        let ticks: Vec<u64> = bytemuck::pod_collect_to_vec(&bytes);
        let period = self.0.queue.get_timestamp_period() as f64;
        Ok(resolved.times(&ticks, period))
    }

    /// Capture every dispatch and copy from now until `finish_recording`
    /// (they still run as usual).
    pub fn start_recording(&self) {
        *self.0.recording.lock().unwrap() = Some(Recording::default());
    }

    pub fn finish_recording(&self) -> Result<Recording> {
        self.0
            .recording
            .lock()
            .unwrap()
            .take()
            .ok_or_else(|| anyhow!("finish_recording without start_recording"))
    }

    /// Drop every pooled buffer and cached bind group (e.g. after switching
    /// batch size), returning their memory to the driver.
    pub fn trim(&self) {
        self.0.pool.lock().unwrap().free.clear();
        self.0.bind_groups.lock().unwrap().clear();
        self.0.staging.lock().unwrap().clear();
    }
}
