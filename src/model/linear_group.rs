//! The four groups of linear layers in a decoder layer. The layers of a group read the same input
//! (q/k/v the normed residual, gate/up the normed residual after attention), so a group is the
//! unit of everything that looks at linear inputs: calibration statistics and static activation
//! scales, one accelerator graph, shadow work, a subgraph of the prefill DAG and a profile's
//! timing. Calibration files name a group by its input (`attn_in`, ...).

use serde::{Deserialize, Serialize};

use super::config::ModelConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum LinearGroup {
    /// q_proj, k_proj, v_proj, reading the output of input_layernorm
    #[serde(rename = "attn_in")]
    Qkv,
    /// o_proj, reading the attention output; adds into the residual stream
    #[serde(rename = "o_in")]
    O,
    /// gate_proj and up_proj, reading the output of post_attention_layernorm
    #[serde(rename = "ffn_in")]
    GateUp,
    /// down_proj, reading silu(gate) * up; adds into the residual stream
    #[serde(rename = "down_in")]
    Down,
}

impl LinearGroup {
    pub const ALL: [LinearGroup; 4] = [LinearGroup::Qkv, LinearGroup::O, LinearGroup::GateUp, LinearGroup::Down];

    /// The group's name: "qkv", "o", "gate_up", "down".
    pub fn name(self) -> &'static str {
        match self {
            LinearGroup::Qkv => "qkv",
            LinearGroup::O => "o",
            LinearGroup::GateUp => "gate_up",
            LinearGroup::Down => "down",
        }
    }

    /// The name of the input the group reads, as calibration files and reports write it.
    pub fn input_name(self) -> &'static str {
        match self {
            LinearGroup::Qkv => "attn_in",
            LinearGroup::O => "o_in",
            LinearGroup::GateUp => "ffn_in",
            LinearGroup::Down => "down_in",
        }
    }

    /// Index in `ALL` (for per-group arrays).
    pub fn index(self) -> usize {
        self as usize
    }

    /// Whether the group's single output is added into the residual stream (o_proj, down_proj).
    pub fn adds_to_residual(self) -> bool {
        matches!(self, LinearGroup::O | LinearGroup::Down)
    }

    /// Width of the input every linear of the group reads.
    pub fn in_features(self, c: &ModelConfig) -> usize {
        match self {
            LinearGroup::Qkv | LinearGroup::GateUp => c.hidden_size,
            LinearGroup::O => c.q_dim(),
            LinearGroup::Down => c.intermediate_size,
        }
    }

    /// Widths of the group's outputs, one per linear.
    pub fn out_features(self, c: &ModelConfig) -> Vec<usize> {
        match self {
            LinearGroup::Qkv => vec![c.q_dim(), c.kv_dim(), c.kv_dim()],
            LinearGroup::O | LinearGroup::Down => vec![c.hidden_size],
            LinearGroup::GateUp => vec![c.intermediate_size; 2],
        }
    }

    /// Multiply-accumulates per token of the whole group.
    pub fn macs_per_token(self, c: &ModelConfig) -> usize {
        self.in_features(c) * self.out_features(c).iter().sum::<usize>()
    }
}
