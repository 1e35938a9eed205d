//! The `llm-npu` binary: a thin layer over the library (`src/cli/`).

mod cli;

fn main() {
    cli::main()
}
