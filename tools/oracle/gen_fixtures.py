#!/usr/bin/env python3
"""Generate reference-numerics fixtures for llm-npu from tiny random HF models.

Run from anywhere:  python tools/oracle/gen_fixtures.py
Writes into <repo>/tests/fixtures/ (repo = two levels above this file).
Everything is built offline from a fixed random init; the output is
byte-for-byte reproducible (single CPU thread, fixed seeds).
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"

import copy
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

import gguf
import safetensors
import transformers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "tests" / "fixtures"

VOCAB = 256
N_SHORT = 40
N_LONG = 300
N_NEW = 24
INPUT_SEED = 1234  # token ids
GEN_DTYPE = torch.float32

# per-model seeds: one for HF construction (torch.manual_seed), one for the re-init generator
MODEL_SEEDS = {
    "llama-gqa": 1001,
    "llama-mha-tied-llama3rope": 1002,
    "qwen2-bias-tied": 1003,
}

# llama3 rope for the tied MHA model.  head_dim = 8, theta = 5e5 gives base
# wavelengths 2*pi/inv_freq = [6.28, 167.1, 4443, 118 000].  With
# original_max_position_embeddings = 256, high_freq_wavelen = 64 and
# low_freq_wavelen = 256, so all three llama3 branches are exercised:
# 6.28 -> unchanged, 167.1 -> smoothed (interpolated), 4443 / 118k -> divided by 8.
LLAMA3_ORIG_MAX = 256


def log(*a):
    print(*a, flush=True)


# ---------------------------------------------------------------------------
# model construction
# ---------------------------------------------------------------------------

def common_kwargs():
    return dict(
        vocab_size=VOCAB,
        hidden_size=32,
        num_attention_heads=4,
        intermediate_size=64,
        num_hidden_layers=2,
        max_position_embeddings=512,
        hidden_act="silu",
        # generation must never stop early: no EOS token at all
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )


def make_config(name):
    kw = common_kwargs()
    if name == "llama-gqa":
        cfg = LlamaConfig(
            **kw,
            num_key_value_heads=2,
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
            rope_theta=10000.0,
        )
    elif name == "llama-mha-tied-llama3rope":
        cfg = LlamaConfig(
            **kw,
            num_key_value_heads=4,
            rms_norm_eps=1e-5,
            tie_word_embeddings=True,
            rope_theta=500000.0,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": LLAMA3_ORIG_MAX,
            },
        )
    elif name == "qwen2-bias-tied":
        cfg = Qwen2Config(
            **kw,
            num_key_value_heads=2,
            rms_norm_eps=1e-6,
            tie_word_embeddings=True,
            rope_theta=1000000.0,
            use_sliding_window=False,
        )
    else:
        raise ValueError(name)
    return cfg


def model_class(name):
    return Qwen2ForCausalLM if name.startswith("qwen2") else LlamaForCausalLM


def build_model(name, cfg):
    seed = MODEL_SEEDS[name]
    torch.manual_seed(seed)
    cfg._attn_implementation = "eager"
    model = model_class(name)(cfg).to(GEN_DTYPE)
    model.config._attn_implementation = "eager"
    model.eval()

    # Re-init: default HF init (std 0.02) gives almost flat logits.
    g = torch.Generator().manual_seed(seed + 50_000)
    with torch.no_grad():
        # named_parameters() de-duplicates tied parameters (lm_head == embed_tokens)
        for pname, p in model.named_parameters():
            if pname.endswith("norm.weight") or pname.endswith("layernorm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif pname.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif pname.endswith(".weight"):
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
            else:
                raise RuntimeError(f"unexpected parameter {pname}")
    if cfg.tie_word_embeddings:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    return model


@torch.no_grad()
def all_logits(model, ids):
    x = torch.tensor([ids], dtype=torch.long)
    out = model(input_ids=x, use_cache=False)
    return out.logits[0].to(torch.float32).numpy().astype(np.float32)


@torch.no_grad()
def greedy(model, prompt):
    x = torch.tensor([prompt], dtype=torch.long)
    out = model.generate(
        x,
        attention_mask=torch.ones_like(x),
        do_sample=False,
        max_new_tokens=N_NEW,
        min_new_tokens=N_NEW,
        eos_token_id=None,
        pad_token_id=0,  # only used for padding finished rows; batch of 1 never pads
        num_beams=1,
        use_cache=True,
    )
    new = out[0, len(prompt):].tolist()
    assert len(new) == N_NEW, f"generate stopped early: {len(new)} tokens"
    return new


@torch.no_grad()
def greedy_manual(model, prompt):
    ids = list(prompt)
    for _ in range(N_NEW):
        logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1]
        ids.append(int(torch.argmax(logits)))
    return ids[len(prompt):]


def save_npy(path, arr):
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    np.save(path, arr, allow_pickle=False)


def write_json(path, obj):
    """One top-level key per line, values compact (keeps id lists on one line)."""
    items = list(obj.items())
    lines = ["{"]
    for i, (k, v) in enumerate(items):
        sep = "," if i < len(items) - 1 else ""
        lines.append(f" {json.dumps(k)}: {json.dumps(v, separators=(', ', ': '))}{sep}")
    lines.append("}")
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("\n".join(lines) + "\n")


def legacy_config(cfg_json):
    """transformers 4.x style config: top-level rope_theta (+ rope_scaling), torch_dtype.

    transformers 5.x save_pretrained writes everything under `rope_parameters`
    instead; real Hub checkpoints mostly still use this legacy layout.
    """
    out = {}
    for k, v in cfg_json.items():
        if k == "rope_parameters":
            rp = dict(v)
            out["rope_theta"] = rp.pop("rope_theta")
            rtype = rp.pop("rope_type")
            out["rope_scaling"] = None if rtype == "default" else {"rope_type": rtype, **rp}
        elif k == "dtype":
            out["torch_dtype"] = v
        else:
            out[k] = v
    return dict(sorted(out.items()))


# ---------------------------------------------------------------------------
# GGUF (mirrors llama.cpp convert_hf_to_gguf.py LlamaModel)
# ---------------------------------------------------------------------------

def llama_permute(w, n_head, n_head_kv):
    """convert_hf_to_gguf.py LlamaModel.permute (HF rotate-half -> GGML interleaved)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2)
            .reshape(w.shape))


