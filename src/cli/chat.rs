//! `llm-npu chat`: talk to an instruction-tuned model in its own chat template. The conversation
//! stays in the KV cache: each turn renders the whole conversation again and prefills only what
//! follows the part the cache already holds. Ctrl-C stops a reply (the conversation keeps what was
//! said), Ctrl-D or /exit leaves.

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Result};
use clap::Args;
use rustyline::error::ReadlineError;

use llm_npu::chat::{self, ChatInput};
use llm_npu::generate::Session;

use super::args::{ChatArgs, ModelArgs, SamplingArgs};
use super::report::{self, StreamPrinter};

#[derive(Args)]
pub struct ChatCmdArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    chat: ChatArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
}

/// Set by Ctrl-C while a reply is being written.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

const HELP: &str = "commands: /reset forgets the conversation, /exit (or Ctrl-D) leaves; Ctrl-C stops a reply";

pub fn run(a: ChatCmdArgs) -> Result<()> {
    let threads = llm_npu::engine::init_threads(a.model.threads)?;
    let loaded = report::load_model(&a.model)?;
    let template = a.chat.template(&loaded)?;
    let opts = a.sampling.generate_options(&loaded)?;
    let Some(tok) = &loaded.tokenizer else { bail!("{}: no tokenizer found; pass one with --tokenizer", a.model.model.display()) };
    let engine = report::build_engine(&loaded, &a.model, a.model.backend)?;
    let mut session = Session::new(engine.as_ref());
    let mut messages = a.chat.opening();
    // SAFETY: the handler only stores to an atomic. Ctrl-C at the prompt is read by the line
    // editor (raw mode), so this handler sees the ones pressed while a reply is written.
    unsafe { libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t) };
    let mut editor = rustyline::DefaultEditor::new()?;
    eprintln!("chat with {} ({} backend, {threads} threads); {HELP}", a.model.model.display(), engine.name());
    loop {
        // While the user reads and types.
        engine.idle();
        let line = match editor.readline("> ") {
            Ok(line) => line,
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e.into()),
        };
        let text = line.trim();
        match text {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                messages = a.chat.opening();
                session.clear();
                eprintln!("(conversation forgotten)");
                continue;
            }
            t if t.starts_with('/') => {
                eprintln!("{HELP}");
                continue;
            }
            _ => {}
        }
        let _ = editor.add_history_entry(text);
        messages.push(serde_json::json!({"role": "user", "content": text}));
        let conversation = serde_json::Value::Array(messages.clone());
        let prompt = match chat::prompt_tokens(&template, tok, &ChatInput { messages: &conversation, add_generation_prompt: true, ..Default::default() }) {
            Ok(p) => p,
            Err(e) => {
                // e.g. the template refuses the conversation: say why, forget the message.
                eprintln!("error: {e}");
                messages.pop();
                continue;
            }
        };
        INTERRUPTED.store(false, Ordering::SeqCst);
        let mut printer = StreamPrinter::new(tok, &prompt)?;
        let result = session.generate(engine.as_ref(), &prompt, &opts, |id| {
            if INTERRUPTED.load(Ordering::SeqCst) {
                return Err(llm_npu::Error::Input("stopped".into()));
            }
            printer.push(id)
        });
        let reply = printer.finish()?;
        messages.push(serde_json::json!({"role": "assistant", "content": reply}));
        match result {
            Ok(stats) => {
                if stats.hit_context_limit {
                    eprintln!("note: the conversation filled the model's context ({} tokens); /reset to start again", loaded.model.config.max_seq_len);
                }
                eprintln!("[{}]", report::generation_summary(&stats));
            }
            Err(_) if INTERRUPTED.load(Ordering::SeqCst) => eprintln!("[stopped]"),
            Err(e) => {
                eprintln!("error: {e}");
                messages.truncate(messages.len() - 2);
            }
        }
    }
    Ok(())
}
