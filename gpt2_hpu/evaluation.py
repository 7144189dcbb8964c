"""Perplexity on the HPU: `fairseq-eval-lm --user-dir gpt2_hpu --hpu` (or `gpt2-hpu-eval-lm --hpu`).

Fairseq's eval_lm moves the models to CUDA only, and each batch to the device of the models' parameters. With
--hpu (the launch has activated the device) the models go to the HPU before Fairseq's loop starts, so every
batch follows them there, and in lazy mode the graph is cut after every batch, as after every validation step
in training. Without --hpu, Fairseq's evaluation runs unchanged.
"""
import functools
import inspect
import logging

from gpt2_hpu import device as hpu_device

logger = logging.getLogger(__name__)


def on_device(eval_lm):
    """Fairseq's `fairseq_cli.eval_lm.eval_lm`, run on the HPU when one is active."""
    signature = inspect.signature(eval_lm)

    @functools.wraps(eval_lm)
    def run(*args, **kwargs):
        hpu = hpu_device.active()
        if hpu is None:
            return eval_lm(*args, **kwargs)
        call = signature.bind(*args, **kwargs)
        for model in call.arguments["models"]:
            model.to(hpu.torch_device)
        call.arguments["device"] = hpu.torch_device
        batches = MarkStepAfterEach(call.arguments["batch_iterator"], hpu)
        call.arguments["batch_iterator"] = batches
        logger.info(f"evaluating on HPU ({'lazy' if hpu.lazy else 'eager'} mode)")
        results = eval_lm(*call.args, **call.kwargs)
        logger.info(f"evaluated {batches.count} batches on HPU, {batches.mark_steps} mark_steps")
        return results

    return run


class MarkStepAfterEach:
    """The batches, with a mark_step once the consumer is done with each (when it asks for the next one)."""

    def __init__(self, batches, hpu):
        self.batches, self.hpu = batches, hpu
        self.count = 0
        self.mark_steps = 0

    def __iter__(self):
        for batch in self.batches:
            yield batch
            self.count += 1
            before = self.hpu.mark_steps
            self.hpu.mark_step()
            self.mark_steps += self.hpu.mark_steps - before
