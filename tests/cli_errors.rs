//! Bad input must give a one-line error naming the file and the field, a non-zero exit and no
//! panic. Each case runs the real binary.

use std::path::{Path, PathBuf};
use std::process::Command;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("llm-npu-err-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs `llm-npu args...`, expects failure, returns the single stderr line.
fn expect_error(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_llm-npu")).args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "expected exit 1 (a handled error), got {:?}; stderr:\n{stderr}", out.status.code());
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "expected one error line, got:\n{stderr}");
    lines[0].to_string()
}

fn logits_args<'a>(model: &'a str, ids: &'a str, out: &'a str) -> Vec<&'a str> {
    vec!["logits", "-m", model, "--token-ids", ids, "--out", out]
}

/// A copy of a fixture folder with `edit` applied to its config.json.
fn hf_copy_with_config(tag: &str, edit: impl Fn(&mut serde_json::Value)) -> PathBuf {
    let src = fixtures().join("llama-gqa");
    let dir = tempdir(tag);
    std::fs::copy(src.join("model.safetensors"), dir.join("model.safetensors")).unwrap();
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    dir
}

fn out_path(tag: &str) -> String {
    tempdir(tag).join("out.npy").to_string_lossy().into_owned()
}

#[test]
fn missing_model_file() {
    let e = expect_error(&logits_args("/nonexistent/model.gguf", "1", &out_path("missing")));
    assert!(e.contains("/nonexistent/model.gguf") && e.contains("no such file"), "{e}");
}

#[test]
fn missing_config_json() {
    let dir = tempdir("noconfig");
    let e = expect_error(&logits_args(dir.to_str().unwrap(), "1", &out_path("noconfig")));
    assert!(e.contains("config.json"), "{e}");
}

#[test]
fn truncated_safetensors_header() {
    let dir = hf_copy_with_config("st-trunc", |_| {});
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("model.safetensors"), &bytes[..200]).unwrap();
    let e = expect_error(&logits_args(dir.to_str().unwrap(), "1", &out_path("st-trunc")));
    assert!(e.contains("model.safetensors") && e.contains("header"), "{e}");
}

#[test]
fn truncated_safetensors_data() {
    let dir = hf_copy_with_config("st-data", |_| {});
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("model.safetensors"), &bytes[..bytes.len() - 100]).unwrap();
    let e = expect_error(&logits_args(dir.to_str().unwrap(), "1", &out_path("st-data")));
    assert!(e.contains("model.safetensors"), "{e}");
}

#[test]
fn corrupt_gguf_headers() {
    let src = std::fs::read(fixtures().join("gguf/llama-gqa-f32.gguf")).unwrap();
    let dir = tempdir("gguf");
    let cases: [(&str, Vec<u8>, &str); 4] = [
        ("truncated.gguf", src[..300].to_vec(), "truncated"),
        ("short-data.gguf", src[..src.len() - 64].to_vec(), "past the end"),
        ("version.gguf", [&src[..4], &9u32.to_le_bytes()[..], &src[8..]].concat(), "version 9"),
        ("count.gguf", [&src[..8], &u64::MAX.to_le_bytes()[..], &src[16..]].concat(), "impossible counts"),
    ];
    for (name, bytes, want) in cases {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        let e = expect_error(&logits_args(p.to_str().unwrap(), "1", &out_path("gguf")));
        assert!(e.contains(name) && e.contains(want), "{name}: {e}");
    }
}

#[test]
fn fuzzer_findings_are_one_line_errors() {
    // tests/fixtures/regressions: inputs the fuzz targets (fuzz/) found to crash us, each now a
    // one-line error. tokenizer-json-broken-decoder.json: the tokenizers crate panicked on it.
    let dir = fixtures().join("regressions");
    let tok = dir.join("tokenizer-json-broken-decoder.json");
    let e = expect_error(&["run", "-m", fixtures().join("llama-gqa").to_str().unwrap(), "--tokenizer", tok.to_str().unwrap(), "-p", "hi"]);
    assert!(e.contains("not a usable tokenizer.json"), "{e}");
}

/// A GGUF v3 header claiming `tensors` tensors and `kvs` metadata entries, then `rest`.
fn gguf_header(tensors: u64, kvs: u64, rest: &[u8]) -> Vec<u8> {
    [&b"GGUF"[..], &3u32.to_le_bytes(), &tensors.to_le_bytes(), &kvs.to_le_bytes(), rest].concat()
}

