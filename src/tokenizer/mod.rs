//! Tokenizers: HF tokenizer.json, GGUF vocabularies and llama2.c tokenizer.bin behind one type.
