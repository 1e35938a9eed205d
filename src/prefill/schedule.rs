//! Schedulers for the subgraph DAG and a discrete-event simulator that runs them in virtual time
//! on a cost model. Each processor (accelerator, CPU) runs one subgraph at a time; when one is
//! idle, the scheduler picks its next subgraph among the ready ones.
//!
//! - `InOrder`, the baseline: subgraphs start in program order (chunk by chunk, layer by layer);
//!   the only overlap is a shadow node beside its accelerator node.
//! - `OutOfOrder`, llm.npu's online rule: for a ready subgraph g, let S be the accelerator
//!   subgraphs that become ready when g finishes; C(g) = +sum T(S) if g runs on the CPU and
//!   -sum T(S) if it runs on the accelerator; run the ready subgraph with the largest C (ties: the
//!   earliest in program order). CPU work that unblocks the accelerator goes first, so the
//!   accelerator never waits while something could feed it.

use super::dag::{Dag, Processor};

/// What a scheduler may look at when it picks.
pub struct SchedState<'a> {
    pub dag: &'a Dag,
    /// Estimated time of each node (ms), from a profile.
    pub cost: &'a [f64],
    pub started: &'a [bool],
    pub done: &'a [bool],
    /// How many nodes have started.
    pub n_started: usize,
}

pub trait Scheduler {
    fn name(&self) -> &'static str;
    /// The next node for the idle `processor`, from `ready` (nodes of that processor whose
    /// dependencies are done, not started, in program order). None leaves it idle.
    fn pick(&mut self, processor: Processor, ready: &[usize], state: &SchedState) -> Option<usize>;
}

pub struct InOrder;

impl Scheduler for InOrder {
    fn name(&self) -> &'static str {
        "in-order"
    }

    fn pick(&mut self, _: Processor, ready: &[usize], state: &SchedState) -> Option<usize> {
        // In order, the started nodes are always a prefix of the program, so the next one is
        // node `n_started`; it runs once it is ready (`ready` is in program order).
        debug_assert!(state.started[..state.n_started].iter().all(|&s| s));
        ready.first().copied().filter(|&r| r == state.n_started)
    }
}

pub struct OutOfOrder;

impl OutOfOrder {
    /// C(g): the accelerator time that g's completion makes ready, signed by g's processor.
    fn priority(g: usize, state: &SchedState) -> f64 {
        let unlocked: f64 = state.dag.dependents[g]
            .iter()
            .filter(|&&d| {
                let n = &state.dag.nodes[d];
                n.processor() == Processor::Accel && !state.started[d] && n.deps.iter().all(|&p| p == g || state.done[p])
            })
            .map(|&d| state.cost[d])
            .sum();
        match state.dag.nodes[g].processor() {
            Processor::Cpu => unlocked,
            Processor::Accel => -unlocked,
        }
    }
}

impl Scheduler for OutOfOrder {
    fn name(&self) -> &'static str {
        "ooo"
    }

    fn pick(&mut self, _: Processor, ready: &[usize], state: &SchedState) -> Option<usize> {
        // `ready` is in program order and max_by keeps the last maximum, so scan it reversed.
        ready.iter().rev().copied().max_by(|&a, &b| Self::priority(a, state).total_cmp(&Self::priority(b, state)))
    }
}

/// One subgraph's run in a schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Span {
    pub node: usize,
    pub processor: Processor,
    pub start: f64,
    pub end: f64,
}

#[derive(Debug, Clone)]
pub struct Schedule {
    pub spans: Vec<Span>,
    pub makespan: f64,
}

impl Schedule {
    fn busy(&self, p: Processor) -> f64 {
        self.spans.iter().filter(|s| s.processor == p).map(|s| s.end - s.start).sum()
    }

    /// Busy time over the makespan.
    pub fn utilization(&self, p: Processor) -> f64 {
        if self.makespan > 0.0 {
            self.busy(p) / self.makespan
        } else {
            0.0
        }
    }

    /// Idle time of the accelerator between its first start and its last end, over that span.
    pub fn accel_bubble_rate(&self) -> f64 {
        let accel: Vec<&Span> = self.spans.iter().filter(|s| s.processor == Processor::Accel).collect();
        let (Some(first), Some(last)) = (accel.iter().map(|s| s.start).reduce(f64::min), accel.iter().map(|s| s.end).reduce(f64::max)) else {
            return 0.0;
        };
        let span = last - first;
        if span > 0.0 {
            (span - self.busy(Processor::Accel)) / span
        } else {
            0.0
        }
    }
}

