//! The measurement tools: synth is deterministic and plants real outliers, activation stats find
//! them, bench --json parses, eval of f32 against f32 is exact.

use std::path::{Path, PathBuf};
use std::process::Command;

use llm_npu::model::{self, ActivationObserver, LinearGroup, LoadOptions, Logits};
use llm_npu::quant::stats::ActivationStats;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_llm-npu"))
}

fn run_ok(args: &[&str]) -> String {
    let out = bin().args(args).output().unwrap();
    assert!(out.status.success(), "llm-npu {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("llm-npu-meas-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn synth(tag: &str, extra: &[&str]) -> PathBuf {
    let d = tempdir(tag);
    let mut args = vec!["synth", "--shape", "tiny", "--out", d.to_str().unwrap()];
    args.extend_from_slice(extra);
    run_ok(&args);
    d
}

#[test]
fn synth_is_deterministic_for_a_seed() {
    let a = synth("det-a", &["--seed", "7", "--outliers", "paper"]);
    let b = synth("det-b", &["--seed", "7", "--outliers", "paper"]);
    let c = synth("det-c", &["--seed", "8", "--outliers", "paper"]);
    for f in ["model.safetensors", "tokenizer.json", "config.json", "synth.json"] {
        assert_eq!(std::fs::read(a.join(f)).unwrap(), std::fs::read(b.join(f)).unwrap(), "{f} differs for the same seed");
    }
    assert_ne!(std::fs::read(a.join("model.safetensors")).unwrap(), std::fs::read(c.join("model.safetensors")).unwrap());
}

#[test]
fn synth_bf16_and_the_generated_tokenizer_work() {
    let d = synth("bf16", &["--dtype", "bf16"]);
    let text = run_ok(&["run", "-m", d.to_str().unwrap(), "-p", "hello world", "-n", "8", "--temp", "0"]);
    assert!(!text.is_empty());
    let inspect = run_ok(&["inspect", "-m", d.to_str().unwrap()]);
    assert!(inspect.contains("BF16") && inspect.contains("byte") || inspect.contains("BPE"), "{inspect}");
}

fn planted(dir: &Path) -> Vec<(usize, String, Vec<usize>)> {
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("synth.json")).unwrap()).unwrap();
    v["planted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let mut ch: Vec<usize> = p["channels"].as_array().unwrap().iter().map(|c| c.as_u64().unwrap() as usize).collect();
            ch.sort_unstable();
            (p["layer"].as_u64().unwrap() as usize, p["point"].as_str().unwrap().to_string(), ch)
        })
        .collect()
}

fn random_tokens(n: usize, vocab: usize) -> Vec<u32> {
    (0..n).map(|i| ((i * 7919 + 13) % vocab) as u32).collect()
}

#[test]
fn activation_stats_find_exactly_the_planted_channels() {
    let d = synth("stats", &["--outliers", "paper", "--seed", "3"]);
    let loaded = model::load(&d, &LoadOptions::default()).unwrap();
    let m = &loaded.model;
    let tokens = random_tokens(400, m.config.vocab_size);
    let mut stats = ActivationStats::default();
    m.forward_observed(&tokens, &mut m.new_cache(tokens.len()), Logits::Last, Some(&mut stats)).unwrap();
    let plants = planted(&d);
    assert_eq!(plants.len(), m.config.num_layers * 4);
    let group = m.config.num_heads / m.config.num_kv_heads;
    for layer in 0..m.config.num_layers {
        // 5-15 per layer, counting the o_proj input's kv dimension once (it reaches `group` channels).
        let per_layer: usize = plants.iter().filter(|p| p.0 == layer).map(|p| if p.1 == "o_in" { p.2.len() / group } else { p.2.len() }).sum();
        assert!((5..=15).contains(&per_layer), "layer {layer}: {per_layer} outlier channels");
    }
    for (layer, point, channels) in plants {
        let group = LinearGroup::ALL.into_iter().find(|g| g.input_name() == point).unwrap();
        let ps = &stats.points[&(layer, group)];
        let mut found = ps.outlier_channels(20.0);
        found.sort_unstable();
        assert_eq!(found, channels, "layer {layer} {point}");
    }
}

/// Clips every linear input to `factor` x its typical channel max (from a first pass).
struct Clipper {
    limits: std::collections::HashMap<(usize, LinearGroup), f32>,
}

impl ActivationObserver for Clipper {
    fn observe(&mut self, layer: usize, group: LinearGroup, x: &mut [f32], _cols: usize) {
        let lim = self.limits[&(layer, group)];
        for v in x.iter_mut() {
            *v = v.clamp(-lim, lim);
        }
    }
}

