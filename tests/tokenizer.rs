//! Tokenizer conformance against reference ids: llama.cpp's vocab test vectors (GGUF), the
//! Python `tokenizers` library's ids for two tokenizer.json files, llama2.c's test.c, plus
//! streaming-equals-decode, robustness and speed checks. Data: ../shared/models (or
//! $LLM_NPU_SHARED_MODELS); see the PROVENANCE.md files there.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use llm_npu::format::gguf::GgufFile;
use llm_npu::tokenizer::Tokenizer;
use llm_npu::Error;
use serde_json::Value;

mod common;

fn models_dir(test: &str) -> Option<PathBuf> {
    common::shared_models(test)
}

fn gguf_tokenizer(path: &Path) -> Tokenizer {
    let gguf = GgufFile::open(path).unwrap_or_else(|e| panic!("{e}"));
    Tokenizer::from_gguf(&gguf).unwrap_or_else(|e| panic!("{e}"))
}

/// Streams `ids` one by one: every chunk must extend a prefix of `decode(ids)` (so no chunk ever
/// holds half a character as U+FFFD) and all chunks together must equal it.
fn check_stream(tok: &Tokenizer, ids: &[u32], what: &str) {
    let full = tok.decode(ids).unwrap();
    let mut stream = tok.stream();
    let mut acc = String::new();
    for (i, &id) in ids.iter().enumerate() {
        if let Some(chunk) = stream.push(id).unwrap() {
            assert!(!chunk.is_empty(), "{what}: empty chunk");
            acc.push_str(&chunk);
            assert!(full.starts_with(&acc), "{what}: after token {i} the stream has {acc:?}, decode gives {full:?}");
        }
    }
    acc.extend(stream.finish());
    assert_eq!(acc, full, "{what}: stream vs decode");
}

