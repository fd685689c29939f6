//! `wgfer serve`: the model as an HTTP service.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;

use super::{model_choice, open_gpu};
use wgfer::fer::models::{self, FER7, ModelChoice};
use wgfer::fer::serve::{self, BatchSettings, Config, Limits};

/// Serve the model over HTTP: POST an image to /predict, get its faces'
/// expressions as JSON. Faces from concurrent requests share GPU batches.
#[derive(clap::Args)]
#[command(
    after_help = "API: POST /predict (the image as the body, or a multipart form with an `image` field; \
                  ?detect=false classifies the whole image), GET /health, GET / (this API as a page). \
                  Stops on SIGINT/SIGTERM after finishing the requests in flight."
)]
pub struct Args {
    /// Address to listen on (loopback by default; 0.0.0.0 opens it to the network).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on; 0 picks a free one (the address is printed on stderr).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// The model: `fer7` (FER-2013's 7 classes, neutral included: the default, made for
    /// photos), `fer5` (the tutorial's 5 classes), or a weights FILE. WGFER_MODEL replaces
    /// the default.
    #[arg(long, visible_alias = "weights", value_name = "NAME|FILE", value_parser = model_choice)]
    model: Option<ModelChoice>,
    /// Most faces in one GPU inference (1: no batching).
    #[arg(long, value_name = "N", default_value_t = 32,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    max_batch: u32,
    /// Longest a face waits for others to share its batch, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(0..=10_000))]
    max_wait_ms: u64,
    /// Largest request body in bytes (bigger ones get 413 without being read).
    #[arg(long, value_name = "BYTES", default_value_t = 20_000_000,
          value_parser = clap::value_parser!(u64).range(1..=(1 << 32)))]
    max_body: u64,
    /// Largest image in pixels, width x height (bigger ones get 413 before decoding).
    #[arg(long, value_name = "N", default_value_t = 50_000_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    max_pixels: u64,
    /// Longest a client may take to send a request's headers (else it is
    /// dropped), and then the request to be answered (else 408), in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    timeout: u64,
    /// No log line per request.
    #[arg(long)]
    quiet: bool,
    /// Adapter to use: a case-insensitive part of its name (see `wgfer info`).
    #[arg(long, value_name = "NAME")]
    adapter: Option<String>,
}

/// Faces that may wait for the GPU before requests are turned away (503).
const QUEUE_FACES: usize = 4096;
/// How long the requests in flight get to finish after a stop signal.
const GRACE: Duration = Duration::from_secs(5);

pub fn run(a: Args) -> Result<ExitCode> {
    let model = models::choose(a.model.as_ref(), || ModelChoice::named(FER7))?;
    let gpu = open_gpu(a.adapter.as_deref())?;
    let config = Config {
        host: a.host,
        port: a.port,
        model,
        batch: BatchSettings {
            max_batch: a.max_batch as usize,
            max_wait: Duration::from_millis(a.max_wait_ms),
            queue: QUEUE_FACES,
        },
        limits: Limits {
            max_body: a.max_body as usize,
            max_pixels: a.max_pixels,
            timeout: Duration::from_secs(a.timeout),
        },
        grace: GRACE,
        quiet: a.quiet,
    };
    serve::run(&gpu, config)?;
    Ok(ExitCode::SUCCESS)
}
