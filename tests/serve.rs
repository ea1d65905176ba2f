//! `llamart serve` end to end: the official `openai` Python client drives a spawned server
//! (tests/openai_client.py, in the venv tools/test-venv makes), and a shutdown lets a running
//! stream finish and exits 0.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use llama_e2e::{bin, compiled_plan, repo_root};

const MODEL: &str = "smollm2-135m-q4_1";

/// A running `llamart serve` and what it has written to stderr.
struct Server {
    child: Child,
    addr: String,
    log: Arc<Mutex<String>>,
}

impl Server {
    fn start(extra: &[&str]) -> Server {
        let plan = compiled_plan(MODEL, &[]);
        let mut child = Command::new(bin("llamart"))
            .arg("serve")
            .arg(&plan)
            .args(["--port", "0", "--backend", "cpu", "-t", "2"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("llamart: listening on http://") {
                    let _ = tx.send(Ok(addr.to_string()));
                }
                if line.starts_with("llamart: ready") {
                    let _ = tx.send(Err(()));
                }
                sink.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        // A loaded machine may take long to load the plan; requests before "ready" get 503.
        let mut addr = None;
        let mut ready = false;
        let deadline = Instant::now() + Duration::from_secs(600);
        while !ready && Instant::now() < deadline {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(Ok(a)) => addr = Some(a),
                Ok(Err(())) => ready = true,
                Err(_) => {
                    if let Some(status) = child.try_wait().unwrap() {
                        panic!("the server exited ({status}): {}", log.lock().unwrap());
                    }
                }
            }
        }
        assert!(
            ready,
            "the server never became ready: {}",
            log.lock().unwrap()
        );
        let addr =
            addr.unwrap_or_else(|| panic!("the server never listened: {}", log.lock().unwrap()));
        Server { child, addr, log }
    }

    /// Sends SIGTERM and waits for the exit status.
    fn terminate(&mut self) -> std::process::ExitStatus {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the server did not stop: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The test venv's Python with the pinned `openai` package (tools/test-venv), or None outside CI.
fn python() -> Option<PathBuf> {
    let python = repo_root().join("target/test-venv/bin/python");
    if python.is_file() {
        return Some(python);
    }
    let msg = "NO TEST VENV: the OpenAI client tests need target/test-venv (run tools/test-venv)";
    assert!(std::env::var_os("CI").is_none(), "{msg}");
    eprintln!("\n*** {msg}: skipped ***\n");
    None
}

#[test]
fn the_openai_client_gets_what_it_expects() {
    let Some(python) = python() else { return };
    let mut server = Server::start(&["--api-key", "test-key", "--max-queue", "8"]);
    let out = Command::new(python)
        .arg(repo_root().join("tests/openai_client.py"))
        .arg(format!("http://{}", server.addr))
        .arg("test-key")
        // The plan's 8 sequences plus --max-queue 8.
        .arg("16")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}\nserver:\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.log()
    );
    assert!(stdout.contains("all checks passed"), "{stdout}");
    let status = server.terminate();
    assert!(status.success(), "{status}: {}", server.log());
}

/// One HTTP/1.1 request on a fresh connection; the response as text, read to its end.
fn post(addr: &str, path: &str, body: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    s
}

/// SIGTERM while a stream runs: the stream still ends with its finish reason and [DONE], new
/// connections are refused, and the process exits 0.
#[test]
fn shutdown_finishes_running_streams_and_exits_zero() {
    let mut server = Server::start(&[]);
    let mut stream = post(
        &server.addr,
        "/v1/completions",
        r#"{"prompt": "Once upon a time", "max_tokens": 48, "temperature": 0, "ignore_eos": true, "stream": true}"#,
    );
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("data: {") {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "{}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    let addr = server.addr.clone();
    let status = server.terminate();
    stream.read_to_end(&mut seen).unwrap();
    let text = String::from_utf8_lossy(&seen);
    assert!(status.success(), "{status}: {}", server.log());
    assert!(
        text.contains(r#""finish_reason":"length""#) && text.contains("data: [DONE]"),
        "{text}"
    );
    assert!(
        TcpStream::connect(&addr).is_err(),
        "still accepting after shutdown"
    );
    assert!(
        server.log().contains("llamart: stopped"),
        "{}",
        server.log()
    );
}

/// Bad requests get OpenAI-shaped errors without the client library: the shapes are checked in
/// full by the Python client test; this one runs without the venv.
#[test]
fn errors_have_openais_shape() {
    let server = Server::start(&["--api-key", "k"]);
    let mut s = post(&server.addr, "/v1/completions", r#"{"prompt": "hi"}"#);
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
    assert!(text.contains(r#""code":"invalid_api_key""#), "{text}");
    let mut s = post(&server.addr, "/health", "");
    text.clear();
    s.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 405"), "{text}");
}
