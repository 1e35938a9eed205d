//! `llm-npu run`: generate text from a prompt, streamed to stdout.

use anyhow::{bail, Context, Result};
use clap::Args;

use llm_npu::chat::{self, ChatInput};
use llm_npu::generate::generate;

use super::args::{ChatArgs, ModelArgs, SamplingArgs};
use super::report::{self, ScheduleOutputs, StreamPrinter};

#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt text; empty starts from the BOS token. With --chat, the user's message
    #[arg(short, long, default_value = "")]
    prompt: String,
    /// Send the prompt as a user message through the model's chat template (with --system)
    #[arg(long)]
    chat: bool,
    #[command(flatten)]
    chat_args: ChatArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    pictures: ScheduleOutputs,
}

pub fn run(a: RunArgs) -> Result<()> {
    a.pictures.check(&a.model)?;
    if !a.chat && (a.chat_args.system.is_some() || a.chat_args.chat_template.is_some()) {
        bail!("--system and --chat-template go with --chat");
    }
    let threads = llm_npu::engine::init_threads(a.model.threads)?;
    let loaded = report::load_model(&a.model)?;
    let opts = a.sampling.generate_options(&loaded)?;
    let Some(tok) = &loaded.tokenizer else {
        bail!("{}: no tokenizer found; pass one with --tokenizer (tokenizer.json, GGUF vocabulary or llama2.c tokenizer.bin)", a.model.model.display());
    };
    let cfg = &loaded.model.config;
    let prompt = if a.chat {
        let mut messages = a.chat_args.opening();
        messages.push(serde_json::json!({"role": "user", "content": a.prompt}));
        let messages = serde_json::Value::Array(messages);
        chat::prompt_tokens(&a.chat_args.template(&loaded)?, tok, &ChatInput { messages: &messages, add_generation_prompt: true, ..Default::default() })?
    } else if a.prompt.is_empty() {
        vec![tok.bos_id().or(cfg.bos_token_id).context("the prompt is empty and the model has no BOS token to start from")?]
    } else {
        tok.encode(&a.prompt, true)?
    };
    let engine = report::build_engine(&loaded, &a.model, a.model.backend)?;
    let mut printer = StreamPrinter::new(tok, &prompt)?;
    let stats = generate(engine.as_ref(), &prompt, &opts, |id| printer.push(id))?;
    printer.finish()?;
    report::engine_report(engine.as_ref(), a.model.verbose);
    a.pictures.write_last(engine.as_ref(), &format!("{}: {}-token prompt (measured)", a.model.model.display(), stats.prompt_tokens))?;
    if stats.hit_context_limit {
        eprintln!("note: stopped at the model's context limit ({} tokens)", cfg.max_seq_len);
    }
    eprintln!("{} | backend {}, {threads} threads", report::generation_summary(&stats), engine.name());
    Ok(())
}
