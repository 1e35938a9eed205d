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
