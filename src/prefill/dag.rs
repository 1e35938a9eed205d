//! The subgraph DAG of a chunked prefill (llm.npu's block level). Per chunk i and layer l:
//!
//! - `Qkv` (accelerator): q/k/v projections of the normed input;
//! - `ShadowQkv` (CPU, when the layer has shadow work): the float outlier product of that input,
//!   run beside `Qkv` and merged before its consumer;
//! - `Attention` (CPU): RoPE, appending K/V to the cache, attention over chunks 0..=i;
//! - `OFfn` (accelerator): o_proj, residual, norm, gate/up, SwiGLU, down, residual;
//! - `ShadowOFfn` (CPU): the outlier products of OFfn's three quantized inputs.
//!
//! Dependencies: within a chunk, layer order (Qkv -> Attention -> OFfn -> next layer's Qkv, each
//! consumer also after its producer's shadow node); `Attention(i, l)` also needs the K/V of
//! chunks 0..i-1 at layer l, which `Attention(j, l)` writes into the cache.

use crate::model::LinearGroup;

/// Where a subgraph runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Processor {
    Accel,
    Cpu,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Qkv,
    ShadowQkv,
    Attention,
    OFfn,
    ShadowOFfn,
}

impl Kind {
    pub fn processor(self) -> Processor {
        match self {
            Kind::Qkv | Kind::OFfn => Processor::Accel,
            Kind::ShadowQkv | Kind::Attention | Kind::ShadowOFfn => Processor::Cpu,
        }
    }

    /// The linear groups whose accelerator graphs the subgraph runs (none for CPU subgraphs).
    pub fn linear_groups(self) -> &'static [LinearGroup] {
        match self {
            Kind::Qkv => &[LinearGroup::Qkv],
            Kind::OFfn => &[LinearGroup::O, LinearGroup::GateUp, LinearGroup::Down],
            Kind::ShadowQkv | Kind::Attention | Kind::ShadowOFfn => &[],
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Qkv => "qkv",
            Kind::ShadowQkv => "shadow-qkv",
            Kind::Attention => "attention",
            Kind::OFfn => "o+ffn",
            Kind::ShadowOFfn => "shadow-o+ffn",
        }
    }
}

/// One subgraph: G(chunk, layer, kind).
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub chunk: usize,
    pub layer: usize,
    pub kind: Kind,
    /// Nodes that must finish before this one starts.
    pub deps: Vec<usize>,
}

impl Node {
    pub fn processor(&self) -> Processor {
        self.kind.processor()
    }
}

/// The DAG, nodes in program order (chunk by chunk, layer by layer): the order a sequential
/// prefill runs them in, and a valid topological order.
#[derive(Debug, Clone)]
pub struct Dag {
    pub nodes: Vec<Node>,
    pub chunks: usize,
    pub layers: usize,
    /// Reverse edges: the nodes that depend on each node.
    pub dependents: Vec<Vec<usize>>,
    index: std::collections::HashMap<(usize, usize, Kind), usize>,
}

impl Dag {
    /// `shadow[l]`: layer l runs shadow work (pruned layers have no shadow nodes).
    pub fn new(chunks: usize, layers: usize, shadow: &[bool]) -> Self {
        assert_eq!(shadow.len(), layers);
        let mut nodes: Vec<Node> = Vec::new();
        // attention[l]: the Attention node of the previous chunk at layer l (the K/V producer).
        let mut attention: Vec<Option<usize>> = vec![None; layers];
        for chunk in 0..chunks {
            // Nodes the next consumer in this chunk must wait for.
            let mut frontier: Vec<usize> = Vec::new();
            for layer in 0..layers {
                let mut add = |kind: Kind, deps: Vec<usize>| {
                    nodes.push(Node { chunk, layer, kind, deps });
                    nodes.len() - 1
                };
                let qkv = add(Kind::Qkv, frontier.clone());
                let mut after_qkv = vec![qkv];
                if shadow[layer] {
                    after_qkv.push(add(Kind::ShadowQkv, frontier.clone()));
                }
                let mut attn_deps = after_qkv;
                attn_deps.extend(attention[layer]);
                let attn = add(Kind::Attention, attn_deps);
                attention[layer] = Some(attn);
                let o_ffn = add(Kind::OFfn, vec![attn]);
                frontier = vec![o_ffn];
                if shadow[layer] {
                    frontier.push(add(Kind::ShadowOFfn, vec![attn]));
                }
            }
        }
        let mut dependents = vec![Vec::new(); nodes.len()];
        for (i, n) in nodes.iter().enumerate() {
            for &d in &n.deps {
                dependents[d].push(i);
            }
        }
        let index = nodes.iter().enumerate().map(|(i, n)| ((n.chunk, n.layer, n.kind), i)).collect();
        Dag { nodes, chunks, layers, dependents, index }
    }

    /// The node G(chunk, layer, kind), if the DAG has it.
    pub fn find(&self, chunk: usize, layer: usize, kind: Kind) -> Option<usize> {
        self.index.get(&(chunk, layer, kind)).copied()
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependencies_follow_the_paper() {
        let dag = Dag::new(3, 2, &[true, false]);
        // Per chunk: layer 0 has 5 nodes (with shadow), layer 1 has 3.
        assert_eq!(dag.len(), 3 * (5 + 3));
        let find = |c: usize, l: usize, k: Kind| dag.find(c, l, k).unwrap();
        for c in 0..3 {
            // Attention needs its own q/k/v (and their shadow) and every earlier chunk's K/V.
            let a = &dag.nodes[find(c, 0, Kind::Attention)];
            assert!(a.deps.contains(&find(c, 0, Kind::Qkv)) && a.deps.contains(&find(c, 0, Kind::ShadowQkv)));
            if c > 0 {
                assert!(a.deps.contains(&find(c - 1, 0, Kind::Attention)));
            }
            // The next layer waits for the FFN and its shadow.
            let q1 = &dag.nodes[find(c, 1, Kind::Qkv)];
            assert_eq!(q1.deps, vec![find(c, 0, Kind::OFfn), find(c, 0, Kind::ShadowOFfn)]);
            assert!(dag.nodes.iter().all(|n| !(n.layer == 1 && matches!(n.kind, Kind::ShadowQkv | Kind::ShadowOFfn))), "layer 1 is pruned");
        }
        // Program order is topological.
        for (i, n) in dag.nodes.iter().enumerate() {
            assert!(n.deps.iter().all(|&d| d < i));
        }
    }
}
