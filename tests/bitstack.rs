//! BitStack from the command line and the server: `llm-npu bitstack` writes a stack of the
//! trained stories260K that runs at any budget, more memory gives a model closer to the
//! original, the server's /admin/bitstack grows and shrinks it while serving (and repeated
//! cycles do not grow the process), and bad flags or files are one-line errors.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::server::{http, start};

fn llm_npu(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_llm-npu")).args(args).output().unwrap()
}

fn stories() -> Option<PathBuf> {
    Some(common::shared_models("bitstack on stories260K")?.join("stories260K-gguf/tinyllamas-stories-260k-f32.gguf"))
}

/// A 4-block stack of stories260K, made once per test process.
fn stack(model: &Path) -> PathBuf {
    static STACK: OnceLock<PathBuf> = OnceLock::new();
    STACK
        .get_or_init(|| {
            let out = std::env::temp_dir().join(format!("llm-npu-stories-{}.bitstack", std::process::id()));
            let o = llm_npu(&["bitstack", "-m", model.to_str().unwrap(), "--random-tokens", "256", "--iterations", "4", "--score-tokens", "32", "--out", out.to_str().unwrap()]);
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            out
        })
        .clone()
}

fn eval_kl(model: &Path, stack: &Path, memory: &str) -> (f64, f64) {
    let o = llm_npu(&["eval", "-m", model.to_str().unwrap(), "--bitstack", stack.to_str().unwrap(), "--memory", memory, "--random-tokens", "256", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    (v["mean_kld"].as_f64().unwrap(), v["linear_bits_per_weight"].as_f64().unwrap())
}

#[test]
fn a_stack_runs_at_any_budget_and_more_memory_comes_closer() {
    let Some(model) = stories() else { return };
    let stack = stack(&model);
    let (m, s) = (model.to_str().unwrap(), stack.to_str().unwrap());
    let o = llm_npu(&["run", "-m", m, "--bitstack", s, "--memory", "0.4", "-p", "Once upon a time", "-n", "16", "--temp", "0"]);
    assert!(o.status.success() && !o.stdout.is_empty(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("blocks"), "the run says what it holds");
    let (small, small_bits) = eval_kl(&model, &stack, "0.36");
    let (large, large_bits) = eval_kl(&model, &stack, "100");
    assert!(small_bits < large_bits && large < small, "KL {small} at {small_bits:.2} bits, {large} at {large_bits:.2}");
}

#[test]
fn the_server_grows_and_shrinks_its_stack_and_keeps_serving() {
    let Some(model) = stories() else { return };
    let stack = stack(&model);
    let Some(server) = start(&["--bitstack", stack.to_str().unwrap(), "--memory", "0.36"]) else { return };
    let a = &server.addr;
    let size = |body: &str| -> serde_json::Value { serde_json::from_str(body).unwrap() };
    let (status, body) = http(a, "GET", "/admin/bitstack", "");
    assert_eq!(status, 200, "{body}");
    let start_blocks = size(&body)["blocks"].as_u64().unwrap();
    let total = size(&body)["total_blocks"].as_u64().unwrap();
    assert!(start_blocks < total);
    let complete = r#"{"model":"tinyllamas-stories-260k-f32","prompt":"Once upon a time","max_tokens":8,"temperature":0}"#;
    let rss = || -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id())).unwrap();
        status.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)).unwrap().parse().unwrap()
    };
    let mut rss_after_first = 0;
    for cycle in 0..12 {
        let (status, body) = http(a, "POST", "/admin/bitstack", r#"{"memory_mb": 100}"#);
        assert_eq!((status, size(&body)["blocks"].as_u64()), (200, Some(total)), "{body}");
        assert_eq!(http(a, "POST", "/v1/completions", complete).0, 200);
        let (status, body) = http(a, "POST", "/admin/bitstack", &format!(r#"{{"blocks": {start_blocks}}}"#));
        assert_eq!((status, size(&body)["blocks"].as_u64()), (200, Some(start_blocks)), "{body}");
        assert_eq!(http(a, "POST", "/v1/completions", complete).0, 200);
        if cycle == 1 {
            rss_after_first = rss();
        }
    }
    // Each cycle loads and frees the whole stack (0.6 MB); twelve that leaked would show.
    assert!(rss() <= rss_after_first + 256, "RSS grew from {rss_after_first} kB to {} kB over 10 grow/shrink cycles", rss());
    for (body, what) in [(r#"{"blocks": 1}"#, "at least the first"), (r#"{"memory_mb": -3}"#, "positive"), (r#"{"memory_mb": 1, "blocks": 40}"#, "exactly one"), ("[1]", "")] {
        let (status, reply) = http(a, "POST", "/admin/bitstack", body);
        assert!(status == 400 && reply.contains(what), "{body}: {status} {reply}");
    }
    assert_eq!(http(a, "GET", "/health", "").0, 200);
}

#[test]
fn a_server_without_a_stack_says_so() {
    let Some(server) = start(&[]) else { return };
    let (status, body) = http(&server.addr, "POST", "/admin/bitstack", r#"{"memory_mb": 1}"#);
    assert!(status == 404 && body.contains("--bitstack"), "{status} {body}");
}

fn expect_error(args: &[&str]) -> String {
    let o = llm_npu(args);
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "{args:?}: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert!(lines.len() == 1 && !stderr.contains("panicked"), "{args:?}: {stderr}");
    lines[0].to_string()
}

#[test]
fn bad_flags_and_files_are_one_line_errors() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama-gqa");
    let m = fixture.to_str().unwrap();
    let not_a_stack = fixture.join("config.json");
    let run = |extra: &[&str]| expect_error(&[&["logits", "-m", m, "--token-ids", "1,2", "--out", "/dev/null"], extra].concat());
    assert!(run(&["--memory", "10"]).contains("add --bitstack"));
    assert!(run(&["--bitstack", "/nonexistent.bitstack"]).contains("/nonexistent.bitstack"));
    assert!(run(&["--bitstack", not_a_stack.to_str().unwrap()]).contains("not a BitStack file"));
    assert!(run(&["--bitstack", "x", "--memory", "0"]).contains("positive"));
    assert!(run(&["--bitstack", "x", "--backend", "npu"]).contains("--backend f32"));
    assert!(run(&["--bitstack", "x", "--chunk-size", "8"]).contains("--chunk-size"));
    assert!(expect_error(&["eval", "-m", m, "--ref-model", m, "--ref-backend", "npu", "--random-tokens", "8"]).contains("--ref-model"));
    assert!(expect_error(&["bitstack", "-m", m, "--iterations", "0"]).contains("--iterations"));
}
