"""The output folder's safety: a run finishes, resumes or starts afresh, and never mixes two datasets.

`DESTDIR/prepare.json` (the manifest, written last) marks a finished dataset; `DESTDIR/.gpt2-hpu-prepare.tmp/`
holds an unfinished run (`job.json` names its settings). Anything else in the way is refused without
`--force` (exit 2).
"""
import os
import shutil

from gpt2_hpu.data.common import read_json
from gpt2_hpu.errors import PrepareError

WORKDIR = ".gpt2-hpu-prepare.tmp"
MANIFEST = "prepare.json"


def outputs(split_names):
    files = ["dict.txt"]
    for name in split_names:
        files += [name + ".bin", name + ".idx"]
    return files


def _remove_outputs(destdir, split_names):
    for name in outputs(split_names) + [MANIFEST]:
        path = os.path.join(destdir, name)
        if os.path.exists(path):
            os.remove(path)
    shutil.rmtree(os.path.join(destdir, WORKDIR), ignore_errors=True)


def _first_difference(a, b):
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            return key
    return None


def _check_manifest(force, destdir, split_names, job, manifest):
    same = manifest.get("job") == job
    intact = same and all(
        os.path.isfile(os.path.join(destdir, f)) and os.path.getsize(os.path.join(destdir, f)) == size
        for f, size in manifest.get("files", {}).items()
    )
    if intact:
        return "complete"
    if not force:
        why = (
            f"it was made with a different '{_first_difference(manifest.get('job') or {}, job)}'"
            if not same else "its files are missing or changed"
        )
        raise PrepareError(
            f"{destdir} holds a different dataset ({why}); use another --destdir, or --force to replace it",
            exit_code=2,
        )
    _remove_outputs(destdir, sorted(set(split_names) | set(manifest.get("splits", []))))
    return "fresh"


def check_destdir(force, destdir, split_names, job):
    """Return "complete", "resume" or "fresh"; raise (exit 2) when `destdir` holds something else."""
    manifest = read_json(os.path.join(destdir, MANIFEST))
    if manifest is not None:
        return _check_manifest(force, destdir, split_names, job, manifest)
    workdir = os.path.join(destdir, WORKDIR)
    work_job = read_json(os.path.join(workdir, "job.json"))
    if work_job is not None and work_job != job:
        if not force:
            raise PrepareError(
                f"{workdir} holds an unfinished run with different settings "
                f"('{_first_difference(work_job, job)}'); rerun that command to finish it, "
                "or use --force to discard it",
                exit_code=2,
            )
        shutil.rmtree(workdir)
        work_job = None
    existing = [f for f in outputs(split_names) if os.path.exists(os.path.join(destdir, f))]
    finalizing = work_job is not None and os.path.exists(os.path.join(workdir, "finalize.json"))
    if existing and not finalizing:
        if not force:
            raise PrepareError(
                f"{destdir} already holds {', '.join(existing[:3])} not written by this command with these "
                "settings; use another --destdir, or --force to replace them",
                exit_code=2,
            )
        _remove_outputs(destdir, split_names)
        work_job = None
    return "resume" if work_job is not None else "fresh"
