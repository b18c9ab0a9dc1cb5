"""Domain-adaptive pretraining (masked-LM) on a tiny random encoder: packing keeps every
piece, masking follows its rule, a run lowers the held-out loss and writes an encoder a span
recipe can name, and ``--steps 0`` writes the encoder untouched."""
import json
import random

import pytest
import torch

from conftest import TINY_WORDS, needs_data, tiny_tokenizer, tiny_transformer
from ner.spans import Record, join_words
from ner.training.domain_pretraining import mask_batch, pack_sequences, pretrain

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def tokenizer():
    tokenizer = tiny_tokenizer((*TINY_WORDS, "[MASK]"))
    tokenizer.mask_token = "[MASK]"
    return tokenizer


def record(text):
    text, tokens = join_words(text.split())
    return Record(text=text, tokens=tokens)


def test_packing_keeps_every_piece_in_order(tokenizer):
    records = [record("Angela Merkel met Tim Cook in Berlin ."), record("Paris London Apple"), record("the a of")]
    sequences = pack_sequences(records, tokenizer, length=4)
    assert all(s[0] == tokenizer.cls_token_id and s[-1] == tokenizer.sep_token_id for s in sequences)
    assert all(len(s) <= 6 for s in sequences)
    inner = [p for s in sequences for p in s[1:-1]]
    expected = [p for r in records for p in tokenizer(r.words, is_split_into_words=True, add_special_tokens=False)["input_ids"]]
    assert inner == expected


def test_masking_chooses_only_ordinary_pieces_and_labels_only_them(tokenizer):
    sequences = pack_sequences([record("Angela Merkel met Tim Cook in Berlin .")], tokenizer, length=32)
    ids, attention, labels = mask_batch(sequences, tokenizer, random.Random(0), probability=1.0)
    original = torch.tensor(sequences[0])
    chosen = labels[0] != -100
    assert not chosen[0] and not chosen[-1]  # CLS and SEP never
    assert torch.equal(labels[0][chosen], original[chosen])  # every ordinary piece, labelled with itself
    assert (ids[0][chosen] == tokenizer.mask_token_id).float().mean() > 0.5
    ids, _, labels = mask_batch(sequences, tokenizer, random.Random(0), probability=0.0)
    assert (labels == -100).all() and torch.equal(ids[0], original)


@needs_data
def test_pretraining_lowers_the_held_out_loss_and_writes_a_loadable_encoder(tmp_path, tokenizer):
    from ner.encoders import load_pretrained

    encoder = tmp_path / "encoder"
    tiny_transformer(len(tokenizer)).save_pretrained(encoder)
    tokenizer.save_pretrained(encoder)
    recipe = {"data": {"text": ["conll2003_en:train:2-10"], "held_out": ["conll2003_en:train:2-10"]},
              "encoder": {"name": str(encoder)},
              "pretraining": {"sequence_pieces": 30, "batch_sequences": 4, "learning_rate": 3e-3,
                              "head_learning_rate": 3e-3, "eval_every": 40, "head_warmup_steps": 5, "mask_probability": 0.3},
              "output": {"path": str(tmp_path / "dapt")}}
    result = pretrain(recipe, steps=40, log=lambda *a: None)
    assert result["history"][-1]["held_out_loss"] < result["history"][0]["held_out_loss"]
    assert json.loads((tmp_path / "dapt" / "pretraining.json").read_text())["history"][-1]["step"] == 40
    model, loaded = load_pretrained(str(tmp_path / "dapt"))
    assert len(loaded) == len(tokenizer)
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)

    pretrain(recipe, tmp_path / "untouched", steps=0, log=lambda *a: None)
    untouched, _ = load_pretrained(str(tmp_path / "untouched"))
    original, _ = load_pretrained(str(encoder))
    assert all(torch.equal(a, b) for a, b in zip(untouched.state_dict().values(), original.state_dict().values()))
