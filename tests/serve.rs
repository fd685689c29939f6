//! `wgfer serve` from the outside: the built binary on a free port of
//! 127.0.0.1, real HTTP clients (ureq, or raw TCP for the abuse cases).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Barrier, Mutex, mpsc};
use std::time::{Duration, Instant};

use image::{ImageBuffer, Luma};
use serde_json::Value;

mod common;

/// Longest any one HTTP exchange may take (lavapipe on a busy machine).
const PATIENCE: Duration = Duration::from_secs(120);

// ------------------------------------------------------------ the server

/// A `wgfer serve` process; killed when dropped (a failing test leaves
/// nothing behind).
struct Server {
    child: Child,
    base: String,
    /// Its stderr so far, line by line.
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn start(extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_wgfer"))
            .args(["serve", "--host", "127.0.0.1", "--port", "0"])
            .args(extra)
            .env("XDG_RUNTIME_DIR", std::env::temp_dir())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start wgfer serve");
        let log = Arc::new(Mutex::new(vec![]));
        let (address_tx, address_rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("listening on ") {
                    let _ = address_tx.send(url.to_string());
                }
                sink.lock().unwrap().push(line);
            }
        });
        let base = match address_rx.recv_timeout(PATIENCE) {
            Ok(url) => url,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "the server never said where it listens:\n{}",
                    log.lock().unwrap().join("\n")
                );
            }
        };
        assert!(base.starts_with("http://127.0.0.1:"), "{base}");
        Server { child, base, log }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn addr(&self) -> String {
        self.base.trim_start_matches("http://").to_string()
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    /// Wait for the process to end, at most `limit`.
    fn wait(&mut self, limit: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the reader thread take the last lines.
                std::thread::sleep(Duration::from_millis(100));
                return status;
            }
            assert!(
                start.elapsed() < limit,
                "the server did not exit within {limit:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ------------------------------------------------------------ clients

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(PATIENCE))
        .build()
        .into()
}

/// Status and body parsed as JSON (Null when it is not JSON).
fn answer(mut response: ureq::http::Response<ureq::Body>) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn post(url: &str, body: &[u8]) -> (u16, Value) {
    answer(agent().post(url).send(body).expect("POST"))
}

fn get(url: &str) -> (u16, Value) {
    answer(agent().get(url).call().expect("GET"))
}

/// The same image as a multipart form field.
fn post_form(url: &str, field: &str, body: &[u8]) -> (u16, Value) {
    let boundary = "wgfer-test-boundary-7MA4YWxkTrZu0gW";
    let mut form = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"face.png\"\r\n\
         Content-Type: image/png\r\n\r\n"
    )
    .into_bytes();
    form.extend_from_slice(body);
    form.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let request = agent().post(url).header(
        "Content-Type",
        format!("multipart/form-data; boundary={boundary}"),
    );
    answer(request.send(&form[..]).expect("POST form"))
}

/// Raw TCP: write `request`, read until the server closes or `limit` passes.
fn raw_exchange(addr: &str, request: &[u8], limit: Duration) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(limit)).unwrap();
    stream.write_all(request).unwrap();
    let mut got = vec![];
    let _ = stream.read_to_end(&mut got);
    String::from_utf8_lossy(&got).into_owned()
}

/// Raw TCP: a chunked POST /predict of `total` bytes, sent until the server
/// stops taking them; then its answer.
fn chunked_flood(addr: &str, total: usize) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_write_timeout(Some(PATIENCE)).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream
        .write_all(b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    let chunk = [b"10000\r\n".as_slice(), &[0u8; 0x10000], b"\r\n"].concat();
    let mut sent = 0;
    // A write fails once the server has answered and closed: that is the point.
    while sent < total && stream.write_all(&chunk).is_ok() {
        sent += 0x10000;
    }
    let mut got = vec![];
    // What arrived before a reset is kept in `got`.
    let _ = stream.read_to_end(&mut got);
    String::from_utf8_lossy(&got).into_owned()
}

// ------------------------------------------------------------ faces

