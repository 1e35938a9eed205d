//! Real execution of the subgraph DAG: every chunk runs its own program of subgraphs on its own
//! thread, and before each subgraph asks the dispatcher for its processor. The dispatcher grants
//! a processor to one subgraph at a time, choosing among the requested subgraphs whose
//! dependencies are done with the same `Scheduler` the simulator drives, and records when each
//! one ran.

use std::sync::{Condvar, Mutex};
use std::time::Instant;

use super::dag::{Dag, Processor};
use super::schedule::{SchedState, Schedule, Scheduler, Span};

struct State {
    scheduler: Box<dyn Scheduler + Send>,
    /// Requested and not started yet, in program order (one per waiting thread at most).
    pending: Vec<usize>,
    started: Vec<bool>,
    n_started: usize,
    done: Vec<bool>,
    /// The accelerator and the CPU: running a subgraph or free.
    busy: [bool; 2],
    spans: Vec<Span>,
    aborted: bool,
}

pub struct Dispatcher<'a> {
    dag: &'a Dag,
    cost: &'a [f64],
    state: Mutex<State>,
    changed: Condvar,
    t0: Instant,
}

fn slot(p: Processor) -> usize {
    match p {
        Processor::Accel => 0,
        Processor::Cpu => 1,
    }
}

impl<'a> Dispatcher<'a> {
    pub fn new(dag: &'a Dag, cost: &'a [f64], scheduler: Box<dyn Scheduler + Send>) -> Self {
        let n = dag.len();
        Dispatcher {
            dag,
            cost,
            state: Mutex::new(State { scheduler, pending: Vec::new(), started: vec![false; n], n_started: 0, done: vec![false; n], busy: [false; 2], spans: Vec::new(), aborted: false }),
            changed: Condvar::new(),
            t0: Instant::now(),
        }
    }

