//! The recorded inference pass (`fer::export`), replayed by a minimal player
//! written here against raw wgpu, as the browser's JavaScript player replays
//! it: the same buffers, pipelines, uniforms and dispatches must give the
//! probabilities the native inference gives.

mod common;

use std::collections::HashMap;

use wgfer::engine::Gpu;
use wgfer::engine::record::Command;
use wgfer::fer::data::{LoadOptions, PIXELS};
use wgfer::fer::export::{self, WebPlan};
use wgfer::fer::infer;
use wgfer::fer::model::{Architecture, Model};

/// Run `plan` on `images` (batch × 2304 values in [0, 1]) with nothing but
/// the plan's data: buffers by size, weights from `weights`, commands in order.
fn replay(gpu: &Gpu, plan: &WebPlan, weights: &[u8], images: &[f32]) -> Vec<f32> {
    let (device, queue) = (gpu.device(), gpu.queue());
    let rec = &plan.recording;
    let buffers: HashMap<u64, wgpu::Buffer> = rec
        .buffers
        .iter()
        .map(|(&id, &size)| {
            let b = device.create_buffer(&wgpu::BufferDescriptor {
                label: None,
                size,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            (id, b)
        })
        .collect();
    for w in &plan.weights {
        let range = w.file_offset as usize..(w.file_offset + w.size) as usize;
        queue.write_buffer(&buffers[&w.buffer], 0, &weights[range]);
    }
    queue.write_buffer(
        &buffers[&plan.input.buffer],
        plan.input.offset,
        bytemuck::cast_slice(images),
    );
    let modules: HashMap<&String, wgpu::ShaderModule> = rec
        .shaders
        .iter()
        .map(|(name, src)| {
            let m = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(name),
                source: wgpu::ShaderSource::Wgsl(src.into()),
            });
            (name, m)
        })
        .collect();
    let mut enc = device.create_command_encoder(&Default::default());
    for cmd in &rec.commands {
        match cmd {
            Command::Dispatch {
                shader,
                entry,
                constants,
                params,
                bindings,
                grid,
            } => {
                let constants: Vec<(&str, f64)> =
                    constants.iter().map(|(k, v)| (k.as_str(), *v)).collect();
                let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: None,
                    layout: None,
                    module: &modules[shader],
                    entry_point: Some(entry),
                    compilation_options: wgpu::PipelineCompilationOptions {
                        constants: &constants,
                        zero_initialize_workgroup_memory: false,
                    },
                    cache: None,
                });
                let mut bytes: Vec<u8> = bytemuck::cast_slice(params).to_vec();
                bytes.resize(bytes.len().div_ceil(16).max(1) * 16, 0);
                let uniform = device.create_buffer(&wgpu::BufferDescriptor {
                    label: None,
                    size: bytes.len() as u64,
                    usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                queue.write_buffer(&uniform, 0, &bytes);
                let mut entries = vec![wgpu::BindGroupEntry {
                    binding: 0,
                    resource: uniform.as_entire_binding(),
                }];
                for b in bindings {
                    entries.push(wgpu::BindGroupEntry {
                        binding: b.slot,
                        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                            buffer: &buffers[&b.buffer],
                            offset: b.offset,
                            size: std::num::NonZeroU64::new(b.size),
                        }),
                    });
                }
                let group = device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: None,
                    layout: &pipeline.get_bind_group_layout(0),
                    entries: &entries,
                });
                let mut pass = enc.begin_compute_pass(&Default::default());
                pass.set_pipeline(&pipeline);
                pass.set_bind_group(0, &group, &[]);
                pass.dispatch_workgroups(grid[0], grid[1], grid[2]);
            }
            Command::Copy {
                src,
                src_offset,
                dst,
                dst_offset,
                size,
            } => enc.copy_buffer_to_buffer(
                &buffers[src],
                *src_offset,
                &buffers[dst],
                *dst_offset,
                *size,
            ),
        }
    }
    let staging = device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: plan.output.size,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    enc.copy_buffer_to_buffer(
        &buffers[&plan.output.buffer],
        plan.output.offset,
        &staging,
        0,
        plan.output.size,
    );
    queue.submit([enc.finish()]);
    staging.map_async(wgpu::MapMode::Read, .., |r| r.unwrap());
    device.poll(wgpu::PollType::wait_indefinitely()).unwrap();
    let view = staging.get_mapped_range(..).unwrap();
    bytemuck::cast_slice::<u8, f32>(&view).to_vec()
}

#[test]
fn the_recorded_inference_replays_to_the_native_probabilities() {
    let gpu = common::gpu();
    let ds = wgfer::fer::data::load_csv(&common::sample_csv(), &LoadOptions::default()).unwrap();
    let model = Model::new(&gpu, Architecture::resnet(5), 3).unwrap();
    let names = wgfer::fer::data::default_class_names(5);
    for batch in [1, 3] {
        let pixels = &ds.pixels[..batch * PIXELS];
        let want = infer::probabilities(&model, pixels, batch, infer::Tta::None).unwrap();
        let plan = export::record(&model, &names, batch).unwrap();
        assert_eq!(plan.output.size as usize, batch * 5 * 4);
        let images: Vec<f32> = pixels.iter().map(|&p| p as f32 / 255.0).collect();
        let got = replay(&gpu, &plan, &export::weights_bin(&model).unwrap(), &images);
        let want64: Vec<f64> = want.iter().map(|&v| v as f64).collect();
        common::check(&format!("replayed inference, batch {batch}"), &got, &want64);
        // The recording is data: it serialises, and names what it needs.
        let json = serde_json::to_string(&plan).unwrap();
        assert!(json.contains("\"format\":\"wgfer-web-1\""));
        assert!(!plan.recording.commands.is_empty());
    }
}
