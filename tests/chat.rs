//! Chat: templates, conversations kept in the KV cache, and the `chat` / `run --chat` commands.
//!
//! Real models' chat templates (read in place from ../shared/models) rendered by us against
//! transformers' `apply_chat_template` engine on the same inputs (tools/oracle/gen_chat_fixtures.py
//! wrote tests/fixtures/chat/renders.json): string for string, with and without a system message,
//! with and without the generation prompt, with tools and a tool call; where the template refuses
//! an input (raise_exception), we refuse it too, with its message.

mod common;

use std::path::Path;
use std::sync::Arc;

use llm_npu::chat::{ChatInput, ChatTemplate};

/// The clock the fixtures were rendered with: 2024-07-26 14:05:09 (a Friday, day 208 of 2024).
fn fixed_clock() -> libc::tm {
    // SAFETY: tm is plain data; every field used by strftime is set below.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    (tm.tm_year, tm.tm_mon, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, tm.tm_wday, tm.tm_yday) = (124, 6, 26, 14, 5, 9, 5, 207);
    tm
}

fn template_source(models: &Path, name: &str) -> String {
    let text = std::fs::read_to_string(models.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    if name.ends_with("tokenizer_config.json") {
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        return v["chat_template"].as_str().expect("a chat_template string").to_string();
    }
    text
}

#[test]
fn real_templates_render_exactly_as_transformers_does() {
    let Some(models) = common::shared_models("real_templates_render_exactly_as_transformers_does") else { return };
    let fixture: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/chat/renders.json")).unwrap()).unwrap();
    let (bos, eos) = (fixture["bos_token"].as_str().unwrap(), fixture["eos_token"].as_str().unwrap());
    let mut checked = (0, 0, 0);
    for t in fixture["templates"].as_array().unwrap() {
        let name = t["template"].as_str().unwrap();
        let template = ChatTemplate::with_clock(&template_source(&models, name), bos, eos, Arc::new(fixed_clock)).unwrap_or_else(|e| panic!("{name}: {e}"));
        for case in t["cases"].as_array().unwrap() {
            let what = format!("{name} / {}", case["case"].as_str().unwrap());
            let tools = case.get("tools").filter(|v| !v.is_null());
            let input = ChatInput { messages: &case["messages"], tools, add_generation_prompt: case["add_generation_prompt"].as_bool().unwrap(), extra: None };
            let got = template.render(&input);
            match (case.get("text").and_then(|v| v.as_str()), case.get("error").and_then(|v| v.as_str())) {
                (Some(want), _) => {
                    let got = got.unwrap_or_else(|e| panic!("{what}: {e}"));
                    assert_eq!(got, want, "{what}");
                    checked.0 += 1;
                }
                (None, Some(err)) if err.contains("object is not") => {
                    // A Python type error inside transformers (e.g. Hermes' tool_use template
                    // iterating `tools` when there are none), not a refusal the template wrote:
                    // minijinja iterates none as empty, and rendering is as good an answer.
                    checked.2 += 1;
                }
                (None, Some(err)) => {
                    let e = got.expect_err(&format!("{what}: the template refused this input ({err}), we rendered it")).to_string();
                    assert!(e.contains(err), "{what}: {e} (transformers: {err})");
                    assert!(!e.contains('\n'), "{what}: one line: {e}");
                    checked.1 += 1;
                }
                _ => panic!("{what}: the fixture has neither text nor error"),
            }
        }
    }
    eprintln!("{} renders equal, {} refusals matched, {} Python type errors not compared", checked.0, checked.1, checked.2);
    assert_eq!(checked, (76, 4, 4), "every case of the fixture was checked");
}

/// The trained stories260K (GGUF, with its tokenizer) and a template that just concatenates turns.
fn stories() -> Option<(std::path::PathBuf, std::path::PathBuf)> {
    let models = common::shared_models("chat with stories260K")?;
    Some((models.join("stories260K-gguf/tinyllamas-stories-260k-f32.gguf"), common::story_template()))
}

#[test]
fn a_session_continues_a_conversation_from_its_cache_as_a_fresh_run_would() {
    use llm_npu::generate::{generate, GenerateOptions, Session};
    use llm_npu::sampling::SamplingParams;
    let Some((model, _)) = stories() else { return };
    let loaded = Arc::new(llm_npu::model::load(&model, &Default::default()).unwrap());
    let tok = loaded.tokenizer.as_ref().unwrap();
    let engine = llm_npu::engine::F32Engine::new(loaded.clone(), None);
    let opts = GenerateOptions { max_new_tokens: 24, sampling: SamplingParams { temperature: 0.0, ..Default::default() }, stop_tokens: vec![2], vocab_limit: None };
    let run = |session: &mut Session, prompt: &[u32]| {
        let mut out = Vec::new();
        let stats = session.generate(&engine, prompt, &opts, |t| {
            out.push(t);
            Ok(())
        });
        (out, stats.unwrap())
    };
    let mut session = Session::new(&engine);
    let turn1 = tok.encode("Lily went to the park.", true).unwrap();
    let (reply1, stats1) = run(&mut session, &turn1);
    assert_eq!(stats1.cached_tokens, 0);
    // Turn 2: the conversation so far, the reply, and a new message.
    let mut turn2 = turn1.clone();
    turn2.extend(&reply1);
    turn2.extend(tok.encode(" Then she saw a dog.", false).unwrap());
    let (reply2, stats2) = run(&mut session, &turn2);
    // All of turn 1 and its reply but the reply's last token (never run through the model) came
    // from the cache.
    assert_eq!(stats2.cached_tokens, turn1.len() + reply1.len() - 1, "{stats2:?}");
    let mut fresh = Vec::new();
    generate(&engine, &turn2, &opts, |t| {
        fresh.push(t);
        Ok(())
    })
    .unwrap();
    assert_eq!(reply2, fresh, "the cached conversation continues as a fresh run of the whole prompt");
    // A prompt that is a prefix of what is cached (an edited last message) is fine too.
    let (reply3, stats3) = run(&mut session, &turn1);
    assert_eq!((reply3, stats3.cached_tokens), (reply1, turn1.len() - 1));
}

fn llm_npu_cmd(args: &[&str], stdin: &str) -> (String, String, Option<i32>) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_llm-npu")).args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned(), out.status.code())
}

