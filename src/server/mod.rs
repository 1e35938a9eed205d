//! A local OpenAI-compatible server (`llm-npu serve`): `POST /v1/completions`,
//! `POST /v1/chat/completions` (streamed as server-sent events or not), `GET /v1/models`,
//! `GET /health`, on axum over hyper.
//!
//! Design (the reasons are in README "Server"): one inference thread runs requests one at a time
//! on the engine the library builds; it keeps a few KV caches as the prompt cache, so a request
//! sharing a prefix with an earlier one prefills only the rest. Requests wait in a bounded queue (503
//! when full). A client that goes away stops its generation at the next token. Bodies are size
//! limited, request headers must arrive within a time limit, and SIGINT/SIGTERM ends in-flight
//! streams with an error chunk before the server exits.

pub mod api;
mod worker;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use self::api::{ApiError, Reply};
use self::worker::{Event, Job};
use crate::chat::{ChatInput, ChatTemplate};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::generate::GenerateOptions;
use crate::model::LoadedModel;
use crate::sampling::SamplingParams;

#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub addr: SocketAddr,
    /// Required as `Authorization: Bearer KEY` on every request when set.
    pub api_key: Option<String>,
    /// Requests waiting behind the running one; more get 503.
    pub max_waiting: usize,
    pub max_body_bytes: usize,
    /// Time a connection has to send a request's headers.
    pub header_timeout: Duration,
    /// The name clients use for the model (`model` in requests).
    pub model_id: String,
    /// A Jinja chat template to use instead of the model's own.
    pub chat_template: Option<String>,
    /// Prompt-cache states kept (KV caches of the model's full context each), evicted least
    /// recently used.
    pub cache_slots: usize,
}

struct AppState {
    opts: ServerOptions,
    loaded: Arc<LoadedModel>,
    template: Option<ChatTemplate>,
    /// Why chat is unavailable, when it is.
    template_error: Option<String>,
    jobs: std::sync::mpsc::SyncSender<Job>,
    next_id: AtomicU64,
    counters: Arc<worker::Counters>,
    /// The engine's BitStack, grown and shrunk through /admin/bitstack.
    bitstack: Option<Arc<crate::bitstack::BitStack>>,
}

/// Refuses a model the server cannot serve (before an engine is built for it).
pub fn check_model(loaded: &LoadedModel) -> Result<()> {
    if loaded.tokenizer.is_none() {
        return Err(Error::Input("serving needs the model's tokenizer; pass --tokenizer".into()));
    }
    Ok(())
}

/// Listens on `opts.addr` and serves `engine` until SIGINT or SIGTERM. `ready` is called with
/// the bound address once requests are accepted.
pub fn serve(engine: &dyn Engine, opts: ServerOptions, ready: impl FnOnce(SocketAddr)) -> Result<()> {
    let loaded = engine.loaded().clone();
    check_model(&loaded)?;
    let (template, template_error) = match loaded.chat_template(opts.chat_template.as_deref()) {
        Ok(t) => (Some(t), None),
        Err(e) => (None, Some(e.to_string())),
    };
    let (jobs_tx, jobs_rx) = std::sync::mpsc::sync_channel::<Job>(opts.max_waiting);
    let shutdown = Arc::new(AtomicBool::new(false));
    let counters = Arc::new(worker::Counters::default());
    let state = Arc::new(AppState { opts: opts.clone(), loaded: loaded.clone(), template, template_error, jobs: jobs_tx, next_id: AtomicU64::new(1), counters: counters.clone(), bitstack: engine.bitstack().cloned() });
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_io().enable_time().build().map_err(|e| Error::Runtime(format!("starting the server runtime: {e}")))?;
    std::thread::scope(|s| {
        let (flag, tok) = (shutdown.clone(), loaded.tokenizer.as_ref().expect("checked above"));
        let slots = opts.cache_slots.max(1);
        s.spawn(move || worker::run(engine, tok, jobs_rx, flag, slots, &counters));
        let result = runtime.block_on(accept_loop(state, shutdown.clone(), ready));
        // Ends the worker: the last sender goes with the state (dropped in accept_loop).
        shutdown.store(true, Ordering::SeqCst);
        result
    })
}