/// Runs `dag` in virtual time: each node takes `cost[node]`; whenever a processor is idle the
/// scheduler picks its next node. Returns every node's span.
pub fn simulate(dag: &Dag, cost: &[f64], scheduler: &mut dyn Scheduler) -> Schedule {
    assert_eq!(cost.len(), dag.len());
    let n = dag.len();
    let (mut started, mut done) = (vec![false; n], vec![false; n]);
    let mut missing: Vec<usize> = dag.nodes.iter().map(|x| x.deps.len()).collect();
    let procs = [Processor::Accel, Processor::Cpu];
    let slot = |p: Processor| procs.iter().position(|&q| q == p).expect("two processors");
    // Ready nodes per processor, in program order, kept up to date as nodes start and finish.
    let mut ready: [Vec<usize>; 2] = [Vec::new(), Vec::new()];
    for i in (0..n).filter(|&i| missing[i] == 0) {
        ready[slot(dag.nodes[i].processor())].push(i);
    }
    let mut spans = Vec::with_capacity(n);
    // (node, end time) running on the accelerator and on the CPU
    let mut running: [Option<(usize, f64)>; 2] = [None, None];
    let mut now = 0.0f64;
    let (mut finished, mut n_started) = (0, 0);
    while finished < n {
        for (k, &p) in procs.iter().enumerate() {
            if running[k].is_some() || ready[k].is_empty() {
                continue;
            }
            let state = SchedState { dag, cost, started: &started, done: &done, n_started };
            if let Some(g) = scheduler.pick(p, &ready[k], &state) {
                let at = ready[k].binary_search(&g).unwrap_or_else(|_| panic!("scheduler {} picked node {g}, which is not ready", scheduler.name()));
                ready[k].remove(at);
                started[g] = true;
                n_started += 1;
                running[k] = Some((g, now + cost[g]));
                spans.push(Span { node: g, processor: p, start: now, end: now + cost[g] });
            }
        }
        // Finish the running node that ends first.
        let (k, (g, end)) = running
            .iter()
            .enumerate()
            .filter_map(|(k, r)| r.map(|r| (k, r)))
            .min_by(|a, b| a.1 .1.total_cmp(&b.1 .1))
            .unwrap_or_else(|| panic!("scheduler {} left both processors idle with work left", scheduler.name()));
        now = end;
        running[k] = None;
        done[g] = true;
        finished += 1;
        for &d in &dag.dependents[g] {
            missing[d] -= 1;
            if missing[d] == 0 {
                let r = &mut ready[slot(dag.nodes[d].processor())];
                let at = r.binary_search(&d).unwrap_err();
                r.insert(at, d);
            }
        }
    }
    Schedule { spans, makespan: now }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prefill::dag::Kind;

    /// Picks a random ready node (or, now and then, none while the other processor is busy).
    struct Random(u64);

    impl Scheduler for Random {
        fn name(&self) -> &'static str {
            "random"
        }
        fn pick(&mut self, _: Processor, ready: &[usize], _: &SchedState) -> Option<usize> {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            Some(ready[(self.0 >> 33) as usize % ready.len()])
        }
    }

    fn check_valid(dag: &Dag, cost: &[f64], s: &Schedule) {
        let mut span_of = vec![None; dag.len()];
        for sp in &s.spans {
            assert!(span_of[sp.node].is_none(), "node {} ran twice", sp.node);
            span_of[sp.node] = Some(*sp);
            assert_eq!(sp.processor, dag.nodes[sp.node].processor());
            assert!((sp.end - sp.start - cost[sp.node]).abs() < 1e-9);
        }
        let spans: Vec<Span> = span_of.into_iter().map(|s| s.expect("every node runs")).collect();
        for (i, n) in dag.nodes.iter().enumerate() {
            for &d in &n.deps {
                assert!(spans[d].end <= spans[i].start + 1e-9, "node {i} started before its dependency {d} ended");
            }
        }
        for p in [Processor::Accel, Processor::Cpu] {
            let mut on_p: Vec<&Span> = spans.iter().filter(|s| s.processor == p).collect();
            on_p.sort_by(|a, b| a.start.total_cmp(&b.start).then(a.end.total_cmp(&b.end)));
            for w in on_p.windows(2) {
                assert!(w[0].end <= w[1].start + 1e-9, "{p:?} ran two subgraphs at once");
            }
        }
    }

    #[test]
    fn every_scheduler_runs_every_subgraph_once_and_respects_every_dependency() {
        let mut seed = 1u64;
        for (chunks, layers) in [(1, 1), (2, 3), (4, 5), (7, 2)] {
            let shadow: Vec<bool> = (0..layers).map(|l| l % 2 == 0).collect();
            let dag = Dag::new(chunks, layers, &shadow);
            for trial in 0..20 {
                let cost: Vec<f64> = (0..dag.len())
                    .map(|i| {
                        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(trial);
                        ((seed >> 40) % 100) as f64 / 10.0 + if i % 7 == 0 { 0.0 } else { 0.1 }
                    })
                    .collect();
                let schedulers: [Box<dyn Scheduler>; 3] = [Box::new(InOrder), Box::new(OutOfOrder), Box::new(Random(seed))];
                for mut s in schedulers {
                    let sched = simulate(&dag, &cost, s.as_mut());
                    check_valid(&dag, &cost, &sched);
                }
            }
        }
    }

    #[test]
    fn makespans_match_hand_computed_examples() {
        // One chunk, one layer, no shadow: qkv 2 -> attention 3 -> o+ffn 5, strictly serial.
        let dag = Dag::new(1, 1, &[false]);
        let cost = [2.0, 3.0, 5.0];
        for mut s in [Box::new(InOrder) as Box<dyn Scheduler>, Box::new(OutOfOrder)] {
            let r = simulate(&dag, &cost, s.as_mut());
            assert_eq!(r.makespan, 10.0);
            assert!((r.accel_bubble_rate() - 3.0 / 10.0).abs() < 1e-12);
        }
        // Two chunks, one layer. Program order: qkv0 attn0 offn0 qkv1 attn1 offn1.
        // In order: qkv0 [0,2] attn0 [2,5] offn0 [5,10] qkv1 [10,12] attn1 [12,15] offn1 [15,20].
        // Out of order: qkv1 runs on the accelerator during attn0: qkv0 [0,2], attn0 [2,5] and
        // qkv1 [2,4]; then offn0 [5,10] beside attn1 [5,8]; offn1 [10,15]: makespan 15.
        let dag = Dag::new(2, 1, &[false]);
        let cost = [2.0, 3.0, 5.0, 2.0, 3.0, 5.0];
        let r = simulate(&dag, &cost, &mut InOrder);
        assert_eq!(r.makespan, 20.0);
        assert!((r.accel_bubble_rate() - 6.0 / 20.0).abs() < 1e-12);
        let r = simulate(&dag, &cost, &mut OutOfOrder);
        assert_eq!(r.makespan, 15.0);
        let starts: Vec<(usize, f64)> = r.spans.iter().map(|s| (s.node, s.start)).collect();
        assert_eq!(starts, vec![(0, 0.0), (3, 2.0), (1, 2.0), (2, 5.0), (4, 5.0), (5, 10.0)]);
        // Accelerator busy 14 of the 15 ms it spans: idle [4, 5].
        assert!((r.accel_bubble_rate() - 1.0 / 15.0).abs() < 1e-12);
        assert!((r.utilization(Processor::Cpu) - 6.0 / 15.0).abs() < 1e-12);
    }

    #[test]
    fn shadow_nodes_run_beside_their_accelerator_node_in_order() {
        // qkv 4 with shadow 1, attention 2, o+ffn 4 with shadow 3: in order the shadows overlap
        // their accelerator nodes: [0,4] qkv + [0,1] shadow, [4,6] attention, [6,10] o+ffn + [6,9].
        let dag = Dag::new(1, 1, &[true]);
        let kinds: Vec<Kind> = dag.nodes.iter().map(|n| n.kind).collect();
        assert_eq!(kinds, vec![Kind::Qkv, Kind::ShadowQkv, Kind::Attention, Kind::OFfn, Kind::ShadowOFfn]);
        let r = simulate(&dag, &[4.0, 1.0, 2.0, 4.0, 3.0], &mut InOrder);
        assert_eq!(r.makespan, 10.0);
    }
}
