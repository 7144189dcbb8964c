"""`gpt2-hpu-selfcheck`: the first command to run on a Gaudi host.

One row per check, PASS/FAIL/SKIP with one line of cause: versions, card count, lazy/eager mode, mark_step,
hccl collectives across the cards, a tiny GPT-2 trained in lazy and in eager mode against the CPU, dropout
with activation checkpointing, a ZeRO-1 checkpoint saved and resumed on 2 cards, HPU memory.

Modules: command (options, table), checks (the checks, in table order), training (the Fairseq runs),
probes (the device side, run in child processes), children (running a child, reading its cause).
"""


def main(argv=None):
    from gpt2_hpu.selfcheck.command import main as run

    return run(argv)
