//! Per-subgraph cost models for the scheduler and its simulator: how long each kind of subgraph
//! takes on a target device, from a built-in device profile or a JSON file of the same shape.

use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::dag::{Dag, Kind, Node};
use crate::error::{Error, Result};
use crate::model::LinearGroup;

/// One accelerator graph's run in a profiled prefill (`NpuEngine::start_profiling`).
#[derive(Debug, Clone, Copy)]
pub struct GroupTiming {
    pub chunk: usize,
    pub layer: usize,
    pub group: LinearGroup,
    /// Rows of the graph (the chunk size it was compiled for).
    pub rows: usize,
    /// The graph and its shadow work, from start to merged outputs.
    pub start: Instant,
    pub end: Instant,
    /// Time the shadow work took (it runs beside the graph).
    pub shadow: Duration,
}

/// Times (ms) of one layer's subgraphs for one chunk of `chunk_size` tokens. Accelerator and
/// shadow times scale with the chunk's rows; attention with rows x keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceProfile {
    pub name: String,
    pub description: String,
    pub layers: usize,
    pub chunk_size: usize,
    pub qkv_ms: f64,
    pub o_ffn_ms: f64,
    /// Attention of the first chunk (its queries over its own keys, causal).
    pub attention_ms: f64,
    pub shadow_qkv_ms: f64,
    pub shadow_o_ffn_ms: f64,
    /// Fraction of the layers that run shadow work (the rest are pruned).
    pub shadow_keep: f64,
}

/// The built-in profiles' names.
pub const BUILT_IN: [&str; 1] = ["snapdragon-8gen3"];

impl DeviceProfile {
    /// llm.npu's Qwen1.5-1.8B on a Snapdragon 8 Gen 3 (the paper's figures): 24 layers; a
    /// 256-token chunk takes about 315 ms on the NPU, 13.1 ms a layer, split by the layer's
    /// multiply-accumulates: q/k/v 12.6M of 50.6M per token (25%), o_proj and the FFN the rest.
    /// The CPU side takes about half the NPU time over a 1,024-token prompt (157 ms a chunk on
    /// average): attention 60% of it (1.0 ms a layer for the first chunk, growing with the keys
    /// attended: 3x, 5x, 7x for the next chunks), the shadow work 40% (2.56 ms a layer a chunk,
    /// a quarter of it beside q/k/v), in every layer. These splits are our judgment; the paper
    /// gives only the totals.
    pub fn snapdragon_8gen3() -> Self {
        DeviceProfile {
            name: "snapdragon-8gen3".into(),
            description: "Qwen1.5-1.8B on a Snapdragon 8 Gen 3 NPU + CPU (llm.npu paper figures; split across subgraphs by judgment)".into(),
            layers: 24,
            chunk_size: 256,
            qkv_ms: 3.28,
            o_ffn_ms: 9.845,
            attention_ms: 1.0,
            shadow_qkv_ms: 0.64,
            shadow_o_ffn_ms: 1.92,
            shadow_keep: 1.0,
        }
    }

    /// A built-in profile by name, or a JSON file.
    pub fn load(name_or_file: &str) -> Result<Self> {
        match name_or_file {
            "snapdragon-8gen3" => Ok(Self::snapdragon_8gen3()),
            _ => {
                let path = Path::new(name_or_file);
                if !path.exists() {
                    return Err(Error::Input(format!("no profile '{name_or_file}': give a built-in one ({}) or a JSON file", BUILT_IN.join(", "))));
                }
                let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
                let p: DeviceProfile = serde_json::from_str(&text).map_err(|e| Error::corrupt(path, format!("not a device profile: {e}")))?;
                p.validate().map_err(|e| Error::corrupt(path, e.to_string()))?;
                Ok(p)
            }
        }
    }

    pub fn validate(&self) -> Result<()> {
        let times = [self.qkv_ms, self.o_ffn_ms, self.attention_ms, self.shadow_qkv_ms, self.shadow_o_ffn_ms];
        if self.layers == 0 || self.chunk_size == 0 || times.iter().any(|t| !t.is_finite() || *t < 0.0) || !(0.0..=1.0).contains(&self.shadow_keep) {
            return Err(Error::Input(format!("profile '{}': layers and chunk_size must be positive, times finite and >= 0, shadow_keep in [0, 1]", self.name)));
        }
        Ok(())
    }

