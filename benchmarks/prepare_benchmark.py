#!/usr/bin/env python
"""Benchmark: gpt2-hpu-prepare vs the stock Fairseq pipeline, end to end, same workers.

Stock = `multiprocessing_bpe_encoder.py --keep-empty --workers N` then
`fairseq-preprocess --only-source --workers N`. Ours = `gpt2-hpu-prepare
--trainpref ... --workers N`. Both start from the same text file; the outputs
are checked to be byte-identical; the stock BPE files (encoder.json/vocab.bpe)
are rebuilt from the .tiktoken ranks, so nothing is downloaded.

Memory: our peak RSS is measured at `--mb` and at `--mb x --scale` to show
it does not grow with the corpus.

    python benchmarks/prepare_benchmark.py --mb 8 --workers 2 [--corpus FILE]

The default corpus is Python's bundled reference-manual text (pydoc topics),
repeated in a different seeded order each time to reach the size (real English
prose and code; Fairseq's BPE word cache profits from the repetition, so the
ratio is, if anything, conservative).
"""

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))
sys.path.insert(0, REPO)

_MEASURE = (
    "import resource, subprocess, sys, time\n"
    "t = time.perf_counter(); r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)\n"
    "dt = time.perf_counter() - t\n"
    "sys.stderr.write(r.stderr.decode(errors='replace')[-2000:] if r.returncode else '')\n"
    "print(dt, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, r.returncode)\n"
)


def measure(cmd):
    """Run `cmd`; return (seconds, peak RSS of the largest process in MiB)."""
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), LOGLEVEL="WARNING")
    out = subprocess.run([sys.executable, "-c", _MEASURE, *map(str, cmd)], capture_output=True, text=True, env=env)
    seconds, rss_kib, rc = out.stdout.split()
    if rc != "0":
        raise SystemExit(f"command failed: {' '.join(map(str, cmd))}\n{out.stderr}")
    return float(seconds), int(rss_kib) / 1024


def build_corpus(path, megabytes, source=None):
    if source:
        with open(source, encoding="utf-8") as f:
            pieces = [f.read()]
    else:
        from pydoc_data.topics import topics

        pieces = [topics[k] for k in sorted(topics)]
    target = int(megabytes * (1 << 20))
    rng = random.Random(0)
    written = 0
    with open(path, "w", encoding="utf-8") as f:
        while written < target:
            order = pieces[:]
            rng.shuffle(order)
            for text in order:
                f.write(text)
                f.write("\n\n")
                written += len(text.encode("utf-8")) + 2
                if written >= target:
                    break
    return path


def same_files(a, b, names):
    for name in names:
        with open(os.path.join(a, name), "rb") as fa, open(os.path.join(b, name), "rb") as fb:
            if fa.read() != fb.read():
                return False
    return True


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mb", type=float, default=8.0, help="corpus size in MB (default 8)")
    p.add_argument("--workers", type=int, default=2, help="workers for both pipelines (default 2)")
    p.add_argument("--scale", type=float, default=4.0, help="second size for the memory check = mb x scale")
    p.add_argument("--corpus", help="use this UTF-8 text file (repeated to --mb) instead of pydoc topics")
    p.add_argument("--skip-stock", action="store_true", help="only run ours")
    args = p.parse_args()

    from helpers import write_encoder_json_and_vocab_bpe

    with tempfile.TemporaryDirectory(prefix="prepare-bench-") as tmp:
        corpus = build_corpus(os.path.join(tmp, "train.txt"), args.mb, args.corpus)
        size = os.path.getsize(corpus)
        ours_dir = os.path.join(tmp, "ours")
        t_ours, rss_ours = measure([sys.executable, "-m", "gpt2_hpu.data", "--quiet", "--trainpref", corpus,
                                    "--destdir", ours_dir, "--workers", args.workers])
        with open(os.path.join(ours_dir, "prepare.json")) as f:
            s = json.load(f)["sequences"]["train"]
        tokens = s["tokens"] - s["sequences"]
        print(f"corpus: {size / 1e6:.1f} MB, {tokens:,} GPT-2 tokens, {s['sequences']:,} lines, workers={args.workers}")
        print(f"ours : {t_ours:7.2f} s  {tokens / t_ours:>10,.0f} tok/s  peak RSS {rss_ours:.0f} MiB")

        if not args.skip_stock:
            ej, vb = write_encoder_json_and_vocab_bpe(os.path.join(tmp, "bpe"))
            bpe_file = os.path.join(tmp, "train.bpe")
            stock_dir = os.path.join(tmp, "stock")
            t_enc, rss_enc = measure([sys.executable, "-m", "fairseq.examples.roberta.multiprocessing_bpe_encoder",
                                      "--encoder-json", ej, "--vocab-bpe", vb, "--inputs", corpus,
                                      "--outputs", bpe_file, "--keep-empty", "--workers", args.workers])
            t_pre, rss_pre = measure([sys.executable, "-m", "fairseq_cli.preprocess", "--only-source",
                                      "--trainpref", bpe_file, "--destdir", stock_dir, "--workers", args.workers])
            t_stock = t_enc + t_pre
            print(f"stock: {t_stock:7.2f} s  {tokens / t_stock:>10,.0f} tok/s  "
                  f"(encoder {t_enc:.2f} s + fairseq-preprocess {t_pre:.2f} s; "
                  f"peak RSS {max(rss_enc, rss_pre):.0f} MiB)")
            identical = same_files(ours_dir, stock_dir, ["dict.txt", "train.bin", "train.idx"])
            print(f"outputs identical: {identical}")
            print(f"speed-up end to end: {t_stock / t_ours:.1f}x")
            if not identical:
                raise SystemExit(1)

        if args.scale and args.scale != 1:
            big = build_corpus(os.path.join(tmp, "big.txt"), args.mb * args.scale, args.corpus)
            os.remove(corpus)
            t_big, rss_big = measure([sys.executable, "-m", "gpt2_hpu.data", "--quiet", "--trainpref", big,
                                      "--destdir", os.path.join(tmp, "ours_big"), "--workers", args.workers])
            print(f"ours at {os.path.getsize(big) / 1e6:.1f} MB: {t_big:.2f} s, peak RSS {rss_big:.0f} MiB "
                  f"(vs {rss_ours:.0f} MiB at {size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
