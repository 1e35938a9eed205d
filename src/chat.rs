//! Chat templates: the Jinja template a model ships (`chat_template` in tokenizer_config.json or
//! chat_template.jinja, `tokenizer.chat_template` in GGUF) rendered the way transformers'
//! `apply_chat_template` renders it, so the prompt is the one the model was trained on.
//!
//! The environment mirrors transformers': trim_blocks and lstrip_blocks, loop controls, Python's
//! string and dict methods, `raise_exception`, `strftime_now`, a `tojson` that formats like
//! Python's `json.dumps` (not Jinja's HTML-escaping one), `{% generation %}` blocks rendered as
//! their body, and `messages`, `tools` and `documents` (none when absent), `add_generation_prompt`,
//! `bos_token` and `eos_token` in the context. Templates come from strangers: rendering runs on a
//! fuel budget and a recursion limit, so none can loop forever.

use std::fmt::Write;
use std::sync::Arc;

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Environment, ErrorKind, Value};

use crate::error::{Error, Result};

/// Instructions a render may execute: far above what real templates use (a long conversation
/// with tools takes well under a million), low enough that a runaway template stops in a second.
const FUEL: u64 = 50_000_000;

/// What `strftime_now` reads: the local time now, or a fixed one (tests).
pub type Clock = Arc<dyn Fn() -> libc::tm + Send + Sync>;

pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

/// One render's inputs besides the template.
#[derive(Default)]
pub struct ChatInput<'a> {
    /// The conversation, as OpenAI-style message objects ({"role", "content", ...}).
    pub messages: &'a serde_json::Value,
    /// Tool (function) schemas, passed through to the template.
    pub tools: Option<&'a serde_json::Value>,
    /// End with the header of an assistant turn, so the model writes the reply.
    pub add_generation_prompt: bool,
    /// Further template variables (e.g. `enable_thinking`, `date_string`).
    pub extra: Option<&'a serde_json::Map<String, serde_json::Value>>,
}

impl ChatTemplate {
    /// Compiles `source`; `bos_token` / `eos_token` are the tokenizer's strings for them.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<ChatTemplate> {
        Self::with_clock(source, bos_token, eos_token, Arc::new(local_now))
    }

    /// `new`, with `strftime_now` reading `clock`.
    pub fn with_clock(source: &str, bos_token: &str, eos_token: &str, clock: Clock) -> Result<ChatTemplate> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_fuel(Some(FUEL));
        env.set_recursion_limit(100);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("tojson", tojson);
        env.add_function("raise_exception", |msg: String| -> std::result::Result<Value, minijinja::Error> { Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg)) });
        env.add_function("strftime_now", move |format: String| strftime(&format, &clock()));
        env.add_template_owned("chat_template", generation_blocks_as_plain(source)).map_err(|e| Error::Input(format!("chat template: {}", describe(&e))))?;
        Ok(ChatTemplate { env, bos_token: bos_token.to_string(), eos_token: eos_token.to_string() })
    }

    /// The prompt text for `input`.
    pub fn render(&self, input: &ChatInput) -> Result<String> {
        if !input.messages.is_array() {
            return Err(Error::Input("chat messages must be a list of {\"role\": ..., \"content\": ...} objects".into()));
        }
        let mut ctx = serde_json::Map::new();
        if let Some(extra) = input.extra {
            ctx.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        ctx.insert("messages".into(), input.messages.clone());
        ctx.insert("tools".into(), input.tools.cloned().unwrap_or(serde_json::Value::Null));
        ctx.insert("documents".into(), serde_json::Value::Null);
        ctx.insert("add_generation_prompt".into(), input.add_generation_prompt.into());
        ctx.entry("bos_token").or_insert_with(|| self.bos_token.clone().into());
        ctx.entry("eos_token").or_insert_with(|| self.eos_token.clone().into());
        let template = self.env.get_template("chat_template").map_err(|e| Error::Input(format!("chat template: {}", describe(&e))))?;
        template.render(Value::from_serialize(&ctx)).map_err(|e| Error::Input(format!("chat template: {}", describe(&e))))
    }
}

/// The token ids of a conversation rendered with `template` (its text already holds the special
/// tokens it needs, so none are added, as transformers' apply_chat_template does).
pub fn prompt_tokens(template: &ChatTemplate, tokenizer: &crate::tokenizer::Tokenizer, input: &ChatInput) -> Result<Vec<u32>> {
    tokenizer.encode(&template.render(input)?, false)
}

/// A minijinja error in one line: what the template raised, or what went wrong and where.
fn describe(e: &minijinja::Error) -> String {
    match (e.kind(), e.detail()) {
        (ErrorKind::InvalidOperation, Some(detail)) => detail.to_string(),
        _ => match e.line() {
            Some(line) => format!("{e} (line {line})").replace('\n', " "),
            None => e.to_string().replace('\n', " "),
        },
    }
}

