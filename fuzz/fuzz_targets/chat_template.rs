#![no_main]
//! A chat template, compiled and rendered with a conversation that has tools and a tool call.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(source) = std::str::from_utf8(data) else { return };
    let Ok(t) = llm_npu::chat::ChatTemplate::new(source, "<s>", "</s>") else { return };
    let messages = serde_json::json!([
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "w", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "{\"t\": 21}"}
    ]);
    let tools = serde_json::json!([{"type": "function", "function": {"name": "w", "parameters": {"type": "object"}}}]);
    let _ = t.render(&llm_npu::chat::ChatInput { messages: &messages, tools: Some(&tools), add_generation_prompt: true, extra: None });
});
