#!/usr/bin/env python3
"""Side-by-side speed against llama.cpp's llama-bench, alternating the two tools in one run so
both see the same machine state (decode speed here swings 1.5x within minutes).

    tools/peer_bench.py --llama-bench PATH [--rounds 2] [--reps 10] [-n 64] [-p 0] FILE.gguf ...

For each file and round: `llm-npu bench` then `llama-bench`, each with REPS timed repetitions
on 2 threads. Prints one row per file with both speeds per round, their ratio and the measured
memory / compute limit our bench reports."""
import argparse, json, statistics, subprocess, sys
from pathlib import Path

ours = Path(__file__).resolve().parent.parent / "target/release/llm-npu"

def run_ours(f, test, args):
    p, n = test
    out = subprocess.run([str(ours), "bench", "-m", f, "-p", str(p), "-n", str(n), "-r", str(args.reps), "-t", str(args.threads), "--json"] + args.ours_args,
                         capture_output=True, text=True, check=True).stdout
    rows = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
    # The mean of the timed repetitions, as llama-bench reports (avg_ts).
    return statistics.mean(rows[-1]["samples_tokens_per_s"]), rows[-1].get("limit_tokens_per_s")

def run_llama(f, test, args):
    p, n = test
    out = subprocess.run([args.llama_bench, "-m", f, "-p", str(p), "-n", str(n), "-r", str(args.reps), "-t", str(args.threads), "-o", "jsonl"],
                         capture_output=True, text=True, check=True).stdout
    rows = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
    return rows[-1]["avg_ts"]

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("files", nargs="+")
    ap.add_argument("--llama-bench", required=True)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("-n", type=int, default=64)
    ap.add_argument("-p", type=int, default=0)
    ap.add_argument("--ours-args", default="", help="extra flags for llm-npu bench, e.g. '--backend npu'")
    args = ap.parse_args()
    args.ours_args = args.ours_args.split()
    test = (args.p, 0) if args.p else (0, args.n)
    name = f"pp{args.p}" if args.p else f"tg{args.n}"
    print(f"| file | test | llm-npu t/s per round | llama.cpp t/s per round | ratio per round | our limit t/s |")
    print("| --- | --- | --- | --- | --- | ---: |")
    for f in args.files:
        o, l, lim = [], [], []
        for _ in range(args.rounds):
            t, limit = run_ours(f, test, args); o.append(t); lim.append(limit or 0)
            l.append(run_llama(f, test, args))
        ratios = [a / b for a, b in zip(o, l)]
        print(f"| {Path(f).name} | {name} | {', '.join(f'{v:.1f}' for v in o)} | {', '.join(f'{v:.1f}' for v in l)} | "
              f"{', '.join(f'{r:.2f}' for r in ratios)} (mean {statistics.mean(ratios):.2f}) | {', '.join(f'{v:.0f}' for v in lim)} |", flush=True)

if __name__ == "__main__":
    sys.exit(main())
