//! `llm-npu serve`: the OpenAI-compatible local server (the library's `server::serve`).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;

use llm_npu::engine::BackendKind;
use llm_npu::kernels::attention::{self, Precision};
use llm_npu::server::{self, ServerOptions};

use super::args::ModelArgs;
use super::report;

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Address to listen on; anything but loopback needs --api-key
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Require `Authorization: Bearer KEY` on every request
    #[arg(long)]
    api_key: Option<String>,
    /// Requests that may wait behind the running one; more are answered 503
    #[arg(long, default_value_t = 16)]
    max_waiting: usize,
    /// Largest request body in MB (413 beyond)
    #[arg(long, default_value_t = 8)]
    max_body_mb: usize,
    /// Seconds a client has to send a request's headers (the connection is closed after)
    #[arg(long, default_value_t = 10)]
    header_timeout: u64,
    /// Prompt-cache states kept, each a KV cache of the model's whole context; a request reuses
    /// the one sharing the longest prefix with it; the least recently used is replaced
    #[arg(long, default_value_t = 2)]
    cache_slots: usize,
    /// Jinja chat template file to use instead of the model's own
    #[arg(long, value_name = "FILE")]
    chat_template: Option<std::path::PathBuf>,
}

pub fn run(a: ServeArgs) -> Result<()> {
    if !a.host.is_loopback() && a.api_key.is_none() {
        bail!("listening on {} (not loopback) needs --api-key", a.host);
    }
    if a.max_waiting == 0 || a.max_body_mb == 0 || a.header_timeout == 0 || a.cache_slots == 0 {
        bail!("--max-waiting, --max-body-mb, --header-timeout and --cache-slots must be at least 1");
    }
    llm_npu::engine::init_threads(a.model.threads)?;
    let loaded = report::load_model(&a.model)?;
    server::check_model(&loaded)?;
    let model_id = a.model.model.file_stem().or(a.model.model.file_name()).map_or("model".into(), |s| s.to_string_lossy().into_owned());
    let opts = ServerOptions {
        addr: SocketAddr::new(a.host, a.port),
        api_key: a.api_key.clone(),
        max_waiting: a.max_waiting,
        max_body_bytes: a.max_body_mb << 20,
        header_timeout: Duration::from_secs(a.header_timeout),
        model_id: model_id.clone(),
        cache_slots: a.cache_slots,
        chat_template: match &a.chat_template {
            Some(p) => Some(std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?),
            None => None,
        },
    };
    let engine_opts = a.model.engine_options_for(a.model.backend)?;
    // (An unused cache's buffers are zeroed pages the OS has not handed out yet: free to size.)
    let slot_mib = loaded.model.new_cache(loaded.model.config.max_seq_len).memory_bytes() as f64 / (1 << 20) as f64;
    // Prefill attention keeps its own copy of each cache it prefills into: int8 about a quarter
    // of the f32 cache (bytes plus per-slot scales), bf16 half, and f32 on AMX-BF16 tiles
    // (either backend) three bf16 parts of every value, one and a half.
    let head_dim = loaded.model.config.head_dim;
    let attention = if engine_opts.backend == BackendKind::Npu { engine_opts.npu.attention.on_this_cpu(head_dim) } else { Precision::F32 };
    let (copy_share, copy_name) = match attention {
        Precision::Int8 => (0.25, "int8 attention's copy"),
        Precision::Bf16 => (0.5, "bf16 attention's copy"),
        Precision::F32 if attention::bf16_runs(head_dim) => (1.5, "f32 attention's copy in bf16 parts"),
        Precision::F32 => (0.0, ""),
    };
    let copy = if copy_share > 0.0 { format!(" (+ about {:.1} MiB each for {copy_name})", slot_mib * copy_share) } else { String::new() };
    let cache = format!("prompt cache: up to {} KV caches of {slot_mib:.1} MiB{copy}", a.cache_slots);
    let engine = report::build_engine(&loaded, &a.model, a.model.backend)?;
    server::serve(engine.as_ref(), opts, |addr| {
        eprintln!("serving '{model_id}' on http://{addr} (OpenAI API: /v1/chat/completions, /v1/completions, /v1/models; /health); {cache}; Ctrl-C stops");
    })?;
    // Writes what the engine still keeps (its int8 weights, if it was never idle) before saying so.
    drop(engine);
    eprintln!("stopped");
    Ok(())
}