fn ids_of(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

/// llama.cpp's .inp format: strings separated by "\n__ggml_vocab_test__\n" (also after the last).
fn read_vocab_vectors(dir: &Path, name: &str) -> Vec<(String, Vec<u32>)> {
    let inp = std::fs::read_to_string(dir.join(format!("ggml-vocab-{name}.gguf.inp"))).unwrap();
    let out = std::fs::read_to_string(dir.join(format!("ggml-vocab-{name}.gguf.out"))).unwrap();
    let mut texts: Vec<&str> = inp.split("\n__ggml_vocab_test__\n").collect();
    assert_eq!(texts.pop(), Some(""), "{name}.inp should end with a separator");
    let ids: Vec<Vec<u32>> = out.lines().map(|l| l.split_whitespace().map(|t| t.parse().unwrap()).collect()).collect();
    assert_eq!(texts.len(), 46, "{name}.inp");
    assert_eq!(ids.len(), 46, "{name}.out");
    texts.into_iter().map(str::to_owned).zip(ids).collect()
}

#[test]
fn llama_cpp_vocab_vectors() {
    let Some(models) = models_dir("llama_cpp_vocab_vectors") else { return };
    let dir = models.join("llama.cpp-vocab");
    let mut failures = Vec::new();
    for name in ["llama-spm", "phi-3", "gpt-2", "deepseek-llm", "deepseek-coder"] {
        let tok = gguf_tokenizer(&dir.join(format!("ggml-vocab-{name}.gguf")));
        let mut matched = 0;
        for (i, (text, want)) in read_vocab_vectors(&dir, name).iter().enumerate() {
            let got = tok.encode(text, false).unwrap();
            if &got == want {
                matched += 1;
            } else {
                failures.push(format!("{name} #{i} {text:?}:\n   got  {got:?}\n   want {want:?}"));
            }
            check_stream(&tok, want, &format!("{name} #{i}"));
            // Byte fallback / byte-level BPE lose nothing, and the SPM dummy prefix is removed.
            assert_eq!(&tok.decode(want).unwrap(), text, "{name} #{i}: decode of the reference ids");
        }
        eprintln!("{name} ({}): {matched}/46 match", tok.kind());
    }
    assert!(failures.is_empty(), "mismatches:\n{}", failures.join("\n"));
}

#[test]
fn gguf_special_tokens() {
    let Some(models) = models_dir("gguf_special_tokens") else { return };
    let dir = models.join("llama.cpp-vocab");
    let tok = |name: &str| gguf_tokenizer(&dir.join(format!("ggml-vocab-{name}.gguf")));

    let spm = tok("llama-spm");
    assert_eq!(spm.kind(), "GGUF llama/SPM (32000 tokens)");
    assert_eq!((spm.bos_id(), spm.eos_ids(), spm.vocab_size()), (Some(1), vec![2], 32000));
    assert_eq!(spm.encode("Hello world", true).unwrap(), [1, 15043, 3186]);
    assert_eq!(spm.encode("", true).unwrap(), [1]);
    assert_eq!(spm.id_to_piece(15043).as_deref(), Some("▁Hello"));
    assert_eq!(spm.id_to_piece(32000), None);
    // Control tokens written in the text are parsed (llama.cpp parse_special): the text after
    // one gets a fresh dummy prefix, as in llama.cpp.
    assert_eq!(spm.encode("<s>Hello</s>", false).unwrap(), [1, 15043, 2]);
    assert_eq!(spm.decode(&[1, 15043, 2, 1, 3186]).unwrap(), "Hello world");

    let phi3 = tok("phi-3");
    assert_eq!((phi3.bos_id(), phi3.eos_ids()), (Some(1), vec![32000, 32007])); // <|endoftext|>, <|end|>
    let ids = phi3.encode("<|user|>\nHi<|end|>", true).unwrap();
    assert_eq!(ids[..2], [1, 32010]);
    assert_eq!(ids.last(), Some(&32007));
    assert_eq!(phi3.decode(&ids).unwrap(), "\nHi");

    let gpt2 = tok("gpt-2");
    assert_eq!(gpt2.kind(), "GGUF gpt2/byte-level BPE, pre-tokenizer gpt-2 (50257 tokens)");
    assert_eq!((gpt2.bos_id(), gpt2.eos_ids()), (Some(50256), vec![50256]));
    assert_eq!(gpt2.encode("Hello world", true).unwrap(), [15496, 995]); // no add_bos key: no BOS
    assert_eq!(gpt2.encode("a<|endoftext|>b", false).unwrap(), [64, 50256, 65]);
    assert_eq!(gpt2.decode(&[64, 50256, 65]).unwrap(), "ab");

    let ds = tok("deepseek-llm");
    assert_eq!((ds.bos_id(), ds.eos_ids()), (Some(100000), vec![100001]));
    assert_eq!(ds.encode("Hello", true).unwrap()[0], 100000); // add_bos_token = true

    // No tokenizer.ggml.pre key (older converter, GPT-NeoX): GPT-2's regex; lossless round trip.
    let neox = tok("gpt-neox");
    assert_eq!(neox.kind(), "GGUF gpt2/byte-level BPE, pre-tokenizer default (50432 tokens)");
    for (text, _) in read_vocab_vectors(&dir, "gpt-2") {
        let ids = neox.encode(&text, false).unwrap();
        assert_eq!(neox.decode(&ids).unwrap(), text);
    }

    // An unsupported pre-tokenizer is a clear error naming it.
    let gguf = GgufFile::open(dir.join("ggml-vocab-gpt-2.gguf")).unwrap();
    let mut bad = gguf;
    bad.metadata.insert("tokenizer.ggml.pre".into(), llm_npu::format::gguf::Value::String("tekken".into()));
    let err = Tokenizer::from_gguf(&bad).err().expect("tekken is not supported").to_string();
    assert!(err.contains("tekken") && err.contains("tokenizer.ggml.pre"), "{err}");
}

/// The GGUF byte-level BPE path with the qwen2 pre-tokenizer, on a GGUF vocabulary built in memory
/// from Qwen2's vocab.json + merges.txt (llama.cpp's converter layout: tokens, types, "a b"
/// merges), must give the ids of the Python `tokenizers` library for Qwen2's tokenizer.json.
#[test]
fn gguf_qwen2_pre_tokenizer() {
    let Some(models) = models_dir("gguf_qwen2_pre_tokenizer") else { return };
    use llm_npu::format::gguf::Value as V;
    let dir = models.join("qwen2-tokenizer");
    let vocab: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("vocab.json")).unwrap()).unwrap();
    let mut tokens = vec![String::new(); vocab.as_object().unwrap().len()];
    for (piece, id) in vocab.as_object().unwrap() {
        tokens[id.as_u64().unwrap() as usize] = piece.clone();
    }
    let mut types = vec![1; tokens.len()];
    tokens.extend(["<|endoftext|>", "<|im_start|>", "<|im_end|>"].map(String::from));
    types.extend([3, 3, 3]);
    let merges = std::fs::read_to_string(dir.join("merges.txt")).unwrap();
    let merges: Vec<V> = merges.lines().skip(1).map(|l| V::String(l.trim_end_matches('\r').to_owned())).collect();

    let mut gguf = GgufFile::open(models.join("llama.cpp-vocab/ggml-vocab-gpt-2.gguf")).unwrap();
    let md = &mut gguf.metadata;
    md.insert("tokenizer.ggml.tokens".into(), V::Array(tokens.into_iter().map(V::String).collect()));
    md.insert("tokenizer.ggml.token_type".into(), V::Array(types.into_iter().map(V::I32).collect()));
    md.insert("tokenizer.ggml.merges".into(), V::Array(merges));
    md.insert("tokenizer.ggml.pre".into(), V::String("qwen2".into()));
    md.insert("tokenizer.ggml.bos_token_id".into(), V::U32(151643));
    md.insert("tokenizer.ggml.eos_token_id".into(), V::U32(151643));
    let tok = Tokenizer::from_gguf(&gguf).unwrap();
    assert_eq!(tok.kind(), "GGUF gpt2/byte-level BPE, pre-tokenizer qwen2 (151646 tokens)");
    assert_eq!(tok.eos_ids(), [151643, 151645]);

    let cases = hf_vectors(&dir);
    for (text, _, ids_no_special) in &cases {
        // No NFC normalizer here (llama.cpp has none): the vector texts are already NFC.
        assert_eq!(&tok.encode(text, false).unwrap(), ids_no_special, "{text:?}");
        let expected = if text.contains("<|im_start|>") { "user\nhi" } else { text.as_str() };
        assert_eq!(tok.decode(ids_no_special).unwrap(), expected);
        check_stream(&tok, ids_no_special, &format!("GGUF qwen2 {text:?}"));
    }
    eprintln!("GGUF qwen2 pre-tokenizer: {}/{} Qwen2 vectors match", cases.len(), cases.len());
}

