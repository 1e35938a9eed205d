//! The inference thread: owns the engine and one `Session`, whose KV cache is the prompt cache
//! (each request reuses the longest prefix it shares with the previous one), and runs queued
//! jobs one at a time. Text goes back to the request's handler through a channel; when the
//! handler is gone (the client disconnected) or the server shuts down, generation stops at the
//! next token.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::engine::Engine;
use crate::generate::{GenerateOptions, GenerationStats, Session};
use crate::tokenizer::Tokenizer;

/// One generation request, ready to run.
pub struct Job {
    pub prompt: Vec<u32>,
    pub opts: GenerateOptions,
    /// Strings that end the text (not included in it).
    pub stop: Vec<String>,
    pub events: mpsc::Sender<Event>,
}

/// What a job sends back, in order: text pieces, then one `Done` or `Failed`.
#[derive(Debug)]
pub enum Event {
    Text(String),
    Done { stats: GenerationStats, finish_reason: &'static str },
    Failed(String),
}

/// What the inference thread has done, for `/health`.
#[derive(Default)]
pub struct Counters {
    pub completed: AtomicU64,
    /// Stopped because the client went away.
    pub disconnected: AtomicU64,
    pub failed: AtomicU64,
}

/// Runs jobs until the queue closes. `shutdown` set: running generations stop at the next token.
/// With no job for a second the engine is told it is idle.
/// `cache_slots` KV caches are kept (each a full context): a job runs in the one holding the
/// longest prefix of its prompt, or, when none shares any, in the least recently used.
pub fn run(engine: &dyn Engine, tok: &Tokenizer, jobs: std::sync::mpsc::Receiver<Job>, shutdown: Arc<AtomicBool>, cache_slots: usize, counters: &Counters) {
    let mut slots: Vec<(Session, u64)> = Vec::new();
    let stack_version = || engine.bitstack().map(|b| b.version());
    let mut weights_seen = stack_version();
    // Between requests the engine does what it put off (`Engine::idle`), once this long passed.
    const IDLE: std::time::Duration = std::time::Duration::from_secs(1);
    let next = || loop {
        match jobs.recv_timeout(IDLE) {
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => engine.idle(),
            job => return job.ok(),
        }
    };
    for (clock, job) in (1u64..).zip(std::iter::from_fn(next)) {
        if stack_version() != weights_seen {
            // The BitStack was resized: cached prefixes were computed with other weights.
            slots.clear();
            weights_seen = stack_version();
        }
        let i = pick_slot(&slots, &job.prompt, cache_slots).unwrap_or_else(|| {
            slots.push((Session::new(engine), 0));
            slots.len() - 1
        });
        slots[i].1 = clock;
        let (result, disconnected) = run_job(engine, tok, &mut slots[i].0, &job, &shutdown);
        let counter = match (&result, disconnected) {
            (_, true) => &counters.disconnected,
            (Event::Failed(_), _) => &counters.failed,
            _ => &counters.completed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        // The handler may be gone already; nothing to do then.
        let _ = job.events.blocking_send(result);
    }
}

/// The slot for `prompt`: the one sharing its longest prefix, if that is at least half of the
/// prompt or of what the slot holds (every prompt shares a BOS; a different document should not
/// wipe a cached one); else a new slot while fewer than `max` exist (None); else the least
/// recently used.
fn pick_slot(slots: &[(Session, u64)], prompt: &[u32], max: usize) -> Option<usize> {
    let best = slots.iter().enumerate().map(|(i, (s, _))| (s.shared_prefix(prompt), i)).max();
    match best {
        Some((shared, i)) if shared > 0 && 2 * shared >= prompt.len().min(slots[i].0.len()) => Some(i),
        _ if slots.len() < max => None,
        _ => slots.iter().enumerate().min_by_key(|(_, (_, used))| *used).map(|(i, _)| i),
    }
}

/// The job's last event, and whether its client went away before the end.
fn run_job(engine: &dyn Engine, tok: &Tokenizer, session: &mut Session, job: &Job, shutdown: &AtomicBool) -> (Event, bool) {
    let mut stream = tok.stream();
    for &id in &job.prompt {
        if let Err(e) = stream.push(id) {
            return (Event::Failed(e.to_string()), false);
        }
    }
    let mut text = StopFilter::new(&job.stop);
    let mut stopped_by: Option<&'static str> = None;
    let result = session.generate(engine, &job.prompt, &job.opts, |id| {
        if shutdown.load(Ordering::Relaxed) {
            stopped_by = Some("shutdown");
            return Err(crate::Error::Input("the server is shutting down".into()));
        }
        let piece = stream.push(id)?.unwrap_or_default();
        let (out, hit_stop) = text.push(&piece);
        if !out.is_empty() && job.events.blocking_send(Event::Text(out)).is_err() {
            stopped_by = Some("disconnected");
            return Err(crate::Error::Input("the client disconnected".into()));
        }
        if hit_stop {
            stopped_by = Some("stop");
            return Err(crate::Error::Input("stop sequence".into()));
        }
        Ok(())
    });
    let disconnected = stopped_by == Some("disconnected");
    let event = match (result, stopped_by) {
        (Ok(stats), _) => {
            let rest = text.finish(stream.finish().unwrap_or_default());
            if !rest.is_empty() {
                let _ = job.events.blocking_send(Event::Text(rest));
            }
            let finish_reason = if stats.generated_tokens >= job.opts.max_new_tokens || stats.hit_context_limit { "length" } else { "stop" };
            Event::Done { stats, finish_reason }
        }
        (Err(_), Some("stop")) => Event::Done { stats: session.last_stats().unwrap_or_default(), finish_reason: "stop" },
        (Err(_), Some("shutdown")) => Event::Failed("the server is shutting down".into()),
        (Err(e), _) => Event::Failed(e.to_string()),
    };
    (event, disconnected)
}

/// Holds back text that could be the start of a stop string, and cuts the text at the first
/// stop string found.
struct StopFilter<'a> {
    stops: &'a [String],
    pending: String,
}

impl<'a> StopFilter<'a> {
    fn new(stops: &'a [String]) -> Self {
        StopFilter { stops, pending: String::new() }
    }

