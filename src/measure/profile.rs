//! `llm-npu profile`: time the npu prefill's subgraphs on this machine and turn them into a
//! device cost model (`prefill::profile::DeviceProfile`) for the simulator.

use crate::engine::{Engine, NpuEngine};
use crate::error::{Error, Result};
use crate::model::Logits;
use crate::prefill::profile::DeviceProfile;
use crate::util::{random_tokens, Progress};

/// Runs `reps` timed prefills of `n` random tokens (after one warm-up) and fits the profile.
pub fn profile_prefill(npu: &NpuEngine, n: usize, reps: usize, name: String, description: String, progress: &dyn Progress) -> Result<DeviceProfile> {
    let m = npu.model();
    let chunk = npu.chunk_sizes[0];
    if n < chunk {
        return Err(Error::Input(format!("a {n}-token prompt holds no full chunk of {chunk} tokens; give at least {chunk}")));
    }
    let tokens = random_tokens(m.config.vocab_size, n, 0);
    progress.start("profiling", "prefills", reps as u64 + 1);
    npu.forward(&tokens, &mut m.new_cache(n), Logits::Last)?;
    progress.step();
    npu.start_profiling();
    for _ in 0..reps {
        npu.forward(&tokens, &mut m.new_cache(n), Logits::Last)?;
        progress.step();
    }
    progress.finish();
    DeviceProfile::from_timings(name, description, m.config.num_layers, chunk, &npu.take_profile())
}