def llama_unpermute(w, n_head, n_head_kv):
    """Exact inverse of llama_permute (GGML interleaved -> HF rotate-half)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:])
            .swapaxes(1, 2)
            .reshape(w.shape))


def hf_to_gguf_name(name):
    if name == "model.embed_tokens.weight":
        return "token_embd.weight"
    if name == "model.norm.weight":
        return "output_norm.weight"
    if name == "lm_head.weight":
        return "output.weight"
    parts = name.split(".")
    assert parts[0] == "model" and parts[1] == "layers", name
    bid = int(parts[2])
    rest = ".".join(parts[3:])
    m = {
        "input_layernorm.weight": "attn_norm.weight",
        "self_attn.q_proj.weight": "attn_q.weight",
        "self_attn.k_proj.weight": "attn_k.weight",
        "self_attn.v_proj.weight": "attn_v.weight",
        "self_attn.o_proj.weight": "attn_output.weight",
        "post_attention_layernorm.weight": "ffn_norm.weight",
        "mlp.gate_proj.weight": "ffn_gate.weight",
        "mlp.up_proj.weight": "ffn_up.weight",
        "mlp.down_proj.weight": "ffn_down.weight",
    }
    return f"blk.{bid}.{m[rest]}"


GGUF_TYPES = {
    "f32": (gguf.LlamaFileType.ALL_F32, gguf.GGMLQuantizationType.F32),
    "f16": (gguf.LlamaFileType.MOSTLY_F16, gguf.GGMLQuantizationType.F16),
    "bf16": (gguf.LlamaFileType.MOSTLY_BF16, gguf.GGMLQuantizationType.BF16),
    "q8_0": (gguf.LlamaFileType.MOSTLY_Q8_0, gguf.GGMLQuantizationType.Q8_0),
}


def hf_tensors_in_gguf_order(sd, cfg):
    """HF state-dict tensors in the order llama.cpp writes them (embd, blocks, norm, output)."""
    names = ["model.embed_tokens.weight"]
    per_layer = [
        "input_layernorm.weight",
        "self_attn.q_proj.weight",
        "self_attn.k_proj.weight",
        "self_attn.v_proj.weight",
        "self_attn.o_proj.weight",
        "post_attention_layernorm.weight",
        "mlp.gate_proj.weight",
        "mlp.up_proj.weight",
        "mlp.down_proj.weight",
    ]
    for i in range(cfg.num_hidden_layers):
        names += [f"model.layers.{i}.{n}" for n in per_layer]
    names += ["model.norm.weight"]
    if not cfg.tie_word_embeddings:
        names += ["lm_head.weight"]
    assert set(names) == set(sd.keys()) - ({"lm_head.weight"} if cfg.tie_word_embeddings else set()), \
        sorted(set(sd.keys()) ^ set(names))
    return [(n, sd[n]) for n in names]


def write_llama_gguf(path, model, cfg, kind, version=None):
    ftype, qtype_2d = GGUF_TYPES[kind]
    n_head = cfg.num_attention_heads
    n_kv = cfg.num_key_value_heads
    head_dim = cfg.head_dim
    sd = {k: v.detach().to(torch.float32).numpy().copy() for k, v in model.state_dict().items()}

    w = gguf.GGUFWriter(str(path), "llama")  # writes general.architecture = "llama"
    if version is not None:
        # GGUF v2 and v3 are byte-identical for little-endian files except the version field
        import gguf.gguf_writer as gw
        old = gw.GGUF_VERSION
        gw.GGUF_VERSION = version
    try:
        w.add_type(gguf.GGUFType.MODEL)
        w.add_name("llama-gqa tiny random (llm-npu oracle)")
        # TextModel.set_gguf_parameters
        w.add_block_count(cfg.num_hidden_layers)
        w.add_context_length(cfg.max_position_embeddings)
        w.add_embedding_length(cfg.hidden_size)
        w.add_feed_forward_length(cfg.intermediate_size)
        w.add_head_count(n_head)
        w.add_head_count_kv(n_kv)
        w.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
        w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
        w.add_key_length(head_dim)  # config.json has head_dim -> convert writes key/value_length
        w.add_value_length(head_dim)
        w.add_file_type(ftype)
        # LlamaModel.set_gguf_parameters
        w.add_vocab_size(cfg.vocab_size)
        w.add_rope_dimension_count(head_dim)
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)

        for hf_name, data in hf_tensors_in_gguf_order(sd, cfg):
            if hf_name.endswith("q_proj.weight"):
                data = llama_permute(data, n_head, n_head)
            elif hf_name.endswith("k_proj.weight"):
                data = llama_permute(data, n_head, n_kv)
            name = hf_to_gguf_name(hf_name)
            if data.ndim <= 1 or name.endswith("_norm.weight"):
                qt = gguf.GGMLQuantizationType.F32
            else:
                qt = qtype_2d
            if qt == gguf.GGMLQuantizationType.Q8_0:
                assert data.shape[-1] % 32 == 0, (name, data.shape)
            q = gguf.quants.quantize(np.ascontiguousarray(data, dtype=np.float32), qt)
            if qt == gguf.GGMLQuantizationType.F16:
                assert q.dtype == np.float16
            w.add_tensor(name, q, raw_dtype=qt)

        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    finally:
        if version is not None:
            gw.GGUF_VERSION = old


def read_llama_gguf_as_hf(path, cfg):
    """Read a GGUF back, dequantize to f32, un-permute Q/K; returns HF-named state dict."""
    r = gguf.GGUFReader(str(path))
    n_head = cfg.num_attention_heads
    n_kv = cfg.num_key_value_heads
    inv = {}
    for i in range(cfg.num_hidden_layers):
        for hf in ["input_layernorm.weight", "self_attn.q_proj.weight", "self_attn.k_proj.weight",
                   "self_attn.v_proj.weight", "self_attn.o_proj.weight", "post_attention_layernorm.weight",
                   "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight"]:
            n = f"model.layers.{i}.{hf}"
            inv[hf_to_gguf_name(n)] = n
    for n in ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"]:
        inv[hf_to_gguf_name(n)] = n
    out = {}
    types = {}
    for t in r.tensors:
        shape = tuple(int(x) for x in reversed(t.shape.tolist()))  # GGUF dims are innermost-first
        arr = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).astype(np.float32)
        arr = arr.reshape(shape)
        hf = inv[t.name]
        if hf.endswith("q_proj.weight"):
            arr = llama_unpermute(arr, n_head, n_head)
        elif hf.endswith("k_proj.weight"):
            arr = llama_unpermute(arr, n_head, n_kv)
        out[hf] = np.ascontiguousarray(arr)
        types[t.name] = t.tensor_type.name
    version = None
    f = r.get_field("GGUF.version")
    if f is not None:
        version = int(f.parts[f.data[0]][0])
    return out, types, version


# ---------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------

def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)

    versions = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "safetensors": safetensors.__version__,
        "numpy": np.__version__,
        "gguf": getattr(gguf, "__version__", None) or _dist_version("gguf"),
    }
    log("versions:", json.dumps(versions))

    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)

    g_in = torch.Generator().manual_seed(INPUT_SEED)
    short_ids = torch.randint(0, VOCAB, (N_SHORT,), generator=g_in).tolist()
    long_ids = torch.randint(0, VOCAB, (N_LONG,), generator=g_in).tolist()

    ok = True
    models = {}
    for name in MODEL_SEEDS:
        log(f"\n=== {name} ===")
        cfg = make_config(name)
        model = build_model(name, cfg)
        models[name] = (model, cfg)
        d = OUT / name
        model.generation_config.eos_token_id = None
        model.generation_config.pad_token_id = None
        model.generation_config.bos_token_id = None
        model.save_pretrained(d, safe_serialization=True)
        log("saved:", sorted(p.name for p in d.iterdir()))
        log("rope_parameters:", json.dumps(model.config.rope_parameters))
        cfg_json = json.loads((d / "config.json").read_text())
        assert "rope_theta" not in cfg_json and "rope_scaling" not in cfg_json
        leg = legacy_config(cfg_json)
        with open(d / "config.legacy.json", "w", encoding="utf-8", newline="\n") as f:
            json.dump(leg, f, indent=2)
            f.write("\n")
        leg_cfg = type(cfg).from_dict(copy.deepcopy(leg))
        same_rope = leg_cfg.rope_parameters == model.config.rope_parameters
        log(f"config.legacy.json parses to identical rope_parameters: {same_rope}")
        ok &= same_rope

        ls = all_logits(model, short_ids)
        ll = all_logits(model, long_ids)
        assert ls.shape == (N_SHORT, VOCAB) and ll.shape == (N_LONG, VOCAB)
        save_npy(d / "ref_logits_short.npy", ls)
        save_npy(d / "ref_logits_long.npy", ll)
        std_s = float(ls.std())
        std_l = float(ll.std())
        row_std = float(ls.std(axis=-1).mean())
        log(f"logit spread: short std={std_s:.4f} long std={std_l:.4f} "
            f"mean per-row std={row_std:.4f} (min/max short {ls.min():.3f}/{ls.max():.3f})")
        if not (std_s > 0.5 and std_l > 0.5):
            log("  FAIL: logits too flat"); ok = False

        # reload from disk must reproduce the exact logits
        re = model_class(name).from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()
        ls2 = all_logits(re, short_ids)
        same = np.array_equal(ls, ls2)
        log(f"reload from save_pretrained gives identical logits: {same}")
        ok &= same
        leg_cfg._attn_implementation = "eager"
        lm = model_class(name)(leg_cfg).to(GEN_DTYPE).eval()
        lm.load_state_dict(model.state_dict())
        same = np.array_equal(ls, all_logits(lm, short_ids))
        log(f"model built from config.legacy.json gives identical logits: {same}")
        ok &= same

        new = greedy(model, short_ids)
        man = greedy_manual(model, short_ids)
        match = new == man
        log(f"greedy (generate) : {new}")
        log(f"greedy (manual)   : {man}")
        log(f"generate == manual token-by-token argmax: {match}")
        ok &= match
        # also the first greedy token must be argmax of the stored short logits
        ok &= int(np.argmax(ls[-1])) == new[0]

        extra = {}
        if name == "llama-mha-tied-llama3rope":
            from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
            inv_s, _ = ROPE_INIT_FUNCTIONS["llama3"](model.config, "cpu")
            head_dim = cfg.hidden_size // cfg.num_attention_heads
            inv_d = 1.0 / (500000.0 ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
            wl = (2 * np.pi / inv_d).tolist()
            log("llama3 base wavelengths:", [round(x, 2) for x in wl])
            log("llama3 inv_freq default:", inv_d.tolist())
            log("llama3 inv_freq scaled :", inv_s.tolist())
            log("llama3 ratio default/scaled:", (inv_d / inv_s).tolist())
            # same weights without scaling
            cfg_ns = copy.deepcopy(model.config)
            cfg_ns.rope_parameters = {"rope_type": "default", "rope_theta": 500000.0}
            ns = model_class(name)(cfg_ns).to(GEN_DTYPE).eval()
            ns.load_state_dict(model.state_dict())
            ls_ns = all_logits(ns, short_ids)
            ll_ns = all_logits(ns, long_ids)
            ds = float(np.abs(ls - ls_ns).max())
            dl = float(np.abs(ll - ll_ns).max())
            log(f"llama3 scaling vs no scaling: max|dlogit| short={ds:.4f} long={dl:.4f} "
                f"(argmax differs at {int((ll.argmax(-1) != ll_ns.argmax(-1)).sum())}/{N_LONG} long positions)")
            if not (ds > 1e-2 and dl > 1e-2):
                log("  FAIL: llama3 scaling has no effect"); ok = False
            extra["llama3_inv_freq"] = [float(x) for x in inv_s.tolist()]
        if name == "qwen2-bias-tied":
            for n, p in model.named_parameters():
                p = p.detach()
                if n.endswith(".bias"):
                    assert float(p.abs().min()) > 0 and float(p.abs().max()) > 1e-2, n
            log("qwen2 biases: all non-zero",
                [n for n, _ in model.named_parameters() if n.endswith(".bias")])

        ref = {
            "model": name,
            "short_ids": short_ids,
            "long_ids": long_ids,
            "greedy_prompt": short_ids,
            "greedy_new_tokens": new,
            "logits_files": {
                "ref_logits_short.npy": [N_SHORT, VOCAB],
                "ref_logits_long.npy": [N_LONG, VOCAB],
            },
            "logits_dtype": "float32",
            "seeds": {"model": MODEL_SEEDS[name], "reinit": MODEL_SEEDS[name] + 50_000, "inputs": INPUT_SEED},
            **extra,
            "versions": versions,
        }
        write_json(d / "ref.json", ref)

    # ---------------- GGUF ----------------
    log("\n=== gguf (llama-gqa) ===")
    model, cfg = models["llama-gqa"]
    gd = OUT / "gguf"
    gd.mkdir()
    for inner, nm in [(cfg.hidden_size, "hidden"), (cfg.intermediate_size, "intermediate")]:
        assert inner % 32 == 0, f"Q8_0 needs {nm} % 32 == 0"
    log(f"Q8_0 block check: hidden {cfg.hidden_size} % 32 == 0, intermediate {cfg.intermediate_size} % 32 == 0: OK")

    # permutation is a bijection and its inverse is exact
    qw = model.model.layers[0].self_attn.q_proj.weight.detach().numpy()
    kw = model.model.layers[0].self_attn.k_proj.weight.detach().numpy()
    assert np.array_equal(llama_unpermute(llama_permute(qw, 4, 4), 4, 4), qw)
    assert np.array_equal(llama_unpermute(llama_permute(kw, 4, 2), 4, 2), kw)
    assert not np.array_equal(llama_permute(kw, 4, 2), kw)

    hf_sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    ref_short = np.load(OUT / "llama-gqa" / "ref_logits_short.npy")
    gguf_summary = {}
    # BF16 is left out to keep the fixtures small; its conversion has a unit test in Rust.
    for kind in ["f32", "f16", "q8_0"]:
        path = gd / f"llama-gqa-{kind}.gguf"
        write_llama_gguf(path, model, cfg, kind)
        back, types, ver = read_llama_gguf_as_hf(path, cfg)
        assert set(back) == set(hf_sd), sorted(set(back) ^ set(hf_sd))
        maxerr = max(float(np.abs(back[k] - hf_sd[k]).max()) for k in hf_sd)
        log(f"{path.name}: {path.stat().st_size} bytes, version {ver}, types "
            f"{sorted(set(types.values()))}, max|w - w_hf| after dequant+unpermute = {maxerr:.3e}")
        m2 = model_class("llama-gqa")(copy.deepcopy(model.config)).to(GEN_DTYPE).eval()
        m2.load_state_dict({k: torch.from_numpy(v) for k, v in back.items()}, strict=True)
        lg = all_logits(m2, short_ids)
        if kind == "f32":
            exact = all(np.array_equal(back[k], hf_sd[k]) for k in hf_sd)
            log(f"  f32 read-back + un-permute == original HF tensors exactly: {exact}")
            ok &= exact
            same = np.array_equal(lg, ref_short)
            log(f"  f32 logits == llama-gqa/ref_logits_short.npy exactly: {same}")
            ok &= same
        else:
            save_npy(gd / f"llama-gqa-{kind}.ref_logits_short.npy", lg)
            diff = float(np.abs(lg - ref_short).max())
            agree = float((lg.argmax(-1) == ref_short.argmax(-1)).mean())
            log(f"  {kind} logits vs f32 model: max|d|={diff:.4f}, argmax agreement {agree:.3f}")
        gguf_summary[kind] = types

    # GGUF v2 header: same little-endian layout as v3 except the version field.
    # Not kept as a fixture (size budget): a v2 file is the v3 file with the u32 at
    # byte offset 4 set to 2, so tests can derive it in memory.  Verified here.
    with tempfile.TemporaryDirectory() as td:
        v2 = Path(td) / "llama-gqa-f32-v2.gguf"
        write_llama_gguf(v2, model, cfg, "f32", version=2)
        a = (gd / "llama-gqa-f32.gguf").read_bytes()
        b = v2.read_bytes()
        diff_pos = [i for i in range(min(len(a), len(b))) if a[i] != b[i]]
        back2, _, ver2 = read_llama_gguf_as_hf(v2, cfg)
        exact2 = all(np.array_equal(back2[k], hf_sd[k]) for k in hf_sd)
        log(f"GGUF v2 (gguf writer with GGUF_VERSION=2): reader sees version {ver2}, {len(b)} bytes, "
            f"differs from the v3 file only at byte offsets {diff_pos}; tensors exact: {exact2} (not kept)")
        ok &= len(a) == len(b) and diff_pos == [4] and ver2 == 2 and exact2

    for kind, types in gguf_summary.items():
        log(f"{kind} tensor types: " + ", ".join(f"{n}={t}" for n, t in types.items()))

    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    log(f"\ntotal fixture bytes: {total}")
    log("ALL CHECKS OK" if ok else "SOME CHECKS FAILED")
    return 0 if ok else 1


def _dist_version(pkg):
    from importlib.metadata import version
    return version(pkg)


if __name__ == "__main__":
    sys.exit(main())