    /// The text that can be sent now, and whether a stop string was reached.
    fn push(&mut self, piece: &str) -> (String, bool) {
        self.pending.push_str(piece);
        if let Some(at) = self.stops.iter().filter(|s| !s.is_empty()).filter_map(|s| self.pending.find(s.as_str())).min() {
            let out = self.pending[..at].to_string();
            self.pending.clear();
            return (out, true);
        }
        // Keep the longest tail that is a proper prefix of some stop string.
        let keep = self
            .stops
            .iter()
            .flat_map(|s| (1..s.len()).rev().filter(|&n| s.is_char_boundary(n)).map(move |n| &s[..n]))
            .filter(|prefix| self.pending.ends_with(prefix))
            .map(str::len)
            .max()
            .unwrap_or(0);
        let cut = self.pending.len() - keep;
        let out = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        (out, false)
    }

    fn finish(&mut self, tail: String) -> String {
        self.pending.push_str(&tail);
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_strings_cut_the_text_and_partial_matches_wait() {
        let stops = vec!["\n\n".to_string(), "END".to_string()];
        let mut f = StopFilter::new(&stops);
        assert_eq!(f.push("Hello E"), ("Hello ".to_string(), false));
        assert_eq!(f.push("N"), (String::new(), false));
        assert_eq!(f.push("ough"), ("ENough".to_string(), false));
        assert_eq!(f.push(" and\n"), (" and".to_string(), false));
        assert_eq!(f.push("\nmore"), (String::new(), true));
        let mut g = StopFilter::new(&[]);
        assert_eq!(g.push("anything"), ("anything".to_string(), false));
    }
}