fn router(state: Arc<AppState>) -> Router {
    let limit = state.opts.max_body_bytes;
    Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/admin/bitstack", get(bitstack_size).post(bitstack_resize))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "invalid_request_error", Some("not_found"), "no such endpoint") })
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

async fn accept_loop(state: Arc<AppState>, shutdown: Arc<AtomicBool>, ready: impl FnOnce(SocketAddr)) -> Result<()> {
    let addr = state.opts.addr;
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| Error::Input(format!("cannot listen on {addr}: {e}")))?;
    let local = listener.local_addr().map_err(|e| Error::Runtime(e.to_string()))?;
    let header_timeout = state.opts.header_timeout;
    let app = router(state);
    let open = Arc::new(AtomicUsize::new(0));
    ready(local);
    let stop = stop_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let Some((stream, raw)) = with_raw_handle(stream) else { continue };
                // Set when the connection's first request reaches the router (its headers are in).
                let started = Arc::new(AtomicBool::new(false));
                let flag = started.clone();
                let app = app.clone().layer(axum::middleware::from_fn(move |req: Request, next: axum::middleware::Next| {
                    flag.store(true, Ordering::SeqCst);
                    next.run(req)
                }));
                let service = hyper_util::service::TowerToHyperService::new(app);
                let open = open.clone();
                open.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(request_timeout(raw, started, header_timeout));
                tokio::spawn(async move {
                    let conn = hyper::server::conn::http1::Builder::new()
                        .timer(hyper_util::rt::TokioTimer::new())
                        .header_read_timeout(header_timeout + Duration::from_millis(500))
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                    let _ = conn.await;
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
            _ = &mut stop => break,
        }
    }
    // Running generations stop at their next token and their streams end with an error chunk;
    // give open connections a moment to finish writing.
    shutdown.store(true, Ordering::SeqCst);
    drop(app);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while open.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// The accepted stream for hyper, and a second handle to the same socket for `request_timeout`.
fn with_raw_handle(stream: tokio::net::TcpStream) -> Option<(tokio::net::TcpStream, std::net::TcpStream)> {
    let std_stream = stream.into_std().ok()?;
    let raw = std_stream.try_clone().ok()?;
    std_stream.set_nonblocking(true).ok()?;
    Some((tokio::net::TcpStream::from_std(std_stream).ok()?, raw))
}

/// When a connection's first request has not arrived whole within `timeout` (a client sending
/// its headers slowly), answers 408 in OpenAI's error shape and closes the socket. (hyper's own
/// header timeout, a little later, would close it without a word.)
async fn request_timeout(raw: std::net::TcpStream, started: Arc<AtomicBool>, timeout: Duration) {
    tokio::time::sleep(timeout).await;
    if started.load(Ordering::SeqCst) {
        return;
    }
    let body = ApiError::new(StatusCode::REQUEST_TIMEOUT, "invalid_request_error", Some("request_timeout"), format!("the request headers did not arrive within {} s", timeout.as_secs_f32())).body().to_string();
    let response = format!("HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
    let _ = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let _ = (&raw).write_all(response.as_bytes());
        let _ = raw.shutdown(std::net::Shutdown::Both);
    })
    .await;
}

async fn stop_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
}

/// Liveness, and what the inference thread has done.
async fn health(State(state): State<Arc<AppState>>) -> Json<Value> {
    let c = &state.counters;
    let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
    Json(json!({"status": "ok", "requests": {"completed": n(&c.completed), "disconnected": n(&c.disconnected), "failed": n(&c.failed)}}))
}

fn authorize(state: &AppState, headers: &HeaderMap) -> std::result::Result<(), ApiError> {
    let Some(key) = &state.opts.api_key else { return Ok(()) };
    let given = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    if given == Some(key.as_str()) {
        Ok(())
    } else {
        Err(ApiError::new(StatusCode::UNAUTHORIZED, "invalid_request_error", Some("invalid_api_key"), "missing or wrong API key (Authorization: Bearer KEY)"))
    }
}

