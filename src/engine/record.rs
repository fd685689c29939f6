//! A recording of GPU work as data: every dispatch and buffer copy between
//! `Gpu::start_recording` and `Gpu::finish_recording`, with the shader
//! sources, the buffers they touch (by id and size) and the uniform bytes.
//! Replaying it on another WebGPU implementation (a browser) runs the same
//! kernels in the same order on the same bindings: it is what the native code
//! did, captured as it ran, so the two cannot drift.

use std::collections::BTreeMap;

use serde::Serialize;

/// One buffer binding of a dispatch.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Binding {
    pub slot: u32,
    /// A `Recording::buffers` id.
    pub buffer: u64,
    pub offset: u64,
    pub size: u64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Command {
    Dispatch {
        /// A `Recording::shaders` key.
        shader: String,
        entry: String,
        /// Pipeline-overridable constants.
        constants: BTreeMap<String, f64>,
        /// The uniform block at binding 0, as little-endian 32-bit words.
        params: Vec<u32>,
        bindings: Vec<Binding>,
        grid: [u32; 3],
    },
    Copy {
        src: u64,
        src_offset: u64,
        dst: u64,
        dst_offset: u64,
        size: u64,
    },
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Recording {
    /// Shader name → WGSL source.
    pub shaders: BTreeMap<String, String>,
    /// Buffer id → size in bytes (every buffer a command touches).
    pub buffers: BTreeMap<u64, u64>,
    pub commands: Vec<Command>,
}

impl Recording {
    pub(crate) fn dispatch(
        &mut self,
        shader: (&str, &str),
        entry: &str,
        constants: &[(String, f64)],
        params: &[u8],
        bindings: Vec<(Binding, u64)>,
        grid: [u32; 3],
    ) {
        self.shaders
            .entry(shader.0.to_string())
            .or_insert_with(|| shader.1.to_string());
        let mut words = params.to_vec();
        words.resize(params.len().div_ceil(4) * 4, 0);
        let bindings = bindings
            .into_iter()
            .map(|(b, buffer_bytes)| {
                self.buffers.insert(b.buffer, buffer_bytes);
                b
            })
            .collect();
        self.commands.push(Command::Dispatch {
            shader: shader.0.to_string(),
            entry: entry.to_string(),
            constants: constants.iter().cloned().collect(),
            params: bytemuck::pod_collect_to_vec(&words),
            bindings,
            grid,
        });
    }

    pub(crate) fn copy(&mut self, src: (u64, u64, u64), dst: (u64, u64, u64), size: u64) {
        self.buffers.insert(src.0, src.2);
        self.buffers.insert(dst.0, dst.2);
        self.commands.push(Command::Copy {
            src: src.0,
            src_offset: src.1,
            dst: dst.0,
            dst_offset: dst.1,
            size,
        });
    }
}
