//! The HTTP API: routes, their handlers, the JSON they answer, and the layers
//! around them (request log, timeout, panic guard, body limit).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Query, Request, State};
use axum::http::{Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tower_http::catch_panic::CatchPanicLayer;

use super::batcher::Batcher;
use super::error::HttpError;
use super::faces::image_to_faces;
use crate::fer::faces::ImageFaces;
use crate::fer::predict;
use crate::fer::web::SiteFile;

/// What `/health` reports about the model being served.
pub struct ModelInfo {
    /// The GPU adapter, as `wgfer info` describes it.
    pub adapter: String,
    /// The model's name: `fer5`, `fer7`, or its weights file's name.
    pub model: String,
    /// Class names in the model's output order.
    pub classes: Vec<String>,
}

/// Limits on what one request may send.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest request body, in bytes.
    pub max_body: usize,
    /// Largest image, in pixels (width x height), checked before decoding.
    pub max_pixels: u64,
    /// Longest a request may take, from its headers to its answer.
    pub timeout: Duration,
}

/// Everything a handler needs; cloned per request (all shared inside).
#[derive(Clone)]
pub struct AppState {
    pub batcher: Batcher,
    pub info: Arc<ModelInfo>,
    pub limits: Limits,
    /// Decoding is CPU-bound: at most this many at once (one per core), so a
    /// burst of large photos queues instead of oversubscribing the machine.
    pub cpu: Arc<Semaphore>,
    /// The browser page (`wgfer export-web`'s files) by path; `GET /` is its
    /// index.html.
    pub site: Arc<HashMap<String, SiteFile>>,
}

/// The whole application: routes plus layers. `quiet` silences the
/// per-request log.
pub fn router(state: AppState, quiet: bool) -> Router {
    let limits = state.limits;
    let routes = Router::new()
        .route("/", get(page))
        .route("/api", get(api_doc))
        .route("/health", get(health))
        .route("/predict", post(predict))
        .fallback(site_file)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state);
    with_layers(routes, limits, quiet)
}

/// The layers around the routes. They wrap what comes before them: the log
/// is outermost, so it also sees the 408s of the timeout and the 500s of the
/// panic guard.
fn with_layers(routes: Router, limits: Limits, quiet: bool) -> Router {
    routes
        .layer(DefaultBodyLimit::max(limits.max_body))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(middleware::from_fn_with_state(limits.timeout, time_limit))
        .layer(middleware::from_fn_with_state(quiet, log_request))
}

#[derive(Serialize)]
struct Health<'a> {
    status: &'static str,
    adapter: &'a str,
    model: &'a str,
    classes: &'a [String],
}

/// How many faces a response carried, for the request log.
#[derive(Clone, Copy)]
struct FaceCount(usize);

// ------------------------------------------------------------ the handlers

/// The browser page: the model runs in the visitor's own GPU (WebGPU), with
/// this server for face boxes or as the fallback.
async fn page(State(app): State<AppState>, uri: Uri) -> Response {
    site_file(State(app), uri).await
}

/// A short page documenting the API.
async fn api_doc() -> Html<&'static str> {
    Html(include_str!("index.html"))
}

/// One of the page's files (`GET /app.js`, `/plan-b1.json`, ...), else 404.
async fn site_file(State(app): State<AppState>, uri: Uri) -> Response {
    let path = uri.path().trim_start_matches('/');
    let path = if path.is_empty() { "index.html" } else { path };
    match app.site.get(path) {
        Some(f) => ([(header::CONTENT_TYPE, f.content_type)], f.bytes.clone()).into_response(),
        None => not_found(uri).await.into_response(),
    }
}

async fn health(State(app): State<AppState>) -> Response {
    let info = &app.info;
    Json(Health {
        status: "ok",
        adapter: &info.adapter,
        model: &info.model,
        classes: &info.classes,
    })
    .into_response()
}

#[derive(Deserialize)]
struct PredictQuery {
    /// Find the faces first (default); false classifies the whole image.
    detect: Option<bool>,
}

async fn predict(
    State(app): State<AppState>,
    query: Result<Query<PredictQuery>, QueryRejection>,
    request: Request,
) -> Result<Response, HttpError> {
    let Query(query) = query.map_err(|e| {
        HttpError::bad_request(format!(
            "{} (use ?detect=true or ?detect=false)",
            e.body_text()
        ))
    })?;
    let detect = query.detect.unwrap_or(true);
    let bytes = image_bytes(request, app.limits.max_body).await?;
    let mut found = find_faces(&app, bytes, detect).await?;
    let faces: Vec<Vec<u8>> = found
        .faces
        .iter_mut()
        .map(|f| std::mem::take(&mut f.pixels))
        .collect();
    let count = faces.len();
    let probabilities = app.batcher.classify(faces).await?;
    // The object `wgfer predict --json` prints for one input, less its file name.
    let answer = predict::image_report(
        "",
        &app.info.model,
        &found,
        &probabilities,
        &app.info.classes,
    );
    let mut response = Json(answer).into_response();
    response.extensions_mut().insert(FaceCount(count));
    Ok(response)
}