async fn models(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(e) = authorize(&state, &headers) {
        return e.into_response();
    }
    Json(json!({"object": "list", "data": [{"id": state.opts.model_id, "object": "model", "created": 0, "owned_by": "llm-npu"}]})).into_response()
}

fn no_stack() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "invalid_request_error", Some("not_found"), "this server runs without a BitStack (start it with --bitstack FILE)")
}

/// What the BitStack holds now.
async fn bitstack_size(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(e) = authorize(&state, &headers) {
        return e.into_response();
    }
    match &state.bitstack {
        Some(b) => Json(json!(b.size())).into_response(),
        None => no_stack().into_response(),
    }
}

/// Grows or shrinks the BitStack to {"memory_mb": MB} or {"blocks": N}; answers with what it
/// holds then. Requests running meanwhile finish their current token first.
async fn bitstack_resize(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let result = async {
        authorize(&state, req.headers())?;
        let stack = state.bitstack.clone().ok_or_else(no_stack)?;
        let (_, body) = read_body(&state, req).await?;
        let o = api::parse_object(&body)?;
        let budget = match (o.get("memory_mb"), o.get("blocks")) {
            (Some(mb), None) => match mb.as_f64() {
                Some(mb) if mb.is_finite() && mb > 0.0 => crate::bitstack::Budget::MemoryMb(mb),
                _ => return Err(ApiError::invalid("memory_mb", "'memory_mb' must be a positive number")),
            },
            (None, Some(n)) => crate::bitstack::Budget::Blocks(n.as_u64().ok_or_else(|| ApiError::invalid("blocks", "'blocks' must be a non-negative integer"))? as usize),
            _ => return Err(ApiError::invalid("memory_mb", "give exactly one of 'memory_mb' (megabytes for the weights) or 'blocks'")),
        };
        let resized = tokio::task::spawn_blocking(move || stack.resize(budget)).await;
        match resized {
            Ok(Ok(size)) => Ok(Json(json!(size)).into_response()),
            Ok(Err(Error::Input(msg))) => Err(ApiError::invalid("memory_mb", msg)),
            Ok(Err(e)) => Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", None, e.to_string())),
            Err(e) => Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", None, format!("resizing failed: {e}"))),
        }
    };
    result.await.unwrap_or_else(IntoResponse::into_response)
}

async fn completions(State(state): State<Arc<AppState>>, req: Request) -> Response {
    handle(state, req, false).await.unwrap_or_else(IntoResponse::into_response)
}

async fn chat_completions(State(state): State<Arc<AppState>>, req: Request) -> Response {
    handle(state, req, true).await.unwrap_or_else(IntoResponse::into_response)
}

/// The body, refused at once (413) when its declared length is over the limit, or as soon as
/// more than the limit has arrived.
async fn read_body(state: &AppState, req: Request) -> std::result::Result<(HeaderMap, Bytes), ApiError> {
    let limit = state.opts.max_body_bytes;
    let too_large = || ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "invalid_request_error", Some("request_too_large"), format!("the request body is larger than {limit} bytes"));
    let declared = req.headers().get("content-length").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| too_large())?;
    Ok((parts.headers, bytes))
}