/// The `tokenizer-vectors.json` next to a tokenizer.json: ids from the Python `tokenizers` library.
fn hf_vectors(dir: &Path) -> Vec<(String, Vec<u32>, Vec<u32>)> {
    let v: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer-vectors.json")).unwrap()).unwrap();
    v["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["text"].as_str().unwrap().to_owned(), ids_of(&c["ids"]), ids_of(&c["ids_no_special"])))
        .collect()
}

/// `reference_decode` says what the reference's decode(skip_special_tokens=True) gives where it
/// does not reproduce the text.
fn check_hf_vectors(tok: &Tokenizer, dir: &Path, name: &str, reference_decode: impl Fn(&str) -> String) {
    let cases = hf_vectors(dir);
    let mut matched = 0;
    for (text, ids, ids_no_special) in &cases {
        let with = tok.encode(text, true).unwrap();
        let without = tok.encode(text, false).unwrap();
        assert_eq!(&with, ids, "{name} {text:?} with special tokens");
        assert_eq!(&without, ids_no_special, "{name} {text:?} without special tokens");
        matched += 1;
        let expected = reference_decode(text);
        assert_eq!(tok.decode(ids_no_special).unwrap(), expected, "{name} decode {text:?}");
        assert_eq!(tok.decode(ids).unwrap(), expected, "{name} decode {text:?} with special tokens");
        check_stream(tok, ids, &format!("{name} {text:?}"));
        check_stream(tok, ids_no_special, &format!("{name} {text:?}"));
    }
    eprintln!("{name} ({}): {matched}/{} vectors match", tok.kind(), cases.len());
}

#[test]
fn hf_llama2_tokenizer_json() {
    let Some(models) = models_dir("hf_llama2_tokenizer_json") else { return };
    let dir = models.join("llama2-tokenizer");
    let tok = Tokenizer::from_hf_file(&dir.join("tokenizer.json")).unwrap();
    assert_eq!(tok.kind(), "Hugging Face tokenizer.json (BPE, 32000 tokens)");
    assert_eq!((tok.bos_id(), tok.eos_ids(), tok.vocab_size()), (Some(1), vec![2], 32000));
    check_hf_vectors(&tok, &dir, "llama2 tokenizer.json", |text| match text {
        // `<s>`/`</s>` in the text are parsed as special tokens, which decode drops.
        "<s>literal</s> tags" => "literal tags".into(),
        // Metaspace (prepend_scheme "first") adds no dummy prefix to a text that already starts
        // with a space, but the Strip decoder still removes one space.
        _ => text.strip_prefix(' ').unwrap_or(text).into(),
    });
}

#[test]
fn hf_qwen2_tokenizer_json() {
    let Some(models) = models_dir("hf_qwen2_tokenizer_json") else { return };
    let dir = models.join("qwen2-tokenizer");
    let tok = Tokenizer::from_hf_file(&dir.join("tokenizer.json")).unwrap();
    assert_eq!(tok.kind(), "Hugging Face tokenizer.json (BPE, 151646 tokens)");
    // tokenizer_config.json: bos_token null, eos <|im_end|>; <|endoftext|> also ends generation.
    assert_eq!((tok.bos_id(), tok.eos_ids()), (None, vec![151645, 151643]));
    // The ChatML markers are special tokens: decode(skip_special_tokens) drops them.
    check_hf_vectors(&tok, &dir, "qwen2 tokenizer.json", |text| match text {
        "<|im_start|>user\nhi<|im_end|>" => "user\nhi".into(),
        _ => text.into(),
    });
}

#[test]
fn llama2c_tokenizer_bin() {
    let Some(models) = models_dir("llama2c_tokenizer_bin") else { return };
    let dir = models.join("llama2-tokenizer");
    let tok = Tokenizer::from_llama2c(&dir.join("tokenizer.bin")).unwrap();
    assert_eq!(tok.kind(), "llama2.c tokenizer.bin (32000 tokens)");
    assert_eq!((tok.bos_id(), tok.eos_ids()), (Some(1), vec![2]));

    // karpathy/llama2.c test.c
    let ids = tok.encode("I believe the meaning of life is", true).unwrap();
    assert_eq!(ids, [1, 306, 4658, 278, 6593, 310, 2834, 338]);
    assert_eq!(tok.decode(&ids).unwrap(), "I believe the meaning of life is");
    assert_eq!(tok.encode("", true).unwrap(), [1]);

    // Same ids as tokenizer.json on the ASCII cases, except where they legitimately differ:
    // llama2.c never parses `<s>`; it always adds the dummy-prefix space while the HF Metaspace
    // adds none before a leading space; and its best-score merging (SentencePiece's) can differ
    // from the merge ranks of the converted tokenizer.json on runs of spaces. Those cases must
    // give the ids of a line-by-line Python port of run.c's encode instead.
    const RUN_C: &[(&str, &[u32])] = &[
        ("  leading and trailing spaces  ", &[1, 259, 8236, 322, 25053, 8162, 259]),
        (
            "def f(x):\n    return x**2 + 3.14159",
            &[1, 822, 285, 29898, 29916, 1125, 13, 1678, 736, 921, 1068, 29906, 718, 29871, 29941, 29889, 29896, 29946, 29896, 29945, 29929],
        ),
        ("    indented\n\tcode", &[1, 268, 1399, 14927, 13, 12, 401]),
        (" ", &[1, 259]),
    ];
    let gguf = gguf_tokenizer(&models.join("llama.cpp-vocab/ggml-vocab-llama-spm.gguf"));
    let mut same_as_hf = 0;
    for (text, hf_ids, _) in hf_vectors(&dir) {
        let ids = tok.encode(&text, true).unwrap();
        assert_eq!(tok.decode(&ids).unwrap(), text);
        check_stream(&tok, &ids, &format!("llama2.c {text:?}"));
        if !text.contains("<s>") {
            // Same vocabulary and scores, llama.cpp's SPM: must be identical (it parses `<s>`).
            assert_eq!(gguf.encode(&text, true).unwrap(), ids, "GGUF llama-spm vs llama2.c on {text:?}");
        }
        if let Some((_, run_c)) = RUN_C.iter().find(|(t, _)| *t == text) {
            assert_eq!(ids, *run_c, "{text:?}");
        } else if text.is_ascii() && !text.contains("<s>") {
            assert_eq!(ids, hf_ids, "llama2.c vs tokenizer.json on {text:?}");
            assert_eq!(tok.encode(&text, false).unwrap(), hf_ids[1..], "{text:?}");
            same_as_hf += 1;
        }
    }
    eprintln!("llama2.c tokenizer.bin agrees with tokenizer.json on {same_as_hf} ASCII vectors (+{} run.c cases)", RUN_C.len());
    assert!(same_as_hf >= 8);

    // Non-ASCII goes through byte fallback (<0xF0><0x9F>...) and decodes back.
    let text = "Emoji: 🤖🚀 and 数字 ½";
    let ids = tok.encode(text, true).unwrap();
    assert_eq!(tok.decode(&ids).unwrap(), text);
    check_stream(&tok, &ids, "llama2.c emoji");
}

const STORIES: &[&str] = &[
    "Once upon a time, there was a little girl named Lily.",
    "She loved to play outside in the park with her friends.",
    "One day, Tom saw a big, red ball. \"Can I play?\" he asked.",
    "The cat was happy!\nThe end.",
    "  two leading spaces and a trailing one ",
];

#[test]
fn stories260k_tok512() {
    let Some(models) = models_dir("stories260k_tok512") else { return };
    let bin = Tokenizer::from_llama2c(&models.join("stories260K/t260.bin")).unwrap();
    assert_eq!(bin.vocab_size(), 512);
    let gguf = gguf_tokenizer(&models.join("stories260K-gguf/tinyllamas-stories-260k-f32.gguf"));
    assert_eq!(gguf.vocab_size(), 512);
    assert_eq!((gguf.bos_id(), gguf.eos_ids()), (Some(1), vec![2]));
    for text in STORIES {
        let ids = bin.encode(text, true).unwrap();
        assert_eq!(ids[0], 1);
        assert_eq!(bin.decode(&ids).unwrap(), *text);
        assert_eq!(gguf.encode(text, true).unwrap(), ids, "GGUF v1 vocab vs t260.bin on {text:?}");
        assert_eq!(gguf.encode(text, false).unwrap(), ids[1..], "{text:?}");
        assert_eq!(gguf.decode(&ids).unwrap(), *text);
        check_stream(&bin, &ids, text);
        check_stream(&gguf, &ids, text);
    }
    // Only 512 tokens: most of a word is byte pieces and short merges.
    let ids = bin.encode("naïve", false).unwrap();
    assert_eq!(bin.decode(&ids).unwrap(), "naïve");
}

/// Deterministic pseudo-random ids (no rand dependency).
fn random_ids(n: usize, vocab: usize, mut seed: u64) -> Vec<u32> {
    (0..n)
        .map(|_| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 33) % vocab as u64) as u32
        })
        .collect()
}

