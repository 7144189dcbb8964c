"""gpt2-hpu-sample's parts: padding that leaves the logits alone, draws that follow the seed and the mask, GPT-2
BPE decoding, and one line for a bad checkpoint or dictionary."""
import argparse
import types

import pytest
import torch

from gpt2_hpu import sampling
from gpt2_hpu.data.bpe import VocabSource
from gpt2_hpu.errors import UsageError


def _dictionary(symbols):
    from fairseq.data import Dictionary

    d = Dictionary()
    for s in symbols:
        d.add_symbol(s)
    return d


def _tiny_lm(dictionary, positions=16):
    from fairseq.models.transformer_lm import TransformerLanguageModel, base_lm_architecture

    args = argparse.Namespace(decoder_layers=2, decoder_embed_dim=16, decoder_ffn_embed_dim=32,
                              decoder_attention_heads=2, decoder_learned_pos=True,
                              share_decoder_input_output_embed=True, tokens_per_sample=positions,
                              max_target_positions=positions, dropout=0.0)
    base_lm_architecture(args)
    torch.manual_seed(0)
    task = types.SimpleNamespace(source_dictionary=dictionary, target_dictionary=dictionary)
    return TransformerLanguageModel.build_model(args, task).eval()


class RecordingDevice(sampling.SamplingDevice):
    def __init__(self):
        super().__init__(torch.device("cpu"), "cpu", self._count)
        self.steps = 0

    def _count(self):
        self.steps += 1


@pytest.fixture(scope="module")
def lm():
    dictionary = _dictionary(str(i) for i in range(100, 140))
    return _tiny_lm(dictionary), dictionary


def test_padded_length_is_a_power_of_two_within_the_window():
    assert [sampling.padded_length(n, 32) for n in (1, 8, 9, 16, 17, 31, 32)] == [8, 8, 16, 16, 32, 32, 32]
    assert sampling.padded_length(20, 24) == 24


@pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask")
def test_right_padding_leaves_the_last_real_logits_alone(lm):
    model, dictionary = lm
    with torch.no_grad():
        for n in (1, 3, 7, 12):
            tokens = [dictionary.eos()] + list(range(5, 4 + n))
            plain = model(torch.tensor([tokens]))[0][0, -1]
            padded_tokens = tokens + [dictionary.pad()] * (sampling.padded_length(len(tokens), 16) - len(tokens))
            padded = model(torch.tensor([padded_tokens]))[0][0, len(tokens) - 1]
            torch.testing.assert_close(padded, plain)


def test_draws_follow_the_seed_and_the_mask_and_end_a_step_per_token(lm):
    model, dictionary = lm
    allowed = torch.zeros(len(dictionary), dtype=torch.bool)
    allowed[10:20] = True
    device = RecordingDevice()

    def draw(seed):
        return sampling.sample_ids(model, [dictionary.eos(), 5], 10, device, allowed, window=8, seed=seed)

    first = draw(1)
    assert device.steps == 10
    assert len(first) == 12 and all(10 <= i < 20 for i in first[2:])  # past the window too
    assert draw(1) == first
    assert draw(2) != first


def test_decoding_joins_bpe_pieces_and_turns_eos_into_a_newline():
    encoding = VocabSource.parse().build()
    text = "naïve café 🙂 done"
    ids = encoding.encode_ordinary(text)
    assert len(ids) > len(text.split())  # some characters span several tokens
    dictionary = _dictionary(str(i) for i in ids)
    indices = [dictionary.index(str(i)) for i in ids]
    assert sampling.decode(indices + [dictionary.eos()] + indices[:2], dictionary, encoding) == \
        text + "\n" + encoding.decode(ids[:2])


def test_a_dictionary_of_words_is_refused_in_one_line():
    encoding = VocabSource.parse().build()
    with pytest.raises(UsageError) as e:
        sampling.bpe_symbols(_dictionary(["the", "for", "statement"]), encoding)
    assert e.value.line().startswith("gpt2-hpu-sample: error: the dictionary's symbols are not GPT-2 BPE ids")
    mask = sampling.bpe_symbols(_dictionary(["262", "madeupword0000"]), encoding)
    assert mask.tolist() == [False, False, True, False, True, False]  # <s> <pad> </s> <unk> 262 madeupword0000


def test_a_missing_checkpoint_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        sampling.main(["--path", str(tmp_path / "nothing.pt"), "--device", "cpu"])
    assert e.value.code == 2
    assert capsys.readouterr().err == (f"gpt2-hpu-sample: error: no checkpoint at {tmp_path / 'nothing.pt'}: give "
                                       "--path the .pt file a training run saved\n")