/// Checks a request, queues it, and answers with the whole text or a stream.
async fn handle(state: Arc<AppState>, req: Request, chat: bool) -> std::result::Result<Response, ApiError> {
    authorize(&state, req.headers())?;
    let (_, body) = read_body(&state, req).await?;
    let o = api::parse_object(&body)?;
    match o.get("model") {
        Some(Value::String(m)) if *m == state.opts.model_id => {}
        Some(Value::String(m)) => return Err(ApiError::new(StatusCode::NOT_FOUND, "invalid_request_error", Some("model_not_found"), format!("model '{m}' does not exist; this server has '{}'", state.opts.model_id))),
        _ => return Err(ApiError::invalid("model", "'model' (a string) is required")),
    }
    let common = api::common(&o)?;
    let tok = state.loaded.tokenizer.as_ref().expect("checked at start");
    let prompt = if chat {
        let template = state.template.as_ref().ok_or_else(|| ApiError::invalid("messages", state.template_error.clone().unwrap_or_default()))?;
        let messages = o.get("messages").filter(|m| m.as_array().is_some_and(|a| !a.is_empty() && a.iter().all(|m| m.get("role").is_some_and(Value::is_string))));
        let messages = messages.ok_or_else(|| ApiError::invalid("messages", "'messages' must be a non-empty list of objects with a 'role'"))?;
        let tools = o.get("tools").filter(|t| !t.is_null());
        let input = ChatInput { messages, tools, add_generation_prompt: true, extra: None };
        crate::chat::prompt_tokens(template, tok, &input).map_err(|e| ApiError::invalid("messages", e.to_string()))?
    } else {
        let text = match o.get("prompt") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => a[0].as_str().unwrap_or_default().to_string(),
            _ => return Err(ApiError::invalid("prompt", "'prompt' must be a string")),
        };
        tok.encode(&text, true).map_err(|e| ApiError::invalid("prompt", e.to_string()))?
    };
    let context = state.loaded.model.config.max_seq_len;
    let remaining = context.saturating_sub(prompt.len());
    if prompt.is_empty() || remaining == 0 {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", Some("context_length_exceeded"), format!("the prompt has {} tokens; this model's context is {context}", prompt.len())));
    }
    let max_tokens = common.max_tokens.unwrap_or(if chat { remaining } else { 16 });
    if max_tokens > remaining {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", Some("context_length_exceeded"), format!("{} prompt tokens + {max_tokens} to generate exceed this model's context of {context}", prompt.len())));
    }
    let stop_tokens = state.loaded.stop_tokens();
    let sampling = SamplingParams { temperature: common.temperature, top_k: 0, top_p: common.top_p, seed: common.seed.unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)) };
    let opts = GenerateOptions { max_new_tokens: max_tokens, sampling, stop_tokens, vocab_limit: Some(tok.vocab_size()) };
    let (events, mut rx) = mpsc::channel(64);
    let job = Job { prompt, opts, stop: common.stop, events };
    state.jobs.try_send(job).map_err(|e| match e {
        std::sync::mpsc::TrySendError::Full(_) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", Some("server_busy"), "too many requests are waiting; try again later"),
        std::sync::mpsc::TrySendError::Disconnected(_) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", None, "the server is shutting down"),
    })?;
    let created = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let n = state.next_id.fetch_add(1, Ordering::Relaxed);
    let reply = Reply { chat, id: format!("{}-{n}", if chat { "chatcmpl" } else { "cmpl" }), created, model: state.opts.model_id.clone() };
    if !common.stream {
        let mut text = String::new();
        while let Some(ev) = rx.recv().await {
            match ev {
                Event::Text(t) => text.push_str(&t),
                Event::Done { stats, finish_reason } => return Ok(Json(reply.full(&text, finish_reason, &stats)).into_response()),
                Event::Failed(msg) => return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", None, msg)),
            }
        }
        return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", None, "the generation ended without a result"));
    }
    // Server-sent events: chunks as text arrives, the last with the finish reason (or an error
    // object), then [DONE].
    let stream = async_stream_events(reply, rx);
    Ok(Sse::new(stream).into_response())
}

type SseItem = std::result::Result<SseEvent, std::convert::Infallible>;

fn async_stream_events(reply: Reply, rx: mpsc::Receiver<Event>) -> impl tokio_stream::Stream<Item = SseItem> {
    use tokio_stream::StreamExt;
    let mut first = true;
    // The job's sender goes away after its last event, which ends this stream; [DONE] follows.
    let chunks = tokio_stream::wrappers::ReceiverStream::new(rx).map(move |ev| {
        let v = match ev {
            Event::Text(t) => reply.chunk(Some(&t), None, first),
            Event::Done { finish_reason, .. } => reply.chunk(None, Some(finish_reason), first),
            Event::Failed(msg) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", None, msg).body(),
        };
        first = false;
        Ok(SseEvent::default().data(v.to_string()))
    });
    chunks.chain(tokio_stream::once(Ok(SseEvent::default().data("[DONE]"))))
}