/// Mean KL(original || clipped) of next-token distributions over all positions.
fn clipping_kl(dir: &Path) -> f64 {
    let loaded = model::load(dir, &LoadOptions::default()).unwrap();
    let m = &loaded.model;
    let tokens = random_tokens(256, m.config.vocab_size);
    let mut stats = ActivationStats::default();
    let base = m.forward_observed(&tokens, &mut m.new_cache(tokens.len()), Logits::All, Some(&mut stats)).unwrap();
    let limits = stats.points.iter().map(|(k, ps)| (*k, 4.0 * ps.median_channel_max())).collect();
    let clipped = m.forward_observed(&tokens, &mut m.new_cache(tokens.len()), Logits::All, Some(&mut Clipper { limits })).unwrap();
    let mut acc = llm_npu::measure::eval::EvalAccumulator::default();
    acc.add_window(&tokens, &clipped, &base, m.config.vocab_size).unwrap();
    acc.report().unwrap().mean_kld
}

#[test]
fn planted_outliers_carry_real_signal() {
    // Clipping at 4x the typical channel's max removes the planted outliers: the output must
    // change a lot for the outlier model and hardly at all for the plain one.
    let with = clipping_kl(&synth("sig-paper", &["--outliers", "paper", "--seed", "5"]));
    let without = clipping_kl(&synth("sig-none", &["--seed", "5"]));
    eprintln!("KL after clipping: with planted outliers {with:.4}, without {without:.6}");
    assert!(with > 0.1, "clipping the planted outliers barely changed the output: KL {with}");
    assert!(without < with / 20.0, "KL without outliers {without} vs with {with}");
}

