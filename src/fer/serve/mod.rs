//! `wgfer serve`: the model as an HTTP service.
//!
//! - `routes`: the API (axum) and the layers around it;
//! - `faces`: the CPU step, uploaded bytes to 48x48 faces (blocking pool);
//! - `batcher`: the GPU step, one worker thread that owns the model and runs
//!   the faces of concurrent requests as one batch;
//! - here: loading the model, the accept loop, and the graceful stop.
//!
//! The accept loop is hyper's own rather than `axum::serve`, for the one
//! thing the latter lacks: a timeout on reading a request's headers, so that
//! a client that sends half a request and stalls is dropped.

mod batcher;
mod error;
mod faces;
mod routes;

pub use batcher::{BatchSettings, Batcher};
pub use routes::{Limits, ModelInfo};

use std::collections::HashMap;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

use crate::engine::{Gpu, Kernels};
use crate::fer::image_input::FACE_PIXELS;
use crate::fer::infer::{self, Tta};
use crate::fer::model::Model;
use crate::fer::models::ResolvedModel;
use crate::fer::web::{self, SiteFile};

/// Everything `wgfer serve` is told.
pub struct Config {
    pub host: String,
    pub port: u16,
    /// The weights and the name `/health`, `/predict` and the page give them.
    pub model: ResolvedModel,
    pub batch: BatchSettings,
    pub limits: Limits,
    /// How long in-flight requests get to finish after SIGINT/SIGTERM.
    pub grace: Duration,
    pub quiet: bool,
}

/// Load the model, listen, serve until SIGINT or SIGTERM, then finish the
/// requests in flight (for at most `config.grace`) and return.
pub fn run(gpu: &Gpu, config: Config) -> Result<()> {
    let (model, classes) = Model::load(gpu, &config.model.path)?;
    let info = ModelInfo {
        adapter: gpu.adapter().to_string(),
        model: config.model.name.clone(),
        classes,
    };
    // The first inference builds the GPU pipelines: do it now, not in the
    // first client's request.
    infer::probabilities(&model, &[0; FACE_PIXELS], 1, Tta::None)
        .context("the model's first inference failed")?;
    let batcher = Batcher::start(config.batch, move |pixels: &[u8], count: usize| {
        infer::probabilities(&model, pixels, count, Tta::None)
    })?;
    let site = browser_site(gpu, &config.model)?;
    let stats = Arc::clone(&batcher.stats);
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let state = routes::AppState {
        batcher,
        info: Arc::new(info),
        limits: config.limits,
        cpu: Arc::new(tokio::sync::Semaphore::new(cpus)),
        site: Arc::new(site),
    };
    let app = routes::router(state, config.quiet);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(serve(app, &config));
    // Connections still open after the grace period are dropped with the
    // runtime, and so are the last handles on the batcher: its thread ends.
    runtime.shutdown_timeout(Duration::from_secs(1));
    // Printed even with --quiet: one line that says what batching did.
    eprintln!("served {}", stats.summary());
    result
}

/// The browser page's files, recorded on a second device of the same adapter
/// with the portable kernels (a browser's WebGPU has no subgroups), while the
/// server's own inference keeps the fastest ones.
fn browser_site(gpu: &Gpu, weights: &ResolvedModel) -> Result<HashMap<String, SiteFile>> {
    let portable = Gpu::with_kernels(Some(&gpu.adapter().name), Kernels::Portable)?;
    let (model, classes) = Model::load(&portable, &weights.path)?;
    let files = web::site(&model, &weights.name, &classes, &[1, 32])
        .context("recording the browser page's plans")?;
    Ok(files.into_iter().map(|f| (f.path.clone(), f)).collect())
}

/// Accept connections until a stop signal, then drain.
async fn serve(app: axum::Router, config: &Config) -> Result<()> {
    let listener = TcpListener::bind((config.host.as_str(), config.port))
        .await
        .with_context(|| format!("cannot listen on {}:{}", config.host, config.port))?;
    let stop = stop_signal()?;
    let address = listener.local_addr()?;
    if !address.ip().is_loopback() {
        eprintln!(
            "note: listening beyond this machine ({}): anyone who can reach it can use the service",
            address.ip()
        );
    }
    // Tests and scripts read this line to find the port (`--port 0`).
    eprintln!("listening on http://{address}");

    let connections = GracefulShutdown::new();
    let mut stop = pin!(stop);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(connection) => connection,
                Err(e) => {
                    // Out of file descriptors and the like: pause, don't spin.
                    eprintln!("warning: accepting a connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        spawn_connection(stream, &app, config.limits.timeout, &connections);
    }
    drop(listener);
    drain(connections, config.grace).await;
    Ok(())
}

/// Serve one connection on its own task, HTTP/1.1 with keep-alive. A client
/// that has not sent a request's headers within `timeout` is disconnected.
fn spawn_connection(
    stream: tokio::net::TcpStream,
    app: &axum::Router,
    timeout: Duration,
    connections: &GracefulShutdown,
) {
    let _ = stream.set_nodelay(true);
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(timeout)
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
    let connection = connections.watch(connection);
    tokio::spawn(async move {
        // A client that vanished mid-request is no error of ours.
        let _ = connection.await;
    });
}

/// Let the requests in flight finish (idle connections close at once), for
/// at most `grace`.
async fn drain(connections: GracefulShutdown, grace: Duration) {
    eprintln!(
        "stopping: no new connections; finishing the requests in flight ({} open connections)",
        connections.count()
    );
    tokio::select! {
        _ = connections.shutdown() => {}
        _ = tokio::time::sleep(grace) => {
            eprintln!(
                "stopping: gave up on connections still open after {} s",
                grace.as_secs_f64()
            );
        }
    }
}

/// A future that resolves on SIGINT (Ctrl-C) or SIGTERM. The handlers are
/// installed here, before the address is printed: a signal sent as soon as
/// the server says it listens must stop it gracefully, not kill it.
#[cfg(unix)]
fn stop_signal() -> Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot watch for SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot watch for SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}

#[cfg(not(unix))]
fn stop_signal() -> Result<impl Future<Output = ()>> {
    Ok(async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    })
}