fn gguf_string(s: &str) -> Vec<u8> {
    [&(s.len() as u64).to_le_bytes()[..], s.as_bytes()].concat()
}

#[test]
fn absurd_sizes_in_a_gguf_file_are_refused_before_anything_is_allocated() {
    // 2^40 tensors, 2^40 metadata entries, a 4 GB string, a 1 TB tensor, each in a file of a
    // few dozen bytes: a one-line error at once (the test's time and memory show nothing was
    // allocated for them: each run takes milliseconds).
    let dir = tempdir("absurd");
    let arch = [gguf_string("general.architecture"), 8u32.to_le_bytes().to_vec(), gguf_string("llama")].concat();
    let huge_string = [gguf_string("general.architecture"), 8u32.to_le_bytes().to_vec(), (4u64 << 30).to_le_bytes().to_vec(), b"llama".to_vec()].concat();
    let dims = [(1u64 << 20).to_le_bytes(), (1u64 << 18).to_le_bytes()].concat();
    let tensor = [gguf_string("token_embd.weight"), 2u32.to_le_bytes().to_vec(), dims, 0u32.to_le_bytes().to_vec(), 0u64.to_le_bytes().to_vec()].concat();
    let cases = [
        ("tensors.gguf", gguf_header(1 << 40, 0, &[0; 64]), "impossible counts: 1099511627776 tensors"),
        ("metadata.gguf", gguf_header(0, 1 << 40, &[0; 64]), "1099511627776 metadata entries"),
        ("string.gguf", gguf_header(0, 1, &huge_string), "needs 4294967296 bytes"),
        ("tensor.gguf", gguf_header(1, 1, &[arch, tensor, vec![0; 64]].concat()), "+1099511627776 bytes) lies past the end"),
    ];
    for (name, bytes, want) in cases {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        let t0 = std::time::Instant::now();
        let e = expect_error(&["inspect", "-m", p.to_str().unwrap()]);
        assert!(e.contains(want), "{name}: {e}");
        assert!(t0.elapsed() < std::time::Duration::from_secs(5), "{name} took {:?}", t0.elapsed());
    }
    // safetensors: a header said to be 2^40 bytes long, a tensor said to span 1 TB.
    let tensor = br#"{"model.embed_tokens.weight": {"dtype": "F32", "shape": [1048576, 262144], "data_offsets": [0, 1099511627776]}}"#;
    let cases: [(&str, Vec<u8>, &str); 2] = [
        ("header", [&(1u64 << 40).to_le_bytes()[..], b"{}"].concat(), "header too large"),
        ("tensor", [&(tensor.len() as u64).to_le_bytes()[..], tensor, &[0; 16]].concat(), "not fully covered"),
    ];
    for (name, bytes, want) in cases {
        let d = dir.join(format!("st-{name}"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::copy(fixtures().join("llama-gqa/config.json"), d.join("config.json")).unwrap();
        std::fs::write(d.join("model.safetensors"), bytes).unwrap();
        let e = expect_error(&["inspect", "-m", d.to_str().unwrap()]);
        assert!(e.contains(want), "safetensors {name}: {e}");
    }
}

/// The GQA fixture's F32 GGUF with its first tensor (token_embd, [256, 32]) retagged as ggml type
/// `ggml_type`, written to a temp file.
fn gguf_with_embedding_type(tag: &str, ggml_type: u32) -> PathBuf {
    let mut bytes = std::fs::read(fixtures().join("gguf/llama-gqa-f32.gguf")).unwrap();
    let name = b"token_embd.weight";
    let at = bytes.windows(name.len()).position(|w| w == name).unwrap() + name.len();
    let type_at = at + 4 + 2 * 8; // n_dims (u32), two u64 dims, then the u32 type
    bytes[type_at..type_at + 4].copy_from_slice(&ggml_type.to_le_bytes());
    let p = tempdir(tag).join(format!("{tag}.gguf"));
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn unsupported_tensor_type_in_gguf() {
    // IQ2_XXS (16), MXFP4 (39): the reader must name the tensor and the type.
    for (ggml_type, name) in [(16, "IQ2_XXS"), (35, "TQ2_0"), (39, "MXFP4"), (1000, "unknown")] {
        let p = gguf_with_embedding_type(&format!("t{ggml_type}"), ggml_type);
        let e = expect_error(&logits_args(p.to_str().unwrap(), "1", &out_path("unsupported")));
        assert!(e.contains("token_embd.weight") && e.contains(name) && e.contains("not supported"), "{e}");
    }
}

#[test]
fn a_block_type_whose_rows_are_not_whole_blocks_is_refused() {
    // Q4_K blocks hold 256 weights; the embedding's rows have 32.
    let p = gguf_with_embedding_type("q4k-rows", 12);
    let e = expect_error(&logits_args(p.to_str().unwrap(), "1", &out_path("q4k-rows")));
    assert!(e.contains("token_embd.weight") && e.contains("Q4_K") && e.contains("blocks of 256"), "{e}");
}

#[test]
fn tensor_shape_mismatch_names_the_tensor() {
    let dir = hf_copy_with_config("shape", |c| c["intermediate_size"] = 48.into());
    let e = expect_error(&logits_args(dir.to_str().unwrap(), "1", &out_path("shape")));
    assert!(e.contains("model.layers.0.mlp.gate_proj.weight") && e.contains("[64, 32]") && e.contains("[48, 32]"), "{e}");
}

#[test]
fn bad_config_field_type() {
    let dir = hf_copy_with_config("field", |c| c["hidden_size"] = "big".into());
    let e = expect_error(&logits_args(dir.to_str().unwrap(), "1", &out_path("field")));
    assert!(e.contains("config.json") && e.contains("hidden_size"), "{e}");
}

#[test]
fn unknown_architecture_lists_the_supported_ones() {
    let dir = hf_copy_with_config("arch", |c| c["model_type"] = "gpt_neox".into());
    let e = expect_error(&logits_args(dir.to_str().unwrap(), "1", &out_path("arch")));
    assert!(e.contains("gpt_neox") && e.contains("llama") && e.contains("qwen2"), "{e}");
}

#[test]
fn token_id_out_of_range() {
    let m = fixtures().join("llama-gqa");
    let e = expect_error(&logits_args(m.to_str().unwrap(), "1,256", &out_path("oor")));
    assert!(e.contains("256") && e.contains("out of range"), "{e}");
}

#[test]
fn prompt_longer_than_the_context() {
    let m = fixtures().join("llama-gqa"); // max_position_embeddings 512
    let ids = vec!["1"; 513].join(",");
    let e = expect_error(&logits_args(m.to_str().unwrap(), &ids, &out_path("ctx")));
    assert!(e.contains("513") && e.contains("context of 512"), "{e}");
}

#[test]
fn llama2c_header_that_is_not_a_checkpoint() {
    let p = tempdir("l2c").join("garbage.bin");
    std::fs::write(&p, b"this is not a llama2.c checkpoint at all, just text").unwrap();
    let e = expect_error(&logits_args(p.to_str().unwrap(), "1", &out_path("l2c")));
    assert!(e.contains("garbage.bin") && e.contains("header."), "{e}");
}

#[test]
fn run_without_a_tokenizer_says_how_to_fix_it() {
    let m = fixtures().join("llama-gqa");
    let e = expect_error(&["run", "-m", m.to_str().unwrap(), "-p", "hi", "-n", "2"]);
    assert!(e.contains("--tokenizer"), "{e}");
}

#[test]
fn a_file_inside_an_hf_folder_says_to_pass_the_folder() {
    let f = fixtures().join("llama-gqa/model.safetensors");
    let e = expect_error(&logits_args(f.to_str().unwrap(), "1", &out_path("file")));
    assert!(e.contains("pass the Hugging Face model folder"), "{e}");
}

#[test]
fn llama2c_header_whose_sizes_overflow() {
    // dim 2^20, hidden 174762, 2^24 layers: the layer block wraps around 2^64 bytes.
    let mut bytes = Vec::new();
    for v in [1i32 << 20, 174762, 1 << 24, 1, 1, 1, 1] {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    bytes.resize(12_582_940, 0);
    let p = tempdir("l2c-ovf").join("overflow.bin");
    std::fs::write(&p, bytes).unwrap();
    let e = expect_error(&logits_args(p.to_str().unwrap(), "0", &out_path("l2c-ovf")));
    assert!(e.contains("overflow.bin") && e.contains("truncated"), "{e}");
}

#[test]
fn absurd_layer_count_fails_on_a_missing_tensor() {
    let dir = hf_copy_with_config("layers", |c| c["num_hidden_layers"] = serde_json::json!(100000000000000000u64));
    let e = expect_error(&logits_args(dir.to_str().unwrap(), "1", &out_path("layers")));
    assert!(e.contains("model.layers.2") && e.contains("missing"), "{e}");
}

#[test]
fn inspect_token_options_need_activation_stats() {
    let m = fixtures().join("llama-gqa");
    let e = expect_error(&["inspect", "-m", m.to_str().unwrap(), "--random-tokens", "10"]);
    assert!(e.contains("--activation-stats"), "{e}");
}

#[test]
fn a_huge_npu_chunk_size_is_capped_at_the_context() {
    let m = fixtures().join("llama-gqa");
    let out = out_path("chunk");
    let o = Command::new(env!("CARGO_BIN_EXE_llm-npu"))
        .args(["logits", "-m", m.to_str().unwrap(), "--token-ids", "1,2,3", "--out", &out, "--backend", "npu", "--chunk-size", "18446744073709551615", "--no-smaller-chunks", "-v"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("chunk sizes [512]"), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn calibrate_refuses_backend_options() {
    let m = fixtures().join("llama-gqa");
    let e = expect_error(&["calibrate", "-m", m.to_str().unwrap(), "--calibration", "x.json"]);
    assert!(e.contains("--out"), "{e}");
}

#[test]
fn a_calibration_for_a_model_of_another_width_is_refused() {
    // Same layer count but one input one channel narrower: the file does not fit this model.
    let m = fixtures().join("llama-gqa");
    let mut cal: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(m.join("llm-npu-calibration.json")).unwrap()).unwrap();
    cal["points"][0]["channel_max"].as_array_mut().unwrap().pop();
    let p = tempdir("cal").join("cal.json");
    std::fs::write(&p, cal.to_string()).unwrap();
    let e = expect_error(&["logits", "-m", m.to_str().unwrap(), "--token-ids", "1", "--out", &out_path("cal"), "--backend", "npu", "--calibration", p.to_str().unwrap()]);
    assert!(e.contains("cal.json") && e.contains("layer 0 attn_in") && e.contains("another model"), "{e}");
}

/// The error of `logits --backend npu` on the GQA fixture with `extra` options.
fn npu_logits_error(extra: &[&str]) -> String {
    let m = fixtures().join("llama-gqa");
    let out = out_path("npu-options");
    let mut a = logits_args(m.to_str().unwrap(), "1,2", &out);
    a.extend(["--backend", "npu"]);
    a.extend(extra);
    expect_error(&a)
}

#[test]
fn bad_shadow_options_are_refused_with_the_option_named() {
    let npu = npu_logits_error;
    assert!(npu(&["--shadow-keep", "1.5"]).contains("--shadow-keep"));
    assert!(npu(&["--shadow-keep", "NaN"]).contains("--shadow-keep"));
    assert!(npu(&["--shadow-ratio", "0.5"]).contains("--shadow-ratio"));
    assert!(npu(&["--no-shadow", "--shadow-hot-only"]).contains("--no-shadow"));
    let m = fixtures().join("llama-gqa");
    let out = out_path("shadow");
    let mut f32_args = logits_args(m.to_str().unwrap(), "1,2", &out);
    f32_args.push("--no-shadow");
    assert!(expect_error(&f32_args).contains("--backend npu"));
    f32_args.pop();
    f32_args.push("--int8-attention");
    assert!(expect_error(&f32_args).contains("--int8-attention"));
    f32_args.pop();
    f32_args.push("--bf16-attention");
    assert!(expect_error(&f32_args).contains("--bf16-attention"));
    // Two attention precisions at once: clap's usage error (exit 2), naming both.
    let both = Command::new(env!("CARGO_BIN_EXE_llm-npu")).args(["logits", "-m", m.to_str().unwrap(), "--token-ids", "1,2", "--out", &out, "--backend", "npu", "--bf16-attention", "--int8-attention"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&both.stderr);
    assert!(both.status.code() == Some(2) && stderr.contains("--bf16-attention") && stderr.contains("--int8-attention"), "{stderr}");
}

#[test]
fn inspect_with_a_calibration_prints_the_shadow_plan() {
    let m = fixtures().join("llama-gqa");
    let cal = m.join("llm-npu-calibration.json");
    let o = Command::new(env!("CARGO_BIN_EXE_llm-npu")).args(["inspect", "-m", m.to_str().unwrap(), "--calibration", cal.to_str().unwrap(), "--shadow-keep", "0.5"]).output().unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(text.contains("npu plan from") && text.contains("--shadow-keep 0.5"), "{text}");
    // One row per layer and input, each saying whether its layer is kept and which rule it got.
    let rows: Vec<&str> = text.lines().filter(|l| l.contains("attn_in") || l.contains("o_in") || l.contains("ffn_in") || l.contains("down_in")).filter(|l| l.contains(" yes ") || l.contains(" no ")).collect();
    assert_eq!(rows.len(), 4 * 2, "{text}");
    assert!(rows.iter().any(|l| l.contains(" no ") && l.contains(" max ")), "{text}");
}

#[test]
fn bad_executor_options_are_refused() {
    let npu = npu_logits_error;
    for bad in ["0:1", "2", "a:b", "2:0", ""] {
        assert!(npu(&["--scheduler", "ooo", "--split", bad]).contains("--split"), "{bad}");
    }
    assert!(npu(&["--split", "2:2"]).contains("--scheduler"));
}

/// The one error line of `logits --backend npu --accelerator ACCEL` on the GQA fixture, with the
/// environment variables `env` set (a None value removes it).
fn accelerator_error(accelerator: &str, env: &[(&str, Option<&std::ffi::OsStr>)]) -> String {
    let m = fixtures().join("llama-gqa");
    let out = out_path(accelerator);
    let mut c = Command::new(env!("CARGO_BIN_EXE_llm-npu"));
    c.args(logits_args(m.to_str().unwrap(), "1,2", &out)).args(["--backend", "npu", "--accelerator", accelerator]);
    for (k, v) in env {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    let o = c.output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    lines[0].to_string()
}

/// The value of `var`, or None after a loud SKIPPED line (libtest captures eprintln!).
fn env_or_skip(var: &str, test: &str) -> Option<std::ffi::OsString> {
    let v = std::env::var_os(var);
    if v.is_none() {
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "\n!!!!!!!! SKIPPED: {var} is not set (.ci/run sets it); test `{test}` did not run !!!!!!!!\n");
    }
    v
}

#[test]
fn a_missing_onnx_runtime_or_unknown_accelerator_is_one_line() {
    let m = fixtures().join("llama-gqa");
    let dylib = |p: &str| accelerator_error("ort-cpu", &[("ORT_DYLIB_PATH", Some(std::ffi::OsStr::new(p)))]);
    let e = accelerator_error("ort-cpu", &[("ORT_DYLIB_PATH", None)]);
    assert!(e.contains("ORT_DYLIB_PATH") && e.contains("pip install onnxruntime"), "{e}");
    let e = dylib("/nonexistent/libonnxruntime.so");
    assert!(e.contains("/nonexistent/libonnxruntime.so"), "{e}");
    // A file that is not the library.
    let e = dylib(m.join("config.json").to_str().unwrap());
    assert!(e.contains("config.json") && e.contains("ONNX Runtime"), "{e}");
    assert!(npu_logits_error(&["--accelerator", "tpu"]).contains("--accelerator tpu"));
}

#[test]
fn a_missing_qnn_execution_provider_is_one_line() {
    let Some(dylib) = env_or_skip("ORT_DYLIB_PATH", "a_missing_qnn_execution_provider_is_one_line") else { return };
    let e = accelerator_error("qnn", &[("ORT_DYLIB_PATH", Some(&dylib)), ("LLM_NPU_QNN_DIR", Some(std::ffi::OsStr::new("/nonexistent/qnn")))]);
    assert!(e.contains("/nonexistent/qnn") && e.contains("pip install onnxruntime-qnn"), "{e}");
}

#[test]
fn an_onnx_runtime_too_old_is_one_line() {
    // `.ci/run` fetches ONNX Runtime 1.20 (before the Model Editor API) into LLM_NPU_OLD_ORT.
    let Some(old) = env_or_skip("LLM_NPU_OLD_ORT", "an_onnx_runtime_too_old_is_one_line") else { return };
    let e = accelerator_error("ort-cpu", &[("ORT_DYLIB_PATH", Some(&old))]);
    assert!(e.contains("1.20.1") && e.contains("1.22"), "{e}");
}