#[test]
fn synthesized_models_are_peaked_like_trained_ones() {
    let d = synth("sharp", &[]);
    let out = run_ok(&["eval", "-m", d.to_str().unwrap(), "--random-tokens", "600", "--json"]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let p = v["mean_top1_prob"].as_f64().unwrap();
    assert!(p >= 0.2, "mean top-1 probability {p}");
}

#[test]
fn eval_f32_against_f32_is_exact() {
    let d = synth("eval", &[]);
    let out = run_ok(&["eval", "-m", d.to_str().unwrap(), "--random-tokens", "300", "--ctx", "128", "--json"]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    for key in ["tokens", "ppl", "ref_ppl", "top1_agreement", "mean_kld", "max_kld"] {
        assert!(v.get(key).is_some(), "missing {key}: {v}");
    }
    assert_eq!(v["top1_agreement"].as_f64().unwrap(), 1.0);
    assert_eq!(v["mean_kld"].as_f64().unwrap(), 0.0);
    assert_eq!(v["ppl"], v["ref_ppl"]);
    assert_eq!(v["tokens"].as_u64().unwrap(), 300 - 3, "three windows of 128/128/44 tokens score 127+127+43");
}

#[test]
fn bench_json_has_one_parsable_object_per_test() {
    let d = synth("bench", &[]);
    let out = run_ok(&["bench", "-m", d.to_str().unwrap(), "-p", "16,32", "-n", "8", "-r", "2", "--json", "-t", "1"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    let tests: Vec<String> = lines
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert_eq!(v["backend"], "f32");
            assert_eq!(v["attention"], "f32");
            assert!(v["tokens_per_s"].as_f64().unwrap() > 0.0 && v["stddev"].as_f64().unwrap() >= 0.0);
            assert_eq!(v["samples_tokens_per_s"].as_array().unwrap().len(), 2);
            v["test"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(tests, ["pp16", "pp32", "tg8"]);
    let table = run_ok(&["bench", "-m", d.to_str().unwrap(), "-p", "16", "-n", "0", "-r", "1"]);
    assert!(table.contains("| pp16 |") && table.starts_with("| model |"), "{table}");
    // The attention precision an npu run used is in both forms.
    let npu = run_ok(&["bench", "-m", d.to_str().unwrap(), "-p", "16", "-n", "0", "-r", "1", "--backend", "npu", "--int8-attention", "--json"]);
    let v: serde_json::Value = serde_json::from_str(npu.trim()).unwrap();
    assert!(v["backend"] == "npu" && v["attention"] == "int8", "{npu}");
    let table = run_ok(&["bench", "-m", d.to_str().unwrap(), "-p", "16", "-n", "0", "-r", "1", "--backend", "npu", "--int8-attention"]);
    assert!(table.contains("| npu (int8 attention) |"), "{table}");
    // bf16 asked at a head size the tiles do not take (tiny's 8): f32, and the load message says why.
    let out = bin().args(["bench", "-m", d.to_str().unwrap(), "-p", "16", "-n", "0", "-r", "1", "--backend", "npu", "--bf16-attention"]).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && stdout.contains("| npu |") && stderr.contains("multiples of 32, this model's is 8"), "{stdout}{stderr}");
}

#[test]
fn run_with_a_huge_n_stops_at_the_context() {
    let d = synth("huge-n", &[]);
    let out = bin().args(["run", "-m", d.to_str().unwrap(), "-p", "hi", "-n", "18446744073709551615", "--temp", "0"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("context limit"));
}

#[test]
fn simulate_reports_the_paper_device_with_and_without_out_of_order_scheduling() {
    let run = |sched: &str| -> serde_json::Value {
        let out = run_ok(&["simulate", "--profile", "snapdragon-8gen3", "-p", "1024", "--scheduler", sched, "--json"]);
        serde_json::from_str(out.trim()).unwrap()
    };
    let (a, b) = (run("in-order"), run("ooo"));
    let (ma, mb) = (a["makespan_ms"].as_f64().unwrap(), b["makespan_ms"].as_f64().unwrap());
    let (ba, bb) = (a["accel_bubble_rate"].as_f64().unwrap(), b["accel_bubble_rate"].as_f64().unwrap());
    assert!(bb <= 0.02 && ma >= 1.15 * mb, "in order {ma} ms ({ba}), out of order {mb} ms ({bb})");
    assert!(ba > 0.15, "in order the accelerator waits for attention: {ba}");
    // A profile file of the same fields, and a clear error for a bad one.
    let dir = tempdir("profile");
    let p = dir.join("p.json");
    std::fs::write(&p, r#"{"name":"toy","description":"","layers":2,"chunk_size":4,"qkv_ms":1,"o_ffn_ms":2,"attention_ms":1,"shadow_qkv_ms":0,"shadow_o_ffn_ms":0,"shadow_keep":0}"#).unwrap();
    let out = run_ok(&["simulate", "--profile", p.to_str().unwrap(), "-p", "4", "--scheduler", "in-order", "--json"]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    // One chunk, two layers of qkv 1 -> attention 1 -> o+ffn 2: 8 ms.
    assert_eq!(v["makespan_ms"].as_f64(), Some(8.0));
    std::fs::write(&p, r#"{"name":"bad"}"#).unwrap();
    let o = bin().args(["simulate", "--profile", p.to_str().unwrap()]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.code() == Some(1) && err.contains("not a device profile"), "{err}");
}

#[test]
fn profile_times_the_npu_subgraphs_and_simulate_reads_the_result() {
    let m = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama-gqa");
    let out = tempdir("measured").join("profile.json");
    run_ok(&["profile", "-m", m.to_str().unwrap(), "--backend", "npu", "-p", "96", "--chunk-size", "32", "-r", "1", "--out", out.to_str().unwrap()]);
    let p: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!((p["layers"].as_u64(), p["chunk_size"].as_u64()), (Some(2), Some(32)));
    for key in ["qkv_ms", "o_ffn_ms", "attention_ms"] {
        assert!(p[key].as_f64().unwrap() > 0.0, "{key}: {p}");
    }
    let sim = run_ok(&["simulate", "--profile", out.to_str().unwrap(), "-p", "96", "--chunk-size", "32", "--scheduler", "ooo", "--json"]);
    let v: serde_json::Value = serde_json::from_str(sim.trim()).unwrap();
    // 3 chunks x 2 layers x (qkv, attention, o+ffn), plus 2 shadow nodes per layer with shadow work.
    let shadow_layers = (p["shadow_keep"].as_f64().unwrap() * 2.0).ceil() as u64;
    assert_eq!(v["subgraphs"].as_u64(), Some(3 * (2 * 3 + shadow_layers * 2)), "{v}");
    // Without the npu backend there is nothing to time.
    let o = bin().args(["profile", "-m", m.to_str().unwrap()]).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--backend npu"));
}

#[test]
fn bench_ablation_and_the_measured_timeline() {
    let m = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama-gqa");
    let m = m.to_str().unwrap();
    let out = run_ok(&["bench", "-m", m, "-p", "96", "-r", "1", "--ablation"]);
    let rows: Vec<&str> = out.lines().filter(|l| l.starts_with("| ") && !l.starts_with("| configuration") && !l.starts_with("| ---")).collect();
    assert_eq!(rows.len(), 6, "{out}");
    // The scheduled rows report the accelerator's measured bubble rate, the others do not.
    assert!(rows[5].starts_with("| + out-of-order") && rows[5].trim_end().ends_with("% |"), "{out}");
    assert!(rows[0].trim_end().ends_with("| - |"), "{out}");
    let dir = tempdir("timeline");
    let (svg, trace) = (dir.join("t.svg"), dir.join("t.json"));
    run_ok(&["bench", "-m", m, "-p", "96", "-n", "0", "-r", "1", "--backend", "npu", "--chunk-size", "32", "--scheduler", "ooo", "--timeline", svg.to_str().unwrap(), "--trace", trace.to_str().unwrap()]);
    let svg = std::fs::read_to_string(svg).unwrap();
    // 3 chunks x 2 layers x 3 subgraphs, one box each.
    assert_eq!(svg.matches("<title>").count(), 18);
    let t: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(trace).unwrap()).unwrap();
    assert_eq!(t["traceEvents"].as_array().unwrap().iter().filter(|e| e["ph"] == "X").count(), 18);
    // Pictures need a scheduled npu prefill.
    let o = bin().args(["bench", "-m", m, "-p", "32", "--timeline", "x.svg"]).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--scheduler"));
}
