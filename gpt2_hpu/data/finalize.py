"""Stage 4, finalize: binarize into a side folder, write the manifest, then rename everything into DESTDIR.

The renames are planned in `finalize.json` before the first one, so a run killed halfway through them
finishes them when it is rerun. The manifest goes last: a folder with `prepare.json` is a complete dataset.
"""
import os
import shutil

from gpt2_hpu.data.binarize import binarize
from gpt2_hpu.data.common import PROG, fsync_dir, read_json, write_json_atomic
from gpt2_hpu.data.destdir import MANIFEST, outputs
from gpt2_hpu.errors import PrepareError


def _totals(states, field):
    total = {}
    for state in states.values():
        for key, value in state.get(field, {}).items():
            total[key] = total.get(key, 0) + value
    return total


def _write_final(args, workdir, final_dir, split_names, job, encoder, states, elapsed_encode):
    shutil.rmtree(final_dir, ignore_errors=True)
    os.makedirs(final_dir)
    dictionary, sequences = binarize(args, workdir, final_dir, split_names, encoder)
    manifest = {
        "tool": PROG,
        "job": job,
        "splits": split_names,
        "files": {name: os.path.getsize(os.path.join(final_dir, name)) for name in outputs(split_names)},
        "dictionary": dictionary,
        "sequences": sequences,
        "documents": _totals(states, "documents"),
        "stats": _totals(states, "stats"),
        "encode_seconds": round(elapsed_encode, 3),
    }
    write_json_atomic(os.path.join(final_dir, MANIFEST), manifest)
    fsync_dir(final_dir)


def finalize(args, destdir, workdir, split_names, job, encoder, states, elapsed_encode):
    """Put the finished dataset into `destdir`; return its manifest."""
    marker_path = os.path.join(workdir, "finalize.json")
    final_dir = os.path.join(workdir, "final")
    plan = read_json(marker_path)
    if plan is None:
        _write_final(args, workdir, final_dir, split_names, job, encoder, states, elapsed_encode)
        plan = {"files": outputs(split_names) + [MANIFEST]}
        write_json_atomic(marker_path, plan)
    # data files first, dict.txt (needed to load anything) next, the manifest last
    for name in plan["files"]:
        src = os.path.join(final_dir, name)
        if os.path.exists(src):
            os.replace(src, os.path.join(destdir, name))
        elif not os.path.exists(os.path.join(destdir, name)):
            raise PrepareError(f"{src} vanished while finishing; rerun with --force to start over")
    fsync_dir(destdir)
    manifest = read_json(os.path.join(destdir, MANIFEST))
    shutil.rmtree(workdir, ignore_errors=True)
    return manifest


def print_summary(destdir, manifest, elapsed, status):
    d = manifest["dictionary"]
    lines = [f"{PROG}: {status} {destdir}: dict.txt with {d['symbols']} symbols, {d['dtype']} ids"]
    total = 0
    for name in manifest["splits"]:
        s = manifest["sequences"][name]
        bpe_tokens = s["tokens"] - s["sequences"]
        total += bpe_tokens
        docs = manifest["documents"].get(name)
        extra = f", {docs} documents" if docs is not None else ""
        lines.append(f"  {name}: {s['sequences']} sequences, {bpe_tokens} BPE tokens (+1 </s> each){extra}")
    st = manifest["stats"]
    skipped = [
        f"{st.get('empty_documents', 0)} empty documents",
        f"{st.get('corrupt_shards', 0)} corrupt shards",
        f"{st.get('bad_records', 0)} bad JSONL records",
    ]
    lines.append("  skipped: " + ", ".join(skipped))
    lines.append(f"  invalid UTF-8 (bytes replaced by U+FFFD): {st.get('non_utf8_documents', 0)} documents/lines")
    if d.get("unk_tokens"):
        lines.append(f"  <unk>: {d['unk_tokens']} tokens not in the dictionary")
    if elapsed is not None:
        lines.append(f"  time: {elapsed:.1f} s, {total / max(elapsed, 1e-9):,.0f} tokens/s")
    print("\n".join(lines), flush=True)