    /// A profile measured on this machine from the graph timings of npu prefills
    /// (`NpuEngine::start_profiling`): per layer and full chunk of `chunk_size` rows, the q/k/v
    /// graph, everything from o_proj to down_proj (graphs and the float work between them), the
    /// CPU gap between them (RoPE, the KV cache and attention: fitted as a x (2i + 1) over chunk
    /// index i), and the shadow work beside each. Shadow times count the layers that have any.
    pub fn from_timings(name: String, description: String, layers: usize, chunk_size: usize, timings: &[GroupTiming]) -> Result<Self> {
        use std::collections::BTreeMap;
        // (run, chunk, layer) -> its four groups; a run starts where chunk 0, layer 0, qkv repeats.
        let mut by_key: BTreeMap<(usize, usize, usize), Vec<&GroupTiming>> = BTreeMap::new();
        let mut run = 0;
        for (i, t) in timings.iter().enumerate() {
            if i > 0 && (t.chunk, t.layer, t.group) == (0, 0, LinearGroup::Qkv) {
                run += 1;
            }
            if t.rows == chunk_size {
                by_key.entry((run, t.chunk, t.layer)).or_default().push(t);
            }
        }
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        let (mut qkv, mut o_ffn, mut sq, mut so, mut n) = (0.0, 0.0, Vec::new(), Vec::new(), 0usize);
        let (mut attn_num, mut attn_den) = (0.0, 0.0);
        for (&(_, chunk, _), groups) in &by_key {
            let get = |g: LinearGroup| groups.iter().find(|t| t.group == g).copied();
            let (Some(q), Some(o), Some(gu), Some(d)) = (get(LinearGroup::Qkv), get(LinearGroup::O), get(LinearGroup::GateUp), get(LinearGroup::Down)) else { continue };
            qkv += ms(q.end - q.start);
            o_ffn += ms(d.end - o.start);
            let w = (2 * chunk + 1) as f64;
            attn_num += ms(o.start - q.end) * w;
            attn_den += w * w;
            if !q.shadow.is_zero() {
                sq.push(ms(q.shadow));
            }
            let s = ms(o.shadow) + ms(gu.shadow) + ms(d.shadow);
            if s > 0.0 {
                so.push(s);
            }
            n += 1;
        }
        if n == 0 {
            return Err(Error::Input(format!("no full {chunk_size}-token chunk was timed: profile a prompt of at least {chunk_size} tokens")));
        }
        let mean = |v: &[f64]| if v.is_empty() { 0.0 } else { v.iter().sum::<f64>() / v.len() as f64 };
        let p = DeviceProfile {
            name,
            description,
            layers,
            chunk_size,
            qkv_ms: qkv / n as f64,
            o_ffn_ms: o_ffn / n as f64,
            attention_ms: attn_num / attn_den,
            shadow_qkv_ms: mean(&sq),
            shadow_o_ffn_ms: mean(&so),
            shadow_keep: (sq.len().max(so.len()) as f64 / n as f64).min(1.0),
        };
        p.validate()?;
        Ok(p)
    }

    /// Which layers run shadow work: the first `shadow_keep` fraction (a profile has no per-layer
    /// importance).
    pub fn shadow_layers(&self) -> Vec<bool> {
        let kept = (self.shadow_keep * self.layers as f64).ceil() as usize;
        (0..self.layers).map(|l| l < kept).collect()
    }

    /// The DAG of an `n_prompt`-token prefill in chunks of `chunk_size`, with every node's cost.
    pub fn prompt_dag(&self, n_prompt: usize, chunk_size: usize) -> (Dag, Vec<f64>) {
        let dag = Dag::new(n_prompt.div_ceil(chunk_size), self.layers, &self.shadow_layers());
        let cost = dag.nodes.iter().map(|n| self.cost(n, chunk_size)).collect();
        (dag, cost)
    }

    /// Estimated time (ms) of `node` when chunks hold `chunk_size` tokens.
    pub fn cost(&self, node: &Node, chunk_size: usize) -> f64 {
        let rows = chunk_size as f64 / self.chunk_size as f64;
        match node.kind {
            Kind::Qkv => self.qkv_ms * rows,
            Kind::OFfn => self.o_ffn_ms * rows,
            Kind::ShadowQkv => self.shadow_qkv_ms * rows,
            Kind::ShadowOFfn => self.shadow_o_ffn_ms * rows,
            // Queries x keys: chunk i's rows see i * C earlier keys plus half their own on average.
            Kind::Attention => self.attention_ms * rows * rows * (2 * node.chunk + 1) as f64,
        }
    }
}

/// Where `llm-npu profile` saves a model's measured profile: next to its calibration.
pub fn default_path(model: &Path) -> std::path::PathBuf {
    crate::util::beside_model(model, "profile")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prefill::schedule::{simulate, InOrder, OutOfOrder};

    #[test]
    fn out_of_order_hides_the_cpu_work_on_the_paper_device() {
        let p = DeviceProfile::snapdragon_8gen3();
        for tokens in [512usize, 1024] {
            let (dag, cost) = p.prompt_dag(tokens, 256);
            let accel: f64 = dag.nodes.iter().zip(&cost).filter(|(n, _)| n.processor() == crate::prefill::dag::Processor::Accel).map(|(_, c)| c).sum();
            let a = simulate(&dag, &cost, &mut InOrder);
            let b = simulate(&dag, &cost, &mut OutOfOrder);
            eprintln!(
                "{tokens} tokens: accelerator work {accel:.0} ms; in order {:.1} ms, bubbles {:.1}%; out of order {:.1} ms, bubbles {:.2}%",
                a.makespan,
                100.0 * a.accel_bubble_rate(),
                b.makespan,
                100.0 * b.accel_bubble_rate()
            );
            if tokens == 1024 {
                assert!(b.accel_bubble_rate() <= 0.02, "{}", b.accel_bubble_rate());
                assert!(a.makespan >= 1.15 * b.makespan, "{} vs {}", a.makespan, b.makespan);
            }
        }
    }

    #[test]
    fn the_built_in_profile_matches_the_paper_totals() {
        let p = DeviceProfile::snapdragon_8gen3();
        assert!((p.layers as f64 * (p.qkv_ms + p.o_ffn_ms) - 315.0).abs() < 0.5);
        // CPU work over a 1,024-token prompt: about half the accelerator's.
        let cpu = p.layers as f64 * (16.0 * p.attention_ms + 4.0 * (p.shadow_qkv_ms + p.shadow_o_ffn_ms));
        assert!((cpu / (4.0 * 315.0) - 0.5).abs() < 0.02, "{cpu}");
        assert_eq!(DeviceProfile::load("snapdragon-8gen3").unwrap(), p);
        assert!(DeviceProfile::load("no-such-device").unwrap_err().to_string().contains("snapdragon-8gen3"));
    }
}
