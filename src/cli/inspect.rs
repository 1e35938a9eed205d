//! `llm-npu inspect`: what a model file holds; with options, its activation statistics and the
//! npu backend's plan for a calibration.

use anyhow::{bail, Result};
use clap::Args;

use llm_npu::model::Logits;
use llm_npu::quant::stats::ActivationStats;

use super::args::{ModelArgs, TokenSource};
use super::report;

#[derive(Args)]
pub struct InspectArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Also list every tensor
    #[arg(long)]
    tensors: bool,
    /// Run the model and print, per layer and linear input, max |x|, the 99.9th percentile of |x|
    /// and the outlier channels: max |x| beyond 20x the median channel's max
    #[arg(long)]
    activation_stats: bool,
    #[command(flatten)]
    tokens: TokenSource,
}

pub fn run(a: InspectArgs) -> Result<()> {
    if !a.activation_stats && (a.tokens.text.is_some() || a.tokens.random_tokens.is_some()) {
        bail!("--text and --random-tokens choose the tokens for --activation-stats; add --activation-stats");
    }
    let loaded = report::load_model(&a.model)?;
    let c = &loaded.model.config;
    println!("model:        {}", loaded.path.display());
    println!("format:       {}", loaded.format);
    println!("family:       {}", c.family);
    println!("parameters:   {} ({})", loaded.model.num_parameters(), report::human_count(loaded.model.num_parameters()));
    println!("layers:       {}", c.num_layers);
    println!("hidden:       {} (intermediate {})", c.hidden_size, c.intermediate_size);
    println!("heads:        {} query, {} key/value, head_dim {}", c.num_heads, c.num_kv_heads, c.head_dim);
    println!("vocab:        {}{}", c.vocab_size, if c.tie_word_embeddings { " (LM head tied to embeddings)" } else { "" });
    println!("context:      {}", c.max_seq_len);
    let scaling = match (&c.rope.llama3, &c.rope.freq_factors) {
        (Some(s), _) => format!(", llama3 scaling x{}", s.factor),
        (None, Some(_)) => ", per-frequency factors from the file".to_string(),
        _ => String::new(),
    };
    println!("rope:         theta {}, {:?} pairing{scaling}", c.rope.theta, c.rope.style);
    println!("norm eps:     {}", c.rms_norm_eps);
    println!("qkv bias:     {}", c.qkv_bias);
    println!("bos / eos:    {:?} / {:?}", c.bos_token_id, c.eos_token_ids);
    match &loaded.tokenizer {
        Some(t) => println!("tokenizer:    {}", t.kind()),
        None => println!("tokenizer:    none (pass --tokenizer)"),
    }
    let dtypes = loaded.weights.dtype_summary();
    println!("dtypes:       {dtypes}");
    if a.tensors {
        for (name, dtype, shape) in loaded.weights.tensor_list() {
            println!("  {name:50} {dtype:5} {shape:?}");
        }
    }
    if let Some(path) = &a.model.npu.calibration {
        report::print_shadow_plan(&loaded, path, &a.model.npu)?;
    }
    if a.activation_stats {
        llm_npu::engine::init_threads(a.model.threads)?;
        let tokens = a.tokens.tokens(&loaded, 256)?;
        let m = &loaded.model;
        let mut stats = ActivationStats::default();
        for window in tokens.chunks(m.config.max_seq_len.min(2048)) {
            m.forward_observed(window, &mut m.new_cache(window.len()), Logits::Last, Some(&mut stats))?;
        }
        println!("\nactivation statistics over {} tokens (|x| at each linear-layer input):", tokens.len());
        println!("{:>5}  {:8}  {:>10}  {:>10}  {:>8}  outlier channels (max > 20x the median channel max, largest first)", "layer", "input", "max", "p99.9", "max/p999");
        for (&(layer, group), ps) in &stats.points {
            let (max, p999) = (ps.max_abs(), ps.percentile(0.999));
            let outliers = ps.outlier_channels(20.0);
            let shown: Vec<String> = outliers.iter().take(16).map(|c| c.to_string()).collect();
            let more = if outliers.len() > 16 { format!(" ... (+{})", outliers.len() - 16) } else { String::new() };
            println!("{layer:>5}  {:8}  {max:>10.3}  {p999:>10.3}  {:>8.1}  {}: [{}{more}]", group.input_name(), max / p999.max(1e-12), outliers.len(), shown.join(", "));
        }
    }
    Ok(())
}