fn all_tokenizers(models: &Path) -> Vec<(String, Tokenizer)> {
    let mut all = Vec::new();
    for name in ["llama-spm", "phi-3", "gpt-2", "deepseek-llm", "deepseek-coder"] {
        all.push((name.to_owned(), gguf_tokenizer(&models.join(format!("llama.cpp-vocab/ggml-vocab-{name}.gguf")))));
    }
    all.push(("llama2 json".into(), Tokenizer::from_hf_file(&models.join("llama2-tokenizer/tokenizer.json")).unwrap()));
    all.push(("qwen2 json".into(), Tokenizer::from_hf_file(&models.join("qwen2-tokenizer/tokenizer.json")).unwrap()));
    all.push(("llama2.c".into(), Tokenizer::from_llama2c(&models.join("llama2-tokenizer/tokenizer.bin")).unwrap()));
    all.push(("t260".into(), Tokenizer::from_llama2c(&models.join("stories260K/t260.bin")).unwrap()));
    all
}

#[test]
fn robustness() {
    let Some(models) = models_dir("robustness") else { return };
    let weird = [
        "\0",
        "\u{301}",
        "a\u{301}\u{302}\u{303}",
        "\u{FEFF}BOM",
        "\u{FFFD}",
        "<s></s><unk><|im_end|><|endoftext|><|user|>",
        "<<<<||||>>>>",
        "\r\n\r\n\u{2028}\u{85}\u{A0}",
        "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ﬁ K Ω ΐ",
    ];
    for (name, tok) in all_tokenizers(&models) {
        let n = tok.vocab_size() as u32;
        assert!(matches!(tok.decode(&[n]), Err(Error::Input(_))), "{name}: decode of id {n}");
        assert!(matches!(tok.decode(&[u32::MAX]), Err(Error::Input(_))), "{name}");
        let mut stream = tok.stream();
        assert!(matches!(stream.push(n), Err(Error::Input(_))), "{name}: stream push of id {n}");
        assert_eq!(tok.id_to_piece(n), None, "{name}");
        for eos in tok.eos_ids() {
            assert!(eos < n, "{name}");
        }

        for text in weird {
            let ids = tok.encode(text, true).unwrap();
            check_stream(&tok, &ids, &format!("{name} {text:?}"));
        }
        // Arbitrary id sequences (broken byte sequences included) never panic and stream
        // exactly like decode.
        for seed in 0..20 {
            let ids = random_ids(40, n as usize, seed);
            check_stream(&tok, &ids, &format!("{name} random #{seed}"));
            // The first 300 ids hold the byte tokens of every vocabulary here: mostly broken UTF-8.
            let ids = random_ids(60, 300, seed);
            check_stream(&tok, &ids, &format!("{name} random bytes #{seed}"));
        }
    }
}