/// transformers renders `{% generation %}...{% endgeneration %}` (its extension marking the
/// assistant's tokens) as its body; here it becomes an `if true` block, keeping the tags'
/// whitespace control.
fn generation_blocks_as_plain(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(at) = rest.find("{%") {
        out.push_str(&rest[..at]);
        let tag = &rest[at..];
        // The closing "%}" after the opening "{%" ("{%}" must not close itself).
        let Some(end) = tag[2..].find("%}").map(|i| i + 2) else { break };
        let inner = &tag[2..end];
        let word = inner.trim_matches(|c: char| c == '-' || c == '+' || c.is_whitespace());
        let replacement = match word {
            "generation" => Some("if true"),
            "endgeneration" => Some("endif"),
            _ => None,
        };
        match replacement {
            Some(r) => {
                let (open, close) = (&inner[..inner.len() - inner.trim_start_matches(['-', '+']).len()], &inner[inner.trim_end_matches(['-', '+']).len()..]);
                write!(out, "{{%{open} {r} {close}%}}").expect("writing to a String");
            }
            None => out.push_str(&tag[..end + 2]),
        }
        rest = &tag[end + 2..];
    }
    out.push_str(rest);
    out
}

/// Python's `json.dumps(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`,
/// the filter transformers installs (Jinja's own escapes HTML characters).
fn tojson(value: Value, kwargs: Kwargs) -> std::result::Result<String, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;
    let (item, key) = match separators.as_deref() {
        Some([item, key]) => (item.clone(), key.clone()),
        Some(_) => return Err(minijinja::Error::new(ErrorKind::InvalidOperation, "tojson: separators must be two strings")),
        // Python's defaults: ", " without indent, "," with it.
        None => ((if indent.is_some() { "," } else { ", " }).to_string(), ": ".to_string()),
    };
    let style = JsonStyle { indent, ensure_ascii: ensure_ascii.unwrap_or(false), sort_keys: sort_keys.unwrap_or(false), item, key };
    let mut out = String::new();
    style.write(&value, 0, &mut out)?;
    Ok(out)
}

struct JsonStyle {
    indent: Option<usize>,
    ensure_ascii: bool,
    sort_keys: bool,
    item: String,
    key: String,
}

