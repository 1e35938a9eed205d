#!/usr/bin/env python3
"""Load and prompt-cache benchmark for `llm-npu serve` (standard library only). It talks to
127.0.0.1 only and stops by itself.

  load: CLIENTS concurrent streaming clients send REQUESTS completions in all; prints errors,
        time to first token (p50/p99), generated tokens/s, and the server's RSS before and after
        (--pid).
        tools/server_bench.py load --port 8080 --model NAME --pid PID [--clients 8] [--requests 1000]
  ttft: a long prompt (--text FILE, cut to about --tokens tokens by characters, or --chars) cold
        (start the server just before), again, then with --edit-chars characters changed near its
        end: the last prefills only from the change on.
        tools/server_bench.py ttft --port 8080 --model NAME --text FILE [--tokens 2000] [--edit-chars 50]
"""
import argparse
import http.client
import json
import statistics
import threading
import time


def post(port, body, stream):
    """(seconds to the first generated text, total seconds, completion tokens, error or None)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    t0 = time.perf_counter()
    conn.request("POST", "/v1/completions", json.dumps({**body, "stream": stream}), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        return None, None, 0, f"HTTP {resp.status}: {resp.read()[:200]!r}"
    if not stream:
        out = json.loads(resp.read())
        t = time.perf_counter() - t0
        return t, t, out["usage"]["completion_tokens"], None
    first, pieces = None, 0
    for line in resp:
        line = line.strip()
        if not line.startswith(b"data: "):
            continue
        data = line[6:]
        if data == b"[DONE]":
            break
        ev = json.loads(data)
        if "error" in ev:
            return None, None, pieces, ev["error"]["message"]
        if ev["choices"][0]["text"]:
            pieces += 1
            first = first or time.perf_counter() - t0
    conn.close()
    return first, time.perf_counter() - t0, pieces, None


def rss_mib(pid):
    if not pid:
        return None
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024


def load(a):
    prompts = ["Once upon a time", "Lily went to the park", "Tom had a big red ball", "The little dog was sad"]
    results, lock, next_req = [], threading.Lock(), [0]

    def client(c):
        while True:
            with lock:
                if next_req[0] >= a.requests:
                    return
                i = next_req[0]
                next_req[0] += 1
            body = {"model": a.model, "prompt": prompts[i % len(prompts)], "max_tokens": a.max_tokens, "temperature": 0.8, "seed": i}
            r = post(a.port, body, True)
            with lock:
                results.append(r)

    rss0 = rss_mib(a.pid)
    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(a.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    rss1 = rss_mib(a.pid)
    errors = [r[3] for r in results if r[3]]
    ttft = sorted(r[0] for r in results if r[0] is not None)
    tokens = sum(r[2] for r in results)
    pct = lambda p: ttft[min(len(ttft) - 1, int(p * len(ttft)))] * 1e3
    print(f"{len(results)} requests from {a.clients} clients in {wall:.1f} s: {len(errors)} errors"
          + (f" (first: {errors[0]})" if errors else ""))
    print(f"time to first token: p50 {pct(0.5):.1f} ms, p99 {pct(0.99):.1f} ms; {tokens} tokens generated, {tokens / wall:.0f} tokens/s")
    if rss0:
        print(f"server RSS: {rss0:.1f} MiB before, {rss1:.1f} MiB after")


def ttft(a):
    text = open(a.text).read()
    # About 4 characters per token for English with a Llama-2-style vocabulary; --chars to adjust.
    prompt = text[: a.chars or a.tokens * 4]
    # --edit-chars characters reversed, that many before the end: everything from there on is new.
    n = a.edit_chars
    edited = prompt[: len(prompt) - 2 * n] + prompt[len(prompt) - 2 * n: len(prompt) - n][::-1] + prompt[len(prompt) - n:]
    # (Run against a freshly started server, so the first request is really cold.)
    for name, p in [("cold", prompt), ("same prompt again", prompt), (f"{n} characters changed {2 * n} before the end", edited)]:
        first, total, _, err = post(a.port, {"model": a.model, "prompt": p, "max_tokens": 1, "temperature": 0}, False)
        if err:
            print(f"{name}: error {err}")
            return
        print(f"{name}: {total * 1e3:.0f} ms to the first token")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["load", "ttft"])
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--model", required=True)
    ap.add_argument("--pid", type=int)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--text")
    ap.add_argument("--tokens", type=int, default=2000)
    ap.add_argument("--chars", type=int)
    ap.add_argument("--edit-chars", type=int, default=50)
    a = ap.parse_args()
    load(a) if a.mode == "load" else ttft(a)


if __name__ == "__main__":
    main()
