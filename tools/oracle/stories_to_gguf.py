#!/usr/bin/env python3
"""stories260K (llama2.c .bin + its 512-token tokenizer) -> GGUF v3, F32, so llama.cpp's tools can
read the trained model (the GGUF in ../shared/models is v1, which llama.cpp no longer reads).
Weights are copied as they are (llama2.c keeps Meta's interleaved RoPE layout, as GGUF does); the
classifier is tied to the embedding, so there is no output.weight. Nothing is written to the repo.

    pip install numpy==2.4.6 gguf==0.19.0
    python tools/oracle/stories_to_gguf.py ../shared/models/stories260K OUT.gguf
"""
import struct, sys
from pathlib import Path

import numpy as np
import gguf

src, out = Path(sys.argv[1]), sys.argv[2]
raw = (src / "stories260K.reconstructed.bin").read_bytes()
dim, hidden, layers, heads, kv_heads, vocab, seq_len = struct.unpack("<7i", raw[:28])
assert vocab > 0, "a positive vocab size means the classifier is tied to the embedding"
kv_dim = dim // heads * kv_heads
floats = np.frombuffer(raw, dtype="<f4", offset=28)
at = 0
def take(*shape):
    global at
    n = int(np.prod(shape))
    v = floats[at:at + n].reshape(shape)
    at += n
    return v

emb = take(vocab, dim)
rms_att, wq, wk, wv, wo = take(layers, dim), take(layers, dim, dim), take(layers, kv_dim, dim), take(layers, kv_dim, dim), take(layers, dim, dim)
rms_ffn, w1, w2, w3 = take(layers, dim), take(layers, hidden, dim), take(layers, dim, hidden), take(layers, hidden, dim)
rms_final = take(dim)

# Tokenizer: int32 max_len, then (f32 score, int32 len, bytes) per token. llama2.c's exporter
# wrote spaces for SentencePiece's U+2581 and wrapped <s> / </s> in newlines; undo both.
tok = (src / "t260.bin").read_bytes()
pos, tokens, scores, types = 4, [], [], []
for i in range(vocab):
    score, n = struct.unpack("<fi", tok[pos:pos + 8]); pos += 8
    s = tok[pos:pos + n].decode("utf-8"); pos += n
    s = s.strip("\n") if i in (1, 2) else s.replace(" ", "\u2581")
    tokens.append(s); scores.append(score)
    types.append(2 if i == 0 else 3 if i in (1, 2) else 6 if s.startswith("<0x") and len(s) == 6 else 1)

w = gguf.GGUFWriter(out, "llama")
w.add_name("stories260K")
w.add_context_length(seq_len)
w.add_embedding_length(dim)
w.add_block_count(layers)
w.add_feed_forward_length(hidden)
w.add_head_count(heads)
w.add_head_count_kv(kv_heads)
w.add_rope_freq_base(10000.0)
w.add_layer_norm_rms_eps(1e-5)
w.add_rope_dimension_count(dim // heads)
w.add_file_type(gguf.LlamaFileType.ALL_F32)
w.add_tokenizer_model("llama")
w.add_token_list(tokens)
w.add_token_scores(scores)
w.add_token_types(types)
w.add_bos_token_id(1); w.add_eos_token_id(2); w.add_unk_token_id(0)
w.add_tensor("token_embd.weight", np.ascontiguousarray(emb))
for i in range(layers):
    for name, v in [("attn_norm", rms_att), ("attn_q", wq), ("attn_k", wk), ("attn_v", wv), ("attn_output", wo),
                    ("ffn_norm", rms_ffn), ("ffn_gate", w1), ("ffn_down", w2), ("ffn_up", w3)]:
        w.add_tensor(f"blk.{i}.{name}.weight", np.ascontiguousarray(v[i]))
w.add_tensor("output_norm.weight", np.ascontiguousarray(rms_final))
w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
print("wrote", out)
