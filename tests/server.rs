//! `llm-npu serve` over real sockets: the official openai Python client (tests/support/
//! openai_client.py, when LLM_NPU_OPENAI_PYTHON names a Python that has it; `.ci/run` installs
//! it), raw HTTP for bad input (each gets its error and the server keeps serving), the prompt
//! cache, and a clean exit on SIGINT.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::server::{http, start, start_with_env};

fn assert_serving(addr: &str) {
    assert_eq!(http(addr, "GET", "/health", "").0, 200, "the server still serves");
}

const MODEL: &str = "tinyllamas-stories-260k-f32";

#[test]
fn bad_requests_get_openai_errors_and_the_server_keeps_serving() {
    let Some(server) = start(&[]) else { return };
    let a = &server.addr;
    let req = |fields: &str| format!("{{\"model\": \"{MODEL}\", {fields}}}");
    let long_prompt = "Once upon a time ".repeat(200);
    for (what, body, status, expect) in [
        ("malformed JSON", "{\"model\": ".to_string(), 400, "not valid JSON"),
        ("not an object", "[1, 2]".to_string(), 400, "JSON object"),
        ("wrong type", req("\"prompt\": \"hi\", \"max_tokens\": \"ten\""), 400, "max_tokens"),
        ("prompt not a string", req("\"prompt\": 42"), 400, "prompt"),
        ("unknown model", "{\"model\": \"gpt-9\", \"prompt\": \"hi\"}".to_string(), 404, "model_not_found"),
        ("prompt longer than the context", req(&format!("\"prompt\": \"{long_prompt}\"")), 400, "context_length_exceeded"),
        ("max_tokens 0", req("\"prompt\": \"hi\", \"max_tokens\": 0"), 400, "at least 1"),
        ("max_tokens huge", req("\"prompt\": \"hi\", \"max_tokens\": 1000000000"), 400, "context_length_exceeded"),
        ("n = 2", req("\"prompt\": \"hi\", \"n\": 2"), 400, "n = 1"),
        ("temperature out of range", req("\"prompt\": \"hi\", \"temperature\": 9"), 400, "temperature"),
    ] {
        let (got, text) = http(a, "POST", "/v1/completions", &body);
        assert_eq!(got, status, "{what}: {text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {text}"));
        assert!(v["error"]["message"].is_string() && v["error"]["type"].is_string(), "{what}: {v}");
        assert!(text.contains(expect), "{what}: {text}");
        assert_serving(a);
    }
    // A 100 MB body is refused from its Content-Length, before it is sent.
    let mut s = TcpStream::connect(a).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 104857600\r\n\r\n{{\"model\"").unwrap();
    let mut buf = [0u8; 2048];
    let n = s.read(&mut buf).unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 413") && head.contains("request_too_large"), "{head}");
    assert_serving(a);
    // Headers sent slowly: after the header timeout (1 s here) a 408 in OpenAI's shape, then the
    // connection closes.
    let t0 = Instant::now();
    let mut s = TcpStream::connect(a).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    for b in b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n" {
        if s.write_all(&[*b]).is_err() || t0.elapsed() > Duration::from_secs(3) {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408") && answer.contains("request_timeout"), "{answer}");
    assert!(t0.elapsed() < Duration::from_secs(6), "the slow connection was held {:?}", t0.elapsed());
    assert_serving(a);
    // Endpoints that do not exist, and chat messages that are not a conversation.
    assert_eq!(http(a, "GET", "/v2/nothing", "").0, 404);
    let (status, text) = http(a, "POST", "/v1/chat/completions", &format!("{{\"model\": \"{MODEL}\", \"messages\": \"hi\"}}"));
    assert!(status == 400 && text.contains("messages"), "{text}");
}

#[test]
fn completions_stream_and_reuse_the_prompt_cache() {
    let Some(server) = start(&[]) else { return };
    let a = &server.addr;
    let body = format!("{{\"model\": \"{MODEL}\", \"prompt\": \"Once upon a time\", \"max_tokens\": 8, \"temperature\": 0}}");
    let (status, first) = http(a, "POST", "/v1/completions", &body);
    assert_eq!(status, 200, "{first}");
    let first: serde_json::Value = serde_json::from_str(&first).unwrap();
    let (_, again) = http(a, "POST", "/v1/completions", &body);
    let again: serde_json::Value = serde_json::from_str(&again).unwrap();
    assert_eq!(first["choices"][0]["text"], again["choices"][0]["text"], "greedy is deterministic");
    let prompt_tokens = again["usage"]["prompt_tokens"].as_u64().unwrap();
    assert_eq!(again["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64(), Some(prompt_tokens - 1), "{again}");
    let (status, sse) = http(a, "POST", "/v1/completions", &body.replace("\"temperature\": 0", "\"temperature\": 0, \"stream\": true"));
    assert_eq!(status, 200);
    let events: Vec<&str> = sse.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
    assert_eq!(events.last(), Some(&"[DONE]"), "{sse}");
    let text: String = events[..events.len() - 1].iter().map(|e| serde_json::from_str::<serde_json::Value>(e).unwrap()["choices"][0]["text"].as_str().unwrap().to_string()).collect();
    assert_eq!(text, first["choices"][0]["text"].as_str().unwrap(), "streamed text = the whole text");
}

#[test]
fn two_documents_stay_cached_in_two_slots_and_the_least_recent_goes_first() {
    let cached = |a: &str, prompt: &str| {
        let body = format!("{{\"model\": \"{MODEL}\", \"prompt\": \"{prompt}\", \"max_tokens\": 4, \"temperature\": 0}}");
        let (status, text) = http(a, "POST", "/v1/completions", &body);
        assert_eq!(status, 200, "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        (v["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap(), v["usage"]["prompt_tokens"].as_u64().unwrap())
    };
    let (doc_a, doc_b) = ("Once upon a time there was a girl named Lily", "The big dog ran to the green park with Tom");
    for (slots, a_again_cached) in [("2", true), ("1", false)] {
        let Some(server) = start(&["--cache-slots", slots]) else { return };
        let a = &server.addr;
        assert_eq!(cached(a, doc_a).0, 0);
        assert!(cached(a, doc_b).0 <= 1, "only BOS in common");
        let (c, n) = cached(a, doc_a);
        assert_eq!(c == n - 1, a_again_cached, "{slots} slot(s): document A again had {c} of {n} tokens cached");
    }
}

#[test]
fn a_full_queue_is_answered_503_and_the_rest_are_served() {
    // One request runs, one may wait; 24 long ones arriving together overflow that.
    let Some(server) = start(&["--max-waiting", "1"]) else { return };
    let a = server.addr.clone();
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(24));
    let handles: Vec<_> = (0..24)
        .map(|i| {
            let (a, barrier) = (a.clone(), barrier.clone());
            std::thread::spawn(move || {
                let body = format!("{{\"model\": \"{MODEL}\", \"prompt\": \"Once upon a time {i}\", \"max_tokens\": 400, \"temperature\": 0.9, \"seed\": {i}}}");
                barrier.wait();
                http(&a, "POST", "/v1/completions", &body)
            })
        })
        .collect();
    let results: Vec<(u16, String)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let busy: Vec<&String> = results.iter().filter(|(s, _)| *s == 503).map(|(_, t)| t).collect();
    assert!(!busy.is_empty() && busy.iter().all(|t| t.contains("server_busy")), "{:?}", results.iter().map(|r| r.0).collect::<Vec<_>>());
    assert!(results.iter().all(|(s, _)| *s == 200 || *s == 503), "{:?}", results.iter().map(|r| r.0).collect::<Vec<_>>());
    assert!(results.iter().any(|(s, _)| *s == 200));
    assert_serving(&a);
}

#[test]
fn a_client_that_disconnects_mid_stream_stops_its_generation() {
    let Some(server) = start(&[]) else { return };
    let a = &server.addr;
    let body = format!("{{\"model\": \"{MODEL}\", \"prompt\": \"Once upon a time\", \"max_tokens\": 500, \"temperature\": 0.9, \"stream\": true}}");
    let mut s = TcpStream::connect(a).unwrap();
    write!(s, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    let mut first = [0u8; 512];
    let n = s.read(&mut first).unwrap();
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
    drop(s);
    // The worker notices at its next sends and counts the job as disconnected, not completed.
    let t0 = Instant::now();
    loop {
        let (_, health) = http(a, "GET", "/health", "");
        let v: serde_json::Value = serde_json::from_str(&health).unwrap();
        if v["requests"]["disconnected"] == 1 {
            assert_eq!(v["requests"]["completed"], 0, "{v}");
            break;
        }
        assert!(v["requests"]["completed"] == 0 && t0.elapsed() < Duration::from_secs(10), "the generation ran on after the client left: {v}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn with_an_api_key_only_bearer_requests_get_in() {
    let Some(server) = start(&["--api-key", "s3cret"]) else { return };
    let a = &server.addr;
    let (status, text) = http(a, "GET", "/v1/models", "");
    assert!(status == 401 && text.contains("invalid_api_key"), "{status} {text}");
    let mut s = TcpStream::connect(a).unwrap();
    write!(s, "GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200") && out.contains(MODEL), "{out}");
    // Without a key the server refuses to listen beyond loopback.
    let out = Command::new(env!("CARGO_BIN_EXE_llm-npu")).args(["serve", "-m", "unused", "--host", "0.0.0.0"]).output().unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("needs --api-key"));
}

#[test]
fn the_official_openai_client_works_against_it() {
    let Some(python) = std::env::var_os("LLM_NPU_OPENAI_PYTHON") else {
        let _ = writeln!(std::io::stderr(), "\n!!!!!!!! SKIPPED: LLM_NPU_OPENAI_PYTHON is not set (a python with `pip install openai`; .ci/run sets it); test `the_official_openai_client_works_against_it` did not run !!!!!!!!\n");
        return;
    };
    let Some(server) = start(&[]) else { return };
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/openai_client.py");
    let out = Command::new(python).arg(script).arg(format!("http://{}/v1", server.addr)).arg(MODEL).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && stdout.contains("all checks passed"), "{stdout}\n{stderr}");
}

#[test]
fn sigint_stops_the_server_cleanly() {
    let Some(mut server) = start(&[]) else { return };
    assert_serving(&server.addr);
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(server.child.id() as i32, libc::SIGINT) };
    let t0 = Instant::now();
    loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "the server did not exit after SIGINT");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn an_idle_npu_server_keeps_its_int8_weights_without_waiting_to_be_stopped() {
    let cache = std::env::temp_dir().join(format!("llm-npu-server-keeps-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&cache);
    let Some(mut server) = start_with_env(&["--backend", "npu"], &[("LLM_NPU_CACHE", &cache)]) else { return };
    let body = format!("{{\"model\": \"{MODEL}\", \"prompt\": \"Once upon a time\", \"max_tokens\": 4}}");
    assert_eq!(http(&server.addr, "POST", "/v1/completions", &body).0, 200);
    let kept = || std::fs::read_dir(cache.join("int8-weights")).map_or(0, |d| d.filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "bin")).count());
    let t0 = Instant::now();
    while kept() == 0 {
        assert!(t0.elapsed() < Duration::from_secs(60), "no int8 weights kept while the server was idle");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_serving(&server.addr);
    // Killed, not stopped: nothing of its own end runs.
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_llm-npu"))
        .args(["run", "-m", server.model.to_str().unwrap(), "--backend", "npu", "-p", "Once", "-n", "1"])
        .env("LLM_NPU_CACHE", &cache)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && stderr.contains("mapped from"), "{stderr}");
    let _ = std::fs::remove_dir_all(&cache);
}