#[test]
fn byte_fallback_streaming_holds_partial_characters() {
    let Some(models) = models_dir("byte_fallback_streaming_holds_partial_characters") else { return };
    let tok = gguf_tokenizer(&models.join("llama.cpp-vocab/ggml-vocab-llama-spm.gguf"));
    // "▁▁" (dummy prefix + space), then the four byte tokens of 🤖: nothing may come out before
    // the fourth byte, and the first space is the dummy prefix.
    let ids = tok.encode(" 🤖", false).unwrap();
    assert_eq!(ids, [259, 243, 162, 167, 153]);
    let mut stream = tok.stream();
    let chunks: Vec<Option<String>> = ids.iter().map(|&id| stream.push(id).unwrap()).collect();
    assert_eq!(chunks, [Some(" ".into()), None, None, None, Some("🤖".into())]);
    assert_eq!(stream.finish(), None);
    // A dangling partial character comes out as one U+FFFD at the end.
    let mut stream = tok.stream();
    assert_eq!(stream.push(243).unwrap(), None);
    assert_eq!(stream.push(162).unwrap(), None);
    assert_eq!(stream.finish().as_deref(), Some("\u{FFFD}"));
    assert_eq!(tok.decode(&[243, 162]).unwrap(), "\u{FFFD}");

    // Byte-level BPE: Qwen2 spells 🤖 with tokens that split its UTF-8 bytes.
    let qwen = Tokenizer::from_hf_file(&models.join("qwen2-tokenizer/tokenizer.json")).unwrap();
    let ids = qwen.encode("🤖🤖 数字", false).unwrap();
    let mut stream = qwen.stream();
    let mut chunks = Vec::new();
    for &id in &ids {
        chunks.extend(stream.push(id).unwrap());
    }
    chunks.extend(stream.finish());
    assert!(chunks.iter().all(|c| !c.contains('\u{FFFD}')), "{chunks:?}");
    assert_eq!(chunks.concat(), "🤖🤖 数字");
}