/// The first `n` rows of the sample CSV as 48x48 PNGs, with their pixels.
fn face_pngs(n: usize, dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let csv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/emotion-sample.csv");
    let text = std::fs::read_to_string(&csv).expect("the sample CSV (see ../shared/data)");
    std::fs::create_dir_all(dir).unwrap();
    text.lines()
        .skip(1)
        .take(n)
        .enumerate()
        .map(|(i, line)| {
            let pixels: Vec<u8> = line
                .split_once(',')
                .unwrap()
                .1
                .split_whitespace()
                .map(|v| v.parse().unwrap())
                .collect();
            let path = dir.join(format!("row{i}.png"));
            ImageBuffer::<Luma<u8>, _>::from_raw(48, 48, pixels)
                .unwrap()
                .save(&path)
                .unwrap();
            (path.clone(), std::fs::read(&path).unwrap())
        })
        .collect()
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wgfer-serve-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Class → probability for each file, from `wgfer predict --model fer5 --json
/// --no-detect` (these are whole 48x48 faces, classified whole by
/// `?detect=false`; servers compared with it are given `--model fer5` too).
fn predict_cli(files: &[PathBuf]) -> Vec<serde_json::Map<String, Value>> {
    let out = Command::new(env!("CARGO_BIN_EXE_wgfer"))
        .args(["predict", "--model", "fer5"])
        .arg("--json")
        .arg("--no-detect")
        .args(files)
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let all: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    all.iter()
        .map(|o| {
            o["faces"][0]["probabilities"]
                .as_object()
                .expect("probabilities")
                .clone()
        })
        .collect()
}

/// The server's answer for a whole-image face matches `want` to 1e-5, with
/// the classes in the model's order.
fn check_face(got: &Value, want: &serde_json::Map<String, Value>, what: &str) {
    let faces = got["faces"]
        .as_array()
        .unwrap_or_else(|| panic!("{what}: {got}"));
    assert_eq!(faces.len(), 1, "{what}: {got}");
    let face = &faces[0];
    assert_eq!(face["box"], serde_json::json!([0, 0, 48, 48]), "{what}");
    assert_eq!(face["score"], Value::Null, "{what}");
    let probs = face["probabilities"].as_object().unwrap();
    let mut got_classes: Vec<&String> = probs.keys().collect();
    let mut want_classes: Vec<&String> = want.keys().collect();
    got_classes.sort();
    want_classes.sort();
    assert_eq!(got_classes, want_classes, "{what}");
    let mut best = ("", -1.0);
    for (class, p) in probs {
        let p = p.as_f64().unwrap();
        let w = want[class].as_f64().unwrap();
        assert!(
            (p - w).abs() <= 1e-5,
            "{what}: {class} {p} vs predict's {w}"
        );
        if p > best.1 {
            best = (class, p);
        }
    }
    assert_eq!(face["prediction"], best.0, "{what}");
}

// ------------------------------------------------------------ the tests

/// Same answers as `wgfer predict`; 32 concurrent clients, each with its own
/// face, each get their own answer; and they shared GPU batches.
#[test]
fn answers_match_predict_and_concurrent_clients_each_get_their_own() {
    let dir = temp_dir("concurrent");
    let faces = face_pngs(32, &dir);
    let files: Vec<PathBuf> = faces.iter().map(|(p, _)| p.clone()).collect();
    let want = predict_cli(&files);
    // Distinct faces give distinct answers, or crossing would go unseen.
    assert_ne!(want[0], want[1]);

    // A wide window so that the 32 requests surely meet in batches.
    let mut server = Server::start(&[
        "--model",
        "fer5",
        "--max-batch",
        "16",
        "--max-wait-ms",
        "300",
    ]);
    let url = server.url("/predict?detect=false");

    // One at a time first: raw body, then the same as a multipart form.
    let (status, got) = post(&url, &faces[0].1);
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["width"], 48);
    assert_eq!(got["height"], 48);
    check_face(&got, &want[0], "raw body");
    // The keys in the documented order, the classes in the model's order
    // (serde_json's Value sorts them, so look at the text).
    let text = agent()
        .post(&url)
        .send(&faces[0].1[..])
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    let keys = [
        "width",
        "height",
        "faces",
        "box",
        "score",
        "prediction",
        "probabilities",
    ];
    let at: Vec<usize> = keys
        .iter()
        .map(|k| text.find(&format!("\"{k}\"")).unwrap())
        .collect();
    assert!(at.is_sorted(), "keys out of order: {text}");
    let probabilities = &text[*at.last().unwrap()..];
    let classes = ["anger", "disgust", "sad", "happiness", "surprise"];
    let at: Vec<usize> = classes
        .iter()
        .map(|k| probabilities.find(&format!("\"{k}\"")).unwrap())
        .collect();
    assert!(at.is_sorted(), "classes out of order: {text}");
    let (status, got) = post_form(&url, "image", &faces[0].1);
    assert_eq!(status, 200, "{got}");
    check_face(&got, &want[0], "multipart");

    let start = Arc::new(Barrier::new(faces.len()));
    let clients: Vec<_> = faces
        .iter()
        .enumerate()
        .map(|(i, (_, png))| {
            let (png, url, start) = (png.clone(), url.clone(), Arc::clone(&start));
            std::thread::spawn(move || {
                start.wait();
                (i, post(&url, &png))
            })
        })
        .collect();
    for client in clients {
        let (i, (status, got)) = client.join().unwrap();
        assert_eq!(status, 200, "client {i}: {got}");
        check_face(&got, &want[i], &format!("client {i}"));
    }

    server.terminate();
    assert!(server.wait(Duration::from_secs(20)).success());
    let log = server.log();
    assert!(log.contains("POST /predict 200 faces=1 "), "{log}");
    // "served 34 faces in N batches (mean M, largest L)"
    let largest: usize = log
        .split("largest ")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no batch summary:\n{log}"));
    assert!(
        (2..=16).contains(&largest),
        "largest batch {largest}:\n{log}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Every bad input gets its status and a JSON error; the server lives on.
#[test]
fn bad_inputs_get_their_status_and_the_server_lives_on() {
    let dir = temp_dir("bad");
    let png = face_pngs(1, &dir).remove(0).1;
    let server = Server::start(&["--model", "fer5"]);
    let url = server.url("/predict");
    let error_status = |(status, body): (u16, Value)| {
        assert!(
            body["error"].is_string(),
            "status {status}: no JSON error: {body}"
        );
        status
    };

    assert_eq!(error_status(post(&url, b"")), 400, "empty");
    assert_eq!(
        error_status(post(&url, &png[..png.len() / 2])),
        400,
        "truncated PNG"
    );
    assert_eq!(error_status(post(&url, b"just some text\n")), 400, "text");
    let mut corrupt = png.clone();
    for b in &mut corrupt[40..60] {
        *b ^= 0x5a;
    }
    assert_eq!(error_status(post(&url, &corrupt)), 400, "corrupt PNG");
    assert_eq!(
        error_status(post_form(&url, "photo", &png)),
        400,
        "form without `image`"
    );
    assert_eq!(
        error_status(post(&server.url("/predict?detect=maybe"), &png)),
        400,
        "bad query"
    );
    // A decompression bomb: a tiny file claiming 30,000 x 30,000 pixels.
    let (status, body) = post(&url, &common::png_claiming(30_000));
    assert_eq!(error_status((status, body.clone())), 413, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("30000x30000"),
        "{body}"
    );
    assert_eq!(error_status(get(&server.url("/nope"))), 404, "unknown path");
    assert_eq!(error_status(get(&url)), 405, "GET /predict");
    assert_eq!(
        error_status(answer(
            agent().delete(server.url("/health")).call().unwrap()
        )),
        405,
        "DELETE /health"
    );

    // A body of 100 GB announced: refused from its headers, at once.
    let start = Instant::now();
    let reply = raw_exchange(
        &server.addr(),
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000000\r\n\r\n",
        Duration::from_secs(60),
    );
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    assert!(reply.contains("\"error\""), "{reply}");
    assert!(start.elapsed() < Duration::from_secs(30));
    // One that does not say its length (chunked) and runs past the limit
    // (20 MB by default) is cut off there.
    let reply = chunked_flood(&server.addr(), 25_000_000);
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");

    let (status, health) = get(&server.url("/health"));
    assert_eq!(status, 200);
    assert_eq!(health["status"], "ok");
    assert_eq!(health["model"], "fer5");
    assert!(
        health["adapter"].as_str().is_some_and(|a| !a.is_empty()),
        "{health}"
    );
    assert_eq!(health["classes"].as_array().unwrap().len(), 5, "{health}");
    let mut page = agent().get(&server.url("/api")).call().unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.body_mut()
            .read_to_string()
            .unwrap()
            .contains("POST /predict")
    );
    // And it still classifies.
    assert_eq!(post(&server.url("/predict?detect=false"), &png).0, 200);

    let log = server.log();
    for line in [
        "POST /predict 400 faces=0",
        "POST /predict 413 faces=0",
        "GET /nope 404 faces=0",
    ] {
        assert!(log.contains(line), "no `{line}` in the log:\n{log}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Clients that send half a request and stall hold up no one, and are cut
/// off after the timeout (408 when the headers came, dropped when not).
#[test]
fn stalled_clients_do_not_block_others_and_are_cut_off() {
    let dir = temp_dir("stall");
    let png = face_pngs(1, &dir).remove(0).1;
    let server = Server::start(&["--timeout", "3"]);
    let addr = server.addr();

    let mut half_headers = TcpStream::connect(&addr).unwrap();
    half_headers
        .write_all(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Le")
        .unwrap();
    let mut half_body = TcpStream::connect(&addr).unwrap();
    half_body
        .write_all(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n\x89PNG\r\n")
        .unwrap();

    // While both stall, others are served.
    for _ in 0..3 {
        let (status, body) = post(&server.url("/predict?detect=false"), &png);
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(get(&server.url("/health")).0, 200);

    // Then the stalled ones are let go.
    let limit = Some(Duration::from_secs(60));
    half_body.set_read_timeout(limit).unwrap();
    let mut reply = String::new();
    let _ = half_body.read_to_string(&mut reply);
    assert!(reply.starts_with("HTTP/1.1 408"), "stalled body: {reply:?}");
    half_headers.set_read_timeout(limit).unwrap();
    let start = Instant::now();
    let mut rest = vec![];
    let ended = half_headers.read_to_end(&mut rest);
    let timed_out = ended.as_ref().is_err_and(|e| {
        matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        )
    });
    assert!(
        !timed_out && start.elapsed() < Duration::from_secs(50),
        "stalled headers kept open"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// SIGTERM: requests in flight are answered, then the server exits 0.
#[test]
fn sigterm_finishes_the_requests_in_flight_and_exits_zero() {
    let dir = temp_dir("sigterm");
    let faces = face_pngs(4, &dir);
    let files: Vec<PathBuf> = faces.iter().map(|(p, _)| p.clone()).collect();
    let want = predict_cli(&files);
    // A 2-second batch window keeps the requests in flight when the signal
    // comes.
    let mut server = Server::start(&["--model", "fer5", "--quiet", "--max-wait-ms", "2000"]);
    let url = server.url("/predict?detect=false");
    let clients: Vec<_> = faces
        .iter()
        .map(|(_, png)| {
            let (png, url) = (png.clone(), url.clone());
            std::thread::spawn(move || post(&url, &png))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1000));
    let signalled = Instant::now();
    server.terminate();
    for (i, client) in clients.into_iter().enumerate() {
        let (status, got) = client.join().unwrap();
        assert_eq!(status, 200, "client {i}: {got}\n{}", server.log());
        check_face(&got, &want[i], &format!("client {i}"));
    }
    let status = server.wait(Duration::from_secs(15));
    assert!(status.success(), "{status:?}\n{}", server.log());
    assert!(signalled.elapsed() < Duration::from_secs(15));
    // --quiet: no request lines.
    let log = server.log();
    assert!(!log.contains("POST /predict"), "{log}");
    // Gone: new connections are refused.
    assert!(TcpStream::connect(server.addr()).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A real photo: the same faces (boxes, scores) and probabilities as
/// `wgfer predict --json` on the file; the photo without people has none.
#[test]
fn a_photo_gets_the_faces_and_probabilities_predict_gives() {
    let server = Server::start(&["--quiet"]);
    let photos = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/photos");
    let files = [photos.join("astronaut.jpg"), photos.join("coffee.jpg")];
    let out = Command::new(env!("CARGO_BIN_EXE_wgfer"))
        .args(["predict", "--json"])
        .args(&files)
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .output()
        .unwrap();
    let want: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    for (file, want) in files.iter().zip(&want) {
        let (status, got) = post(
            &format!("{}/predict", server.base),
            &std::fs::read(file).unwrap(),
        );
        assert_eq!(status, 200, "{got}");
        assert_eq!(got["width"], want["width"]);
        assert_eq!(got["height"], want["height"]);
        assert!(
            got.get("input").is_none(),
            "an HTTP answer names no file: {got}"
        );
        // Both use the model for photos by default, and say so.
        assert_eq!(got["model"], "fer7", "{got}");
        assert_eq!(want["model"], "fer7", "{want}");
        let (gf, wf) = (
            got["faces"].as_array().unwrap(),
            want["faces"].as_array().unwrap(),
        );
        assert_eq!(gf.len(), wf.len(), "{}: {got}", file.display());
        for (g, w) in gf.iter().zip(wf) {
            assert_eq!(g["box"], w["box"]);
            assert_eq!(g["score"], w["score"]);
            assert_eq!(g["prediction"], w["prediction"]);
            for (class, p) in w["probabilities"].as_object().unwrap() {
                let d = (g["probabilities"][class].as_f64().unwrap() - p.as_f64().unwrap()).abs();
                assert!(d < 1e-5, "{class}: {d}");
            }
        }
    }
    assert_eq!(
        want[0]["faces"].as_array().unwrap().len(),
        1,
        "the astronaut"
    );
    assert!(
        want[1]["faces"].as_array().unwrap().is_empty(),
        "the coffee cup"
    );
}

/// `GET /` is the browser page with its files (the plans recorded with the
/// portable kernels), `GET /api` documents the API.
#[test]
fn the_browser_page_and_its_plans_are_served() {
    let server = Server::start(&["--quiet"]);
    let text = |path: &str| {
        let mut response = agent()
            .get(format!("{}{path}", server.base))
            .call()
            .expect("GET");
        let kind = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        (
            response.status().as_u16(),
            kind,
            response.body_mut().read_to_string().unwrap(),
        )
    };
    let (status, kind, body) = text("/");
    assert_eq!(status, 200);
    assert!(kind.starts_with("text/html"), "{kind}");
    assert!(
        body.contains("facial expressions in your browser"),
        "{body}"
    );
    let (status, _, body) = text("/api");
    assert_eq!(status, 200);
    assert!(body.contains("POST /predict"), "{body}");
    let (status, plan) = get(&format!("{}/plan-b1.json", server.base));
    assert_eq!(status, 200);
    assert_eq!(plan["format"], "wgfer-web-1");
    assert_eq!(plan["batch"], 1);
    let shaders = plan["recording"]["shaders"].as_object().unwrap();
    assert!(
        shaders
            .values()
            .all(|s| !s.as_str().unwrap().contains("enable subgroups")),
        "a browser plan needs no subgroups"
    );
    let (status, manifest) = get(&format!("{}/manifest.json", server.base));
    assert_eq!(status, 200, "{manifest}");
    assert_eq!(manifest["model"], "fer7", "the page names the model");
    let (status, _) = get(&format!("{}/no-such-file.js", server.base));
    assert_eq!(status, 404);
}
