//! OpenAI's request and response shapes: parsing and checking a request's JSON by hand (so every
//! mistake gets OpenAI's error shape with the field named), the responses and stream chunks.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::generate::GenerationStats;

/// An error in OpenAI's shape, with its HTTP status.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<&'static str>,
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn invalid(param: &'static str, message: impl Into<String>) -> Self {
        ApiError { status: StatusCode::BAD_REQUEST, message: message.into(), kind: "invalid_request_error", param: Some(param), code: None }
    }

    pub fn new(status: StatusCode, kind: &'static str, code: Option<&'static str>, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into(), kind, param: None, code }
    }

    pub fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body())).into_response()
    }
}

/// The fields both endpoints take, checked.
pub struct Common {
    pub max_tokens: Option<usize>,
    pub temperature: f32,
    pub top_p: f32,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    pub stream: bool,
}

/// Parses a request body: a JSON object, or an error saying what is wrong with it.
pub fn parse_object(body: &[u8]) -> Result<serde_json::Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(o)) => Ok(o),
        Ok(_) => Err(ApiError::invalid("body", "the request body must be a JSON object")),
        Err(e) => Err(ApiError::invalid("body", format!("the request body is not valid JSON: {e}"))),
    }
}

fn number(o: &serde_json::Map<String, Value>, key: &'static str) -> Result<Option<f64>, ApiError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or_else(|| ApiError::invalid(key, format!("'{key}' must be a number"))),
    }
}

fn integer(o: &serde_json::Map<String, Value>, key: &'static str) -> Result<Option<i64>, ApiError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_i64().map(Some).ok_or_else(|| ApiError::invalid(key, format!("'{key}' must be an integer"))),
    }
}

/// The fields both endpoints take; the token limit as `max_completion_tokens` (OpenAI's current
/// name) or `max_tokens`.
pub fn common(o: &serde_json::Map<String, Value>) -> Result<Common, ApiError> {
    let mut max_tokens = None;
    for key in ["max_completion_tokens", "max_tokens"] {
        match integer(o, key)? {
            Some(n) if n < 1 => return Err(ApiError::invalid(key, format!("'{key}' must be at least 1, got {n}"))),
            Some(n) if max_tokens.is_none() => max_tokens = Some(usize::try_from(n).unwrap_or(usize::MAX)),
            _ => {}
        }
    }
    let temperature = number(o, "temperature")?.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid("temperature", format!("'temperature' must be between 0 and 2, got {temperature}")));
    }
    let top_p = number(o, "top_p")?.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid("top_p", format!("'top_p' must be in (0, 1], got {top_p}")));
    }
    let seed = integer(o, "seed")?.map(|s| s as u64);
    let stop = match o.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) if a.len() <= 4 && a.iter().all(Value::is_string) => a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect(),
        Some(_) => return Err(ApiError::invalid("stop", "'stop' must be a string or a list of up to 4 strings")),
    };
    let stream = match o.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ApiError::invalid("stream", "'stream' must be true or false")),
    };
    match integer(o, "n")? {
        None | Some(1) => {}
        Some(n) => return Err(ApiError::invalid("n", format!("only n = 1 is supported, got {n}"))),
    }
    Ok(Common { max_tokens, temperature: temperature as f32, top_p: top_p as f32, seed, stop, stream })
}

pub fn usage(s: &GenerationStats) -> Value {
    json!({
        "prompt_tokens": s.prompt_tokens,
        "completion_tokens": s.generated_tokens,
        "total_tokens": s.prompt_tokens + s.generated_tokens,
        "prompt_tokens_details": {"cached_tokens": s.cached_tokens},
    })
}

/// Whether a response is a text completion or a chat completion, and its identity.
#[derive(Clone)]
pub struct Reply {
    pub chat: bool,
    pub id: String,
    pub created: u64,
    pub model: String,
}

impl Reply {
    fn object(&self, chunk: bool) -> &'static str {
        match (self.chat, chunk) {
            (true, false) => "chat.completion",
            (true, true) => "chat.completion.chunk",
            (false, _) => "text_completion",
        }
    }

    pub fn full(&self, text: &str, finish_reason: &str, stats: &GenerationStats) -> Value {
        let choice = if self.chat {
            json!({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason, "logprobs": null})
        } else {
            json!({"index": 0, "text": text, "finish_reason": finish_reason, "logprobs": null})
        };
        json!({"id": self.id, "object": self.object(false), "created": self.created, "model": self.model, "choices": [choice], "usage": usage(stats)})
    }

    /// A stream chunk: a piece of text, or (with `finish_reason`) the last one.
    pub fn chunk(&self, text: Option<&str>, finish_reason: Option<&str>, first: bool) -> Value {
        let choice = if self.chat {
            let mut delta = serde_json::Map::new();
            if first {
                delta.insert("role".into(), "assistant".into());
            }
            if let Some(t) = text {
                delta.insert("content".into(), t.into());
            }
            json!({"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": null})
        } else {
            json!({"index": 0, "text": text.unwrap_or(""), "finish_reason": finish_reason, "logprobs": null})
        };
        json!({"id": self.id, "object": self.object(true), "created": self.created, "model": self.model, "choices": [choice]})
    }
}