#[test]
fn the_chat_command_keeps_the_conversation_in_the_cache() {
    let Some((model, template)) = stories() else { return };
    let (m, t) = (model.to_str().unwrap(), template.to_str().unwrap());
    let (stdout, stderr, code) = llm_npu_cmd(&["chat", "-m", m, "--chat-template", t, "-n", "16", "--temp", "0"], "Lily went to the park.\n/help\nShe saw a dog.\n/reset\nTom had a ball.\n");
    assert_eq!(code, Some(0), "{stderr}");
    let summaries: Vec<&str> = stderr.lines().filter(|l| l.starts_with("[prompt:")).collect();
    assert_eq!(summaries.len(), 3, "{stderr}");
    assert!(!summaries[0].contains("from the cache") && summaries[1].contains("from the cache") && !summaries[2].contains("from the cache"), "{stderr}");
    assert!(stderr.contains("/reset forgets") && stderr.contains("(conversation forgotten)"), "{stderr}");
    assert_eq!(stdout.lines().filter(|l| !l.trim().is_empty()).count(), 3, "three replies: {stdout}");
}

#[test]
fn run_chat_renders_the_template_and_refuses_what_does_not_fit() {
    let Some((model, template)) = stories() else { return };
    let (m, t) = (model.to_str().unwrap(), template.to_str().unwrap());
    let (stdout, stderr, code) = llm_npu_cmd(&["run", "-m", m, "--chat", "--chat-template", t, "--system", "Once upon a time,", "-p", "there was a cat", "-n", "8", "--temp", "0"], "");
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stdout.trim().is_empty());
    // "Once upon a time, there was a cat" is 1 BOS-less system turn + the user turn.
    assert!(stderr.contains("prompt:"), "{stderr}");
    for (args, want) in [
        (vec!["run", "-m", m, "--chat", "-p", "hi"], "has no chat template"),
        (vec!["run", "-m", m, "--system", "be brief", "-p", "hi"], "go with --chat"),
        (vec!["run", "-m", m, "--chat", "--chat-template", "/nonexistent.jinja", "-p", "hi"], "/nonexistent.jinja"),
    ] {
        let (_, stderr, code) = llm_npu_cmd(&args, "");
        assert_eq!(code, Some(1), "{args:?}: {stderr}");
        let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
        assert!(errors.len() == 1 && errors[0].contains(want) && !stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    let bad = std::env::temp_dir().join(format!("llm-npu-bad-{}.jinja", std::process::id()));
    std::fs::write(&bad, "{% for m in messages %}{{ m.content }").unwrap();
    let (_, stderr, code) = llm_npu_cmd(&["run", "-m", m, "--chat", "--chat-template", bad.to_str().unwrap(), "-p", "hi"], "");
    assert!(code == Some(1) && stderr.lines().filter(|l| l.starts_with("error: chat template")).count() == 1, "{stderr}");
}

#[test]
fn a_template_the_fuzzer_found_is_an_error_not_a_panic() {
    // tests/fixtures/regressions/chat-template-open-close-overlap.jinja: a "{%}" made the
    // rewrite of {% generation %} blocks slice out of bounds.
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/regressions/chat-template-open-close-overlap.jinja");
    let source = String::from_utf8_lossy(&std::fs::read(path).unwrap()).into_owned();
    let e = ChatTemplate::new(&source, "<s>", "</s>").err().expect("the template does not compile");
    assert!(e.to_string().starts_with("chat template:") && !e.to_string().contains('\n'), "{e}");
}
