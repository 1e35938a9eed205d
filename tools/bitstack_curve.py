#!/usr/bin/env python3
"""BitStack's size/quality curve beside quantized files of the same model (issue 17).

For each --memory budget, `llm-npu eval --bitstack STACK --memory MB --json` against the model's
own f32 logits; for each quantized file, `llm-npu eval -m QUANT --ref-model MODEL --json`. Prints a
markdown table (bits per linear weight, MB of all weights, KL to f32, perplexity ratio, top-1)
and writes an SVG plot of KL against bits per weight. Standard library only. Run it with
LLM_NPU_SIMD=avx2 to compare weights alone: quantized files then run prefill on f32 activations
(dequantized panels and the f32 GEMM) like the stack, instead of int8 activations.

    tools/bitstack_curve.py --model M --stack S --memory 300 400 500 --quant Q8_0=q8.gguf \
        --svg docs/bitstack-curve.svg -- --text eval.txt
(arguments after -- go to every eval: the tokens, --ctx, threads.)
"""
import argparse, json, math, subprocess, sys

p = argparse.ArgumentParser()
p.add_argument("--bin", default="target/release/llm-npu")
p.add_argument("--model", required=True)
p.add_argument("--stack", required=True)
p.add_argument("--memory", nargs="+", type=float, required=True, help="budgets in MB")
p.add_argument("--quant", nargs="*", default=[], help="NAME=FILE of quantized files of the same model")
p.add_argument("--svg", help="write the plot here")
p.add_argument("--title", default="")
p.add_argument("--data", help="save the measured rows here (JSON); with --replot, draw from it without measuring")
p.add_argument("--replot", action="store_true")
p.add_argument("--label", default="BitStack", help="the stack's name in the table and plot (e.g. its rank)")
p.add_argument("eval_args", nargs="*")
a = p.parse_args()


def run_eval(args):
    out = subprocess.run([a.bin, "eval", "--json", *args, *a.eval_args], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"llm-npu eval {' '.join(args)} failed: {out.stderr.strip().splitlines()[-1]}")
    return json.loads(out.stdout)


rows = []
if a.replot:
    rows = json.load(open(a.data))
for mb in [] if a.replot else a.memory:
    d = run_eval(["-m", a.model, "--bitstack", a.stack, "--memory", str(mb)])
    rows.append((a.label, f"--memory {mb:g}", d))
for q in [] if a.replot else a.quant:
    name, path = q.split("=", 1)
    rows.append((name, path, run_eval(["-m", path, "--ref-model", a.model])))

if a.data and not a.replot:
    json.dump(rows, open(a.data, "w"), indent=1)

print("| weights | budget / file | bits per linear weight | all weights (MB) | KL to f32 | ppl ratio | top-1 agreement |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
for kind, what, d in rows:
    print(f"| {kind} | {what} | {d['linear_bits_per_weight']:.2f} | {d['weights_mb']:.{1 if d['weights_mb'] >= 10 else 3}f} | {d['mean_kld']:.4f} | {d['ppl_ratio']:.4f} | {d['top1_agreement']:.3f} |")

if a.svg:
    W, H, L, R, T, B = 640, 400, 70, 20, 40, 50
    pts = [(d["linear_bits_per_weight"], max(d["mean_kld"], 1e-5), kind, what) for kind, what, d in rows]
    xmax = max(x for x, *_ in pts) * 1.05
    ys = [math.log10(y) for _, y, *_ in pts]
    ylo, yhi = math.floor(min(ys)), math.ceil(max(ys))
    X = lambda x: L + (W - L - R) * x / xmax
    Y = lambda y: T + (H - T - B) * (yhi - math.log10(y)) / max(yhi - ylo, 1)
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{W / 2}" y="20" text-anchor="middle" font-size="14">{a.title}</text>',
           f'<line x1="{L}" y1="{H - B}" x2="{W - R}" y2="{H - B}" stroke="black"/>',
           f'<line x1="{L}" y1="{T}" x2="{L}" y2="{H - B}" stroke="black"/>',
           f'<text x="{(L + W - R) / 2}" y="{H - 12}" text-anchor="middle">bits per weight of the layers\' linears</text>',
           f'<text x="16" y="{(T + H - B) / 2}" text-anchor="middle" transform="rotate(-90 16 {(T + H - B) / 2})">KL divergence to f32 (nats, log)</text>']
    step = max(1, round(xmax / 8))
    for x in range(0, int(xmax) + 1, step):
        svg.append(f'<line x1="{X(x)}" y1="{H - B}" x2="{X(x)}" y2="{H - B + 5}" stroke="black"/><text x="{X(x)}" y="{H - B + 18}" text-anchor="middle">{x}</text>')
    for e in range(ylo, yhi + 1):
        svg.append(f'<line x1="{L - 5}" y1="{Y(10 ** e)}" x2="{W - R}" y2="{Y(10 ** e)}" stroke="#ddd"/><text x="{L - 8}" y="{Y(10 ** e) + 4}" text-anchor="end">1e{e}</text>')
    series = sorted({kind for _, _, kind, _ in pts if kind.startswith("BitStack")})
    colors = ["#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e"]
    for i, name in enumerate(series):
        line = sorted((x, y) for x, y, kind, _ in pts if kind == name)
        c = colors[i % len(colors)]
        svg.append(f'<polyline fill="none" stroke="{c}" stroke-width="2" points="' + " ".join(f"{X(x):.1f},{Y(y):.1f}" for x, y in line) + '"/>')
        svg.extend(f'<circle cx="{X(x):.1f}" cy="{Y(y):.1f}" r="4" fill="{c}"/>' for x, y in line)
        svg.append(f'<circle cx="{W - 190}" cy="{T + 10 + 16 * i}" r="4" fill="{c}"/><text x="{W - 180}" y="{T + 14 + 16 * i}">{name}</text>')
    quants = [(x, y, kind) for x, y, kind, _ in pts if not kind.startswith("BitStack")]
    for i, (x, y, kind) in enumerate(quants):
        dy = -6 if i % 2 == 0 else 16  # neighbours' labels above and below
        svg.append(f'<rect x="{X(x) - 4:.1f}" y="{Y(y) - 4:.1f}" width="8" height="8" fill="#d62728"/><text x="{X(x) + 7:.1f}" y="{Y(y) + dy:.1f}" fill="#d62728">{kind}</text>')
    ly = T + 10 + 16 * len(series)
    svg.append(f'<rect x="{W - 194}" y="{ly - 4}" width="8" height="8" fill="#d62728"/><text x="{W - 180}" y="{ly + 4}">llama.cpp quantization</text>')
    svg.append("</svg>")
    with open(a.svg, "w") as f:
        f.write("\n".join(svg) + "\n")