    /// Runs `work` as subgraph `node` once the dispatcher grants it its processor. None when the
    /// run was aborted (another subgraph failed).
    pub fn run<T>(&self, node: usize, work: impl FnOnce() -> T) -> Option<T> {
        if !self.acquire(node) {
            return None;
        }
        // Release even when `work` panics, so the other threads are not left waiting.
        struct Release<'d, 'a>(&'d Dispatcher<'a>, usize);
        impl Drop for Release<'_, '_> {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    self.0.abort();
                }
                self.0.release(self.1);
            }
        }
        let _release = Release(self, node);
        Some(work())
    }

    fn acquire(&self, node: usize) -> bool {
        let dag = self.dag;
        let p = dag.nodes[node].processor();
        let mut st = self.state.lock().unwrap();
        let at = st.pending.binary_search(&node).unwrap_err();
        st.pending.insert(at, node);
        loop {
            if st.aborted {
                return false;
            }
            let deps_done = |st: &State, i: usize| dag.nodes[i].deps.iter().all(|&d| st.done[d]);
            if !st.busy[slot(p)] && deps_done(&st, node) {
                let ready: Vec<usize> = st.pending.iter().copied().filter(|&i| dag.nodes[i].processor() == p && deps_done(&st, i)).collect();
                let State { scheduler, started, done, n_started, .. } = &mut *st;
                let pick = scheduler.pick(p, &ready, &SchedState { dag, cost: self.cost, started, done, n_started: *n_started });
                if pick == Some(node) {
                    st.pending.retain(|&i| i != node);
                    st.started[node] = true;
                    st.n_started += 1;
                    st.busy[slot(p)] = true;
                    let now = self.t0.elapsed().as_secs_f64() * 1e3;
                    st.spans.push(Span { node, processor: p, start: now, end: now });
                    return true;
                }
                if pick.is_some() {
                    // Another waiting subgraph was picked: wake it.
                    self.changed.notify_all();
                }
            }
            st = self.changed.wait(st).unwrap();
        }
    }

    fn release(&self, node: usize) {
        let mut st = self.state.lock().unwrap();
        st.done[node] = true;
        st.busy[slot(self.dag.nodes[node].processor())] = false;
        let now = self.t0.elapsed().as_secs_f64() * 1e3;
        if let Some(s) = st.spans.iter_mut().rev().find(|s| s.node == node) {
            s.end = now;
        }
        drop(st);
        self.changed.notify_all();
    }

    /// Stops the run: every waiting and later request returns None.
    pub fn abort(&self) {
        self.state.lock().unwrap().aborted = true;
        self.changed.notify_all();
    }

    /// When each subgraph ran (ms from the dispatcher's creation).
    pub fn schedule(&self) -> Schedule {
        let st = self.state.lock().unwrap();
        let makespan = st.spans.iter().map(|s| s.end).fold(0.0, f64::max);
        Schedule { spans: st.spans.clone(), makespan }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prefill::schedule::{InOrder, OutOfOrder};

    /// Runs a DAG with one thread per chunk, each subgraph sleeping its cost, and checks the
    /// recorded schedule: every subgraph once, after its dependencies, one at a time per processor.
    fn run_threads(dag: &Dag, cost: &[f64], scheduler: Box<dyn Scheduler + Send>) -> Schedule {
        let d = Dispatcher::new(dag, cost, scheduler);
        std::thread::scope(|s| {
            for chunk in 0..dag.chunks {
                let d = &d;
                s.spawn(move || {
                    for (i, n) in dag.nodes.iter().enumerate().filter(|(_, n)| n.chunk == chunk) {
                        let _ = n;
                        d.run(i, || std::thread::sleep(std::time::Duration::from_secs_f64(cost[i] / 1e3))).unwrap();
                    }
                });
            }
        });
        d.schedule()
    }

    #[test]
    fn threads_run_every_subgraph_once_in_dependency_order_one_per_processor() {
        let dag = Dag::new(3, 2, &[false, false]);
        let cost: Vec<f64> = dag.nodes.iter().map(|n| if n.processor() == Processor::Accel { 4.0 } else { 2.0 }).collect();
        for sched in [Box::new(InOrder) as Box<dyn Scheduler + Send>, Box::new(OutOfOrder)] {
            let s = run_threads(&dag, &cost, sched);
            assert_eq!(s.spans.len(), dag.len());
            let mut span_of = vec![None; dag.len()];
            for sp in &s.spans {
                assert!(span_of[sp.node].replace(*sp).is_none());
            }
            let spans: Vec<Span> = span_of.into_iter().map(Option::unwrap).collect();
            for (i, n) in dag.nodes.iter().enumerate() {
                for &dep in &n.deps {
                    assert!(spans[dep].end <= spans[i].start, "node {i} before {dep}");
                }
            }
            for p in [Processor::Accel, Processor::Cpu] {
                let mut on_p: Vec<&Span> = spans.iter().filter(|s| s.processor == p).collect();
                on_p.sort_by(|a, b| a.start.total_cmp(&b.start));
                assert!(on_p.windows(2).all(|w| w[0].end <= w[1].start), "{p:?} overlapped");
            }
        }
    }

    #[test]
    fn in_order_threads_follow_program_order() {
        let dag = Dag::new(3, 2, &[false, false]);
        let cost = vec![0.5; dag.len()];
        let s = run_threads(&dag, &cost, Box::new(InOrder));
        let order: Vec<usize> = s.spans.iter().map(|s| s.node).collect();
        assert_eq!(order, (0..dag.len()).collect::<Vec<_>>());
    }

    #[test]
    fn an_aborted_run_releases_every_waiting_thread() {
        let dag = Dag::new(2, 1, &[false]);
        let cost = vec![1.0; dag.len()];
        let d = Dispatcher::new(&dag, &cost, Box::new(InOrder));
        std::thread::scope(|s| {
            // Chunk 1 waits for chunk 0, which fails at its first subgraph.
            let waiter = s.spawn(|| d.run(3, || ()));
            std::thread::sleep(std::time::Duration::from_millis(20));
            assert_eq!(d.run(0, || d.abort()), Some(()));
            assert_eq!(waiter.join().unwrap(), None);
        });
    }
}
