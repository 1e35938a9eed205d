//! The measurement tools: speed (`bench`), accuracy (`eval`), synthetic models of real shapes
//! (`synth`), the main demo (`demo`) and per-subgraph timing for the simulator (`profile`).

pub mod bench;
pub mod demo;
pub mod eval;
pub mod limits;
pub mod profile;
pub mod synth;