#[test]
fn hf_byte_fallback_runs_and_invalid_output() {
    let Some(models) = models_dir("hf_byte_fallback_runs_and_invalid_output") else { return };
    // HF's ByteFallback decoder renders a run of byte tokens as a whole: <0x41><0x80> is not
    // valid UTF-8, so both bytes become U+FFFD. The stream must not have let "A" out early.
    let llama2 = Tokenizer::from_hf_file(&models.join("llama2-tokenizer/tokenizer.json")).unwrap();
    assert_eq!(llama2.id_to_piece(68).as_deref(), Some("<0x41>"));
    assert_eq!(llama2.decode(&[68, 131]).unwrap(), "\u{FFFD}\u{FFFD}");
    check_stream(&llama2, &[68, 131], "<0x41><0x80>");
    check_stream(&llama2, &[15043, 68, 131, 3186, 68], "Hello<0x41><0x80> world<0x41>");

    // Long invalid output streams in linear time and keeps flowing (byte-level: no run rule).
    let qwen = Tokenizer::from_hf_file(&models.join("qwen2-tokenizer/tokenizer.json")).unwrap();
    for (name, tok) in [("llama2 json", &llama2), ("qwen2 json", &qwen)] {
        let lone = (0..tok.vocab_size() as u32).find(|&id| tok.decode(&[id]).unwrap() == "\u{FFFD}").unwrap();
        let ids = vec![lone; 5000];
        let start = Instant::now();
        check_stream(tok, &ids, &format!("{name}: 5000 x {:?}", tok.id_to_piece(lone)));
        let took = start.elapsed();
        eprintln!("{name}: 5000 invalid byte tokens streamed in {took:?}");
        assert!(took < Duration::from_secs(2), "{name}: {took:?}");
    }
    let mut stream = qwen.stream();
    let lone = (0..qwen.vocab_size() as u32).find(|&id| qwen.decode(&[id]).unwrap() == "\u{FFFD}").unwrap();
    let emitted = (0..10).filter_map(|_| stream.push(lone).unwrap()).count();
    assert!(emitted >= 5, "invalid bytes should not be held back indefinitely");
}

#[test]
fn long_inputs_are_fast() {
    let Some(models) = models_dir("long_inputs_are_fast") else { return };
    let inp = std::fs::read_to_string(models.join("llama.cpp-vocab/ggml-vocab-llama-spm.gguf.inp")).unwrap();
    let mut text = String::new();
    while text.len() < 40_000 {
        text.push_str(&inp.replace("__ggml_vocab_test__", " "));
    }
    let no_spaces = "ab".repeat(20_000);
    for (name, tok) in all_tokenizers(&models) {
        for (what, input) in [("mixed text", &text), ("40k chars without spaces", &no_spaces)] {
            let start = Instant::now();
            let ids = tok.encode(input, false).unwrap();
            let took = start.elapsed();
            eprintln!("{name}: {what}: {} tokens in {took:?}", ids.len());
            assert!(took < Duration::from_secs(3), "{name}: {what} took {took:?}");
            if what == "mixed text" {
                assert!(ids.len() >= 10_000, "{name}: only {} tokens", ids.len());
            }
        }
    }
}
