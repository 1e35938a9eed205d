#!/usr/bin/env python3
"""A Hugging Face folder (config.json + f32 model.safetensors) of a qwen3, gemma, gemma2, gemma3
or phi3 model as an f32 GGUF file the way llama.cpp's convert_hf_to_gguf.py writes it: tensor
names from the gguf package's own name map for the architecture, the metadata keys the
converter sets for it, Gemma norms stored as 1 + w, Phi-3's LongRoPE factors as tensors. Needs
only the gguf package (and numpy, safetensors); no tokenizer is written.

    python tools/oracle/hf_to_family_gguf.py FOLDER OUT.gguf

Used by gen_family_fixtures.py and, at test time, by tests/reference_logits.rs (the interpreter
in LLM_NPU_GGUF_PYTHON), so GGUFs of every family are checked without storing each one.
"""
import json
import math
import sys
from pathlib import Path

import gguf
import numpy as np
from safetensors.numpy import load_file

ARCHS = {"qwen3": gguf.MODEL_ARCH.QWEN3, "gemma": gguf.MODEL_ARCH.GEMMA, "gemma2": gguf.MODEL_ARCH.GEMMA2,
         "gemma3_text": gguf.MODEL_ARCH.GEMMA3, "phi3": gguf.MODEL_ARCH.PHI3}


def rope_params(cfg, layer_type="full_attention"):
    """transformers 5 keeps RoPE settings under rope_parameters, per layer type where they differ."""
    p = cfg.get("rope_parameters") or {}
    return p.get(layer_type, p)


def convert(folder, out):
    folder = Path(folder)
    cfg = json.loads((folder / "config.json").read_text())
    model_type = cfg["model_type"]
    arch = ARCHS[model_type]
    n_layers = cfg["num_hidden_layers"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    w = gguf.GGUFWriter(str(out), gguf.MODEL_ARCH_NAMES[arch])
    w.add_name(f"{folder.name} (llm-npu oracle)")
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(n_layers)
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg.get("num_key_value_heads", cfg["num_attention_heads"]))
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    full = rope_params(cfg)
    w.add_rope_freq_base(float(full.get("rope_theta", cfg.get("rope_theta", 10000.0))))
    if full.get("rope_type") == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(full["factor"])
    local = rope_params(cfg, "sliding_attention")
    if local is not full and "rope_theta" in local:
        w.add_rope_freq_base_swa(float(local["rope_theta"]))
    extra = {}
    if model_type == "gemma2":
        w.add_attn_logit_softcapping(cfg["attn_logit_softcapping"])
        w.add_final_logit_softcapping(cfg["final_logit_softcapping"])
        w.add_sliding_window(cfg["sliding_window"])
    if model_type == "gemma3_text":
        if cfg.get("final_logit_softcapping"):
            w.add_final_logit_softcapping(cfg["final_logit_softcapping"])
        w.add_sliding_window(cfg["sliding_window"])
        # One flag per layer (llama.cpp reads an array here too); the default pattern of 6 does
        # not fit a 3-layer model.
        w.add_sliding_window_pattern([t == "sliding_attention" for t in cfg["layer_types"]])
    if model_type == "phi3":
        orig = full["original_max_position_embeddings"]
        w.add_rope_scaling_orig_ctx_len(orig)
        w.add_rope_dimension_count(int(full.get("partial_rotary_factor", 1.0) * cfg["hidden_size"]) // cfg["num_attention_heads"])
        w.add_sliding_window(cfg.get("sliding_window") or 0)
        if full.get("long_factor"):
            scale = cfg["max_position_embeddings"] / orig
            w.add_rope_scaling_attn_factors(math.sqrt(1 + math.log(scale) / math.log(orig)) if scale > 1.0 else 1.0)
            extra["rope_factors_long.weight"] = np.array(full["long_factor"], dtype=np.float32)
            extra["rope_factors_short.weight"] = np.array(full["short_factor"], dtype=np.float32)
    names = gguf.get_tensor_name_map(arch, n_layers)
    tied = cfg.get("tie_word_embeddings", model_type.startswith("gemma"))
    for k, v in load_file(str(folder / "model.safetensors")).items():
        if k == "lm_head.weight" and tied:
            continue
        base, suffix = k.rsplit(".", 1)
        name = names.get_name(base)
        if name is None:
            raise SystemExit(f"{k}: no GGUF name for {model_type}")
        v = v.astype(np.float32)
        if model_type.startswith("gemma") and k.endswith("norm.weight"):
            v = v + np.float32(1.0)  # the converter stores Gemma's norms as 1 + w
        w.add_tensor(f"{name}.{suffix}", np.ascontiguousarray(v))
    for name, v in extra.items():
        w.add_tensor(name, v)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    convert(sys.argv[1], sys.argv[2])