impl JsonStyle {
    fn write(&self, v: &Value, depth: usize, out: &mut String) -> std::result::Result<(), minijinja::Error> {
        match v.kind() {
            ValueKind::Undefined | ValueKind::None => out.push_str("null"),
            ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
            ValueKind::Number => match v.as_i64() {
                Some(i) if v.is_integer() => write!(out, "{i}").expect("writing to a String"),
                _ => out.push_str(&python_float(f64::try_from(v.clone())?)),
            },
            ValueKind::String => self.string(v.as_str().unwrap_or_default(), out),
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = v.try_iter()?.collect();
                self.container('[', ']', items.len(), depth, out, |i, out| self.write(&items[i], depth + 1, out))?;
            }
            ValueKind::Map => {
                let mut keys: Vec<Value> = v.try_iter()?.collect();
                if self.sort_keys {
                    keys.sort_by(|a, b| a.to_string().cmp(&b.to_string()));
                }
                self.container('{', '}', keys.len(), depth, out, |i, out| {
                    self.string(&keys[i].to_string(), out);
                    out.push_str(&self.key);
                    self.write(&v.get_item(&keys[i])?, depth + 1, out)
                })?;
            }
            _ => self.string(&v.to_string(), out),
        }
        Ok(())
    }

    fn container(
        &self,
        open: char,
        close: char,
        n: usize,
        depth: usize,
        out: &mut String,
        mut item: impl FnMut(usize, &mut String) -> std::result::Result<(), minijinja::Error>,
    ) -> std::result::Result<(), minijinja::Error> {
        out.push(open);
        for i in 0..n {
            if i > 0 {
                out.push_str(&self.item);
            }
            if let Some(w) = self.indent {
                out.push('\n');
                out.extend(std::iter::repeat_n(' ', w * (depth + 1)));
            }
            item(i, out)?;
        }
        if let (Some(w), true) = (self.indent, n > 0) {
            out.push('\n');
            out.extend(std::iter::repeat_n(' ', w * depth));
        }
        out.push(close);
        Ok(())
    }

    fn string(&self, s: &str, out: &mut String) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                c if (c as u32) < 0x20 || (self.ensure_ascii && !c.is_ascii()) => {
                    let mut buf = [0u16; 2];
                    for unit in c.encode_utf16(&mut buf) {
                        write!(out, "\\u{unit:04x}").expect("writing to a String");
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
}

/// A float as Python's `repr` writes it: shortest round-trip digits, ".0" on whole numbers,
/// exponent form below 1e-4 and from 1e16 (with a signed two-digit exponent).
fn python_float(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    let abs = x.abs();
    if abs != 0.0 && !(1e-4..1e16).contains(&abs) {
        // Rust's {:e} gives the shortest digits, e.g. "1e-5", "1.5e16".
        let s = format!("{x:e}");
        let (mantissa, exp) = s.split_once('e').expect("exponent form");
        let exp: i32 = exp.parse().expect("an integer exponent");
        return format!("{mantissa}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    }
    let s = format!("{x:?}");
    if s.contains('.') || s.contains('e') {
        s
    } else {
        format!("{s}.0")
    }
}

/// The local time now.
fn local_now() -> libc::tm {
    // SAFETY: time(NULL) and localtime_r with valid pointers; tm is plain data.
    unsafe {
        let t = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        libc::localtime_r(&t, &mut tm);
        tm
    }
}

/// C's strftime, which Python's `datetime.strftime` calls too.
fn strftime(format: &str, tm: &libc::tm) -> std::result::Result<String, minijinja::Error> {
    let fmt = std::ffi::CString::new(format).map_err(|_| minijinja::Error::new(ErrorKind::InvalidOperation, "strftime_now: the format contains a NUL byte"))?;
    let mut buf = vec![0u8; 256 + 16 * format.len()];
    // SAFETY: buf is writable for its length, fmt is NUL-terminated, tm is a valid struct.
    let n = unsafe { libc::strftime(buf.as_mut_ptr() as *mut libc::c_char, buf.len(), fmt.as_ptr(), tm) };
    if n == 0 && !format.is_empty() {
        return Err(minijinja::Error::new(ErrorKind::InvalidOperation, format!("strftime_now: cannot format {format:?}")));
    }
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tojson_writes_what_pythons_json_dumps_writes() {
        let t = ChatTemplate::new("{{ x | tojson }}|{{ x | tojson(indent=2) }}|{{ s | tojson(ensure_ascii=true) }}|{{ f | tojson }}", "", "").unwrap();
        let extra: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(r#"{"x": {"b": [1, 2.5, null, true], "a": {}, "c": []}, "s": "é\"<\n", "f": [1.0, 1e-05, 1e16, 0.1]}"#).unwrap();
        let msgs = serde_json::json!([]);
        let out = t.render(&ChatInput { messages: &msgs, extra: Some(&extra), ..Default::default() }).unwrap();
        // json.dumps(x), json.dumps(x, indent=2), json.dumps(s, ensure_ascii=True), json.dumps(f)
        // (keys keep their order, as in Python's dicts)
        let want = "{\"b\": [1, 2.5, null, true], \"a\": {}, \"c\": []}|{\n  \"b\": [\n    1,\n    2.5,\n    null,\n    true\n  ],\n  \"a\": {},\n  \"c\": []\n}|\"\\u00e9\\\"<\\n\"|[1.0, 1e-05, 1e+16, 0.1]";
        assert_eq!(out, want);
    }

    #[test]
    fn generation_blocks_keep_their_whitespace_control() {
        assert_eq!(generation_blocks_as_plain("a {%- generation -%} b {% endgeneration %}c"), "a {%- if true -%} b {% endif %}c");
        assert_eq!(generation_blocks_as_plain("{% if x %}{{ y }}{% endif %}"), "{% if x %}{{ y }}{% endif %}");
        // Found by the chat_template fuzz target: "{%}" closed itself and the slice panicked.
        assert_eq!(generation_blocks_as_plain("a {%} b %} c"), "a {%} b %} c");
        assert_eq!(generation_blocks_as_plain("{%"), "{%");
        assert!(ChatTemplate::new("{{ x }}{%}", "", "").is_err());
    }

    #[test]
    fn a_template_that_loops_forever_runs_out_of_fuel() {
        let t = ChatTemplate::new("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "", "").unwrap();
        let e = t.render(&ChatInput { messages: &serde_json::json!([]), ..Default::default() }).unwrap_err().to_string();
        assert!(e.contains("chat template") && e.contains("fuel"), "{e}");
    }

    #[test]
    fn raise_exception_is_a_one_line_error_with_the_templates_message() {
        let t = ChatTemplate::new("{{ raise_exception('System role not supported') }}", "", "").unwrap();
        let e = t.render(&ChatInput { messages: &serde_json::json!([]), ..Default::default() }).unwrap_err().to_string();
        assert_eq!(e, "chat template: System role not supported");
    }
}