/// The CPU step on the blocking pool, at most one per core at a time.
async fn find_faces(app: &AppState, bytes: Bytes, detect: bool) -> Result<ImageFaces, HttpError> {
    let _permit = app
        .cpu
        .acquire()
        .await
        .map_err(|_| HttpError::internal("the server is stopping"))?;
    let max_pixels = app.limits.max_pixels;
    tokio::task::spawn_blocking(move || image_to_faces(&bytes, detect, max_pixels))
        .await
        .map_err(|_| HttpError::internal("reading the image failed unexpectedly"))?
}

/// The image in a request: the `image` field of a multipart form, or else
/// the raw body whatever its Content-Type says (the bytes are sniffed later).
/// A declared length over the limit is refused before reading anything; a
/// body that turns out longer is cut off at the limit.
async fn image_bytes(request: Request, max_body: usize) -> Result<Bytes, HttpError> {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if let Some(len) = declared.filter(|&len| len > max_body as u64) {
        return Err(HttpError::too_large(format!(
            "the body is {len} bytes, more than this server accepts ({max_body}, its --max-body)"
        )));
    }
    let is_form = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| {
            t.trim_start()
                .to_ascii_lowercase()
                .starts_with("multipart/form-data")
        });
    if !is_form {
        return Bytes::from_request(request, &()).await.map_err(|e| {
            HttpError::new(e.status(), body_error(e.status(), max_body, e.body_text()))
        });
    }
    let mut form = Multipart::from_request(request, &())
        .await
        .map_err(|e| HttpError::new(e.status(), e.body_text()))?;
    let field_error = |e: axum::extract::multipart::MultipartError| {
        HttpError::new(e.status(), body_error(e.status(), max_body, e.body_text()))
    };
    while let Some(field) = form.next_field().await.map_err(field_error)? {
        if field.name() == Some("image") {
            return field.bytes().await.map_err(field_error);
        }
    }
    Err(HttpError::bad_request(
        "the multipart form has no `image` field (send the picture as image=@FILE)",
    ))
}

/// Say which limit a 413 is about.
fn body_error(status: StatusCode, max_body: usize, detail: String) -> String {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        format!("the body is larger than this server accepts ({max_body} bytes, its --max-body)")
    } else {
        detail
    }
}

async fn not_found(uri: Uri) -> HttpError {
    HttpError::new(
        StatusCode::NOT_FOUND,
        format!(
            "no such path: {} (the API: GET /health, POST /predict; GET /api documents it, GET / is the page)",
            short(uri.path())
        ),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> HttpError {
    HttpError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{method} is not allowed on {} (the API: GET /, GET /health, POST /predict)",
            short(uri.path())
        ),
    )
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    HttpError::internal("internal error: the request handler panicked (the server is still up)")
        .into_response()
}

// ------------------------------------------------------------ the layers

/// 408 when a request (reading its body included) takes longer than the
/// limit, so a client that stalls mid-body does not hold a worker forever.
async fn time_limit(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => HttpError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!("the request took longer than {} s", limit.as_secs_f64()),
        )
        .into_response(),
    }
}

/// One line per request on stderr: method, path, status, faces, time.
async fn log_request(State(quiet): State<bool>, request: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = request.method().clone();
    let path = short(request.uri().path()).to_owned();
    let response = next.run(request).await;
    if !quiet {
        let faces = response.extensions().get::<FaceCount>().map_or(0, |f| f.0);
        eprintln!(
            "{method} {path} {} faces={faces} {:.1} ms",
            response.status().as_u16(),
            start.elapsed().as_secs_f64() * 1e3
        );
    }
    response
}

/// A path cut to a length fit for a log line or an error message.
fn short(path: &str) -> &str {
    match path.char_indices().nth(200) {
        Some((i, _)) => &path[..i],
        None => path,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use tower::ServiceExt;

    async fn buggy() -> &'static str {
        panic!("a bug in a handler")
    }

    /// A router with the server's layers around two misbehaving routes.
    fn guarded() -> Router {
        let routes = Router::new()
            .route("/panic", get(buggy))
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    "too late"
                }),
            )
            .route("/fine", get(|| async { "fine" }));
        let limits = Limits {
            max_body: 1000,
            max_pixels: 1000,
            timeout: Duration::from_millis(200),
        };
        with_layers(routes, limits, true)
    }

    async fn call(app: &Router, path: &str) -> (StatusCode, String) {
        let request = Request::get(path).body(Body::empty()).unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 10_000)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_500_and_the_router_lives_on() {
        let app = guarded();
        let (status, body) = call(&app, "/panic").await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(body.contains("\"error\""), "{body}");
        assert_eq!(call(&app, "/fine").await, (StatusCode::OK, "fine".into()));
    }

    #[tokio::test]
    async fn a_slow_request_answers_408() {
        let start = Instant::now();
        let (status, body) = call(&guarded(), "/slow").await;
        assert_eq!(status, StatusCode::REQUEST_TIMEOUT);
        assert!(body.contains("\"error\""), "{body}");
        assert!(start.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn probabilities_keep_the_model_order() {
        let p = predict::Probabilities(vec![("zeta".into(), 0.75), ("alpha".into(), 0.25)]);
        assert_eq!(
            serde_json::to_string(&p).unwrap(),
            r#"{"zeta":0.75,"alpha":0.25}"#
        );
    }
}
