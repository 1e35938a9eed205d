//! Out-of-order prefill (llm.npu's block level) on real executors: the chunk x layer subgraphs
//! run on an accelerator executor and a CPU executor, each a thread pool of its own share of the
//! cores and each running one subgraph at a time, in the order a `Scheduler` picks. Each chunk
//! walks its layers on its own thread and asks the dispatcher before every subgraph.
//!
//! Subgraphs per chunk and layer: q/k/v (accelerator), RoPE + KV cache + attention (CPU),
//! o_proj..down_proj with the norm and SwiGLU between them (accelerator). The shadow work of each
//! accelerator graph runs beside it inside the accelerator executor (`AccelChunk`), not as CPU
//! subgraphs of its own.

use std::sync::Mutex;

use super::{AccelChunk, NpuEngine};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::model::transformer::LinearExecutor;
use crate::model::{KvCache, Logits};
use crate::prefill::dag::{Dag, Kind, Processor};
use crate::prefill::executor::Dispatcher;
use crate::prefill::schedule::{InOrder, OutOfOrder, Schedule, Scheduler};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchedulerKind {
    InOrder,
    OutOfOrder,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecutorOptions {
    pub scheduler: SchedulerKind,
    /// Threads of the accelerator executor and of the CPU executor.
    pub accel_threads: usize,
    pub cpu_threads: usize,
}

impl Default for ExecutorOptions {
    /// Out of order on 2 + 2 threads, the fastest split measured on 2 cores with no NPU (README,
    /// "Out-of-order execution").
    fn default() -> Self {
        ExecutorOptions { scheduler: SchedulerKind::OutOfOrder, accel_threads: 2, cpu_threads: 2 }
    }
}

pub(crate) struct Executors {
    options: ExecutorOptions,
    accel: rayon::ThreadPool,
    cpu: rayon::ThreadPool,
    /// The DAG and schedule of the last scheduled prefill.
    last: Mutex<Option<(Dag, Schedule)>>,
}

impl Executors {
    pub(crate) fn new(options: ExecutorOptions) -> Result<Self> {
        let pool = |n: usize, name: &'static str| {
            if n == 0 {
                return Err(Error::Input(format!("the {name} executor needs at least one thread")));
            }
            rayon::ThreadPoolBuilder::new().num_threads(n).thread_name(move |i| format!("{name}-{i}")).build().map_err(|e| Error::Input(format!("starting the {name} executor: {e}")))
        };
        Ok(Executors { options, accel: pool(options.accel_threads, "accel")?, cpu: pool(options.cpu_threads, "cpu")?, last: Mutex::new(None) })
    }
}

/// One subgraph's work on a chunk.
type Step<'s> = dyn Fn(&mut crate::model::ChunkState) -> Result<()> + Sync + 's;

impl NpuEngine {
    /// The DAG and the measured schedule of the last prefill run on the executors.
    pub fn last_schedule(&self) -> Option<(Dag, Schedule)> {
        self.executors.as_ref().and_then(|e| e.last.lock().unwrap().clone())
    }

    /// Relative accelerator time of each subgraph, for the out-of-order rule (it compares sums of
    /// accelerator work, so multiply-accumulates per row are enough).
    fn estimated_costs(&self, dag: &Dag, rows: &[usize]) -> Vec<f64> {
        let c = &self.model().config;
        dag.nodes.iter().map(|n| (rows[n.chunk] * n.kind.linear_groups().iter().map(|g| g.macs_per_token(c)).sum::<usize>()) as f64).collect()
    }

    pub(super) fn forward_scheduled(&self, ex: &Executors, tokens: &[u32], cache: &mut KvCache, which: Logits) -> Result<Vec<f32>> {
        let model = self.model();
        let plan = self.plan_chunks(tokens.len());
        let layers = model.layers.len();
        let dag = Dag::new(plan.len(), layers, &vec![false; layers]);
        let rows: Vec<usize> = plan.iter().map(|&(_, r)| r).collect();
        let cost = self.estimated_costs(&dag, &rows);
        let scheduler: Box<dyn Scheduler + Send> = match ex.options.scheduler {
            SchedulerKind::InOrder => Box::new(InOrder),
            SchedulerKind::OutOfOrder => Box::new(OutOfOrder),
        };
        let dispatcher = Dispatcher::new(&dag, &cost, scheduler);
        let (pos0, capacity) = (cache.len(), cache.capacity());
        let shared_cache = Mutex::new(&mut *cache);
        let first_error: Mutex<Option<Error>> = Mutex::new(None);
        let fail = |e: Error| {
            first_error.lock().unwrap().get_or_insert(e);
            dispatcher.abort();
        };
        // Each chunk's final hidden states, in chunk order.
        let mut hidden: Vec<Option<Vec<f32>>> = vec![None; plan.len()];
        std::thread::scope(|s| {
            let mut start = pos0;
            for ((c, &(real, rows)), out) in plan.iter().enumerate().zip(hidden.iter_mut()) {
                let chunk_tokens = &tokens[start - pos0..start - pos0 + real];
                let chunk_pos = start;
                start += real;
                let (dag, dispatcher, shared_cache, fail) = (&dag, &dispatcher, &shared_cache, &fail);
                s.spawn(move || {
                    let exec = AccelChunk { npu: self, rows, chunk: c };
                    let mut st = match model.start_chunk(chunk_tokens, chunk_pos, capacity, pos0 + tokens.len(), Default::default()) {
                        Ok(st) => st,
                        Err(e) => return fail(e),
                    };
                    for l in 0..layers {
                        let node = |k: Kind| dag.find(c, l, k).expect("every chunk has every layer");
                        let on = |k: Kind| if k.processor() == Processor::Accel { &ex.accel } else { &ex.cpu };
                        let steps: [(Kind, &Step); 3] = [
                            (Kind::Qkv, &|st| model.layer_qkv(&exec, l, st, None)),
                            (Kind::Attention, &|st| {
                                model.layer_attention(l, exec.attention(), st, &mut shared_cache.lock().unwrap(), None);
                                Ok(())
                            }),
                            (Kind::OFfn, &|st| model.layer_o_ffn(&exec, l, st, None)),
                        ];
                        for (kind, step) in steps {
                            match dispatcher.run(node(kind), || on(kind).install(|| step(&mut st))) {
                                None => return,
                                Some(Err(e)) => return fail(e),
                                Some(Ok(())) => {}
                            }
                        }
                    }
                    *out = Some(st.x);
                });
            }
        });
        if let Some(e) = first_error.into_inner().unwrap() {
            return Err(e);
        }
        cache.advance(tokens.len());
        *ex.last.lock().unwrap() = Some((dag.clone(), dispatcher.schedule()));
        let mut logits = Vec::new();
        let n = hidden.len();
        for (i, x) in hidden.into_iter().enumerate() {
            if let Some(w) = which.for_chunk(i, n) {
                logits.extend(self.logits(&x.expect("every chunk finished"), w));
            }
        }
        Ok(logits)
    }
}
