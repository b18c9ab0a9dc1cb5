"""Vocabulary adaptation: frequent words that a Unigram tokenizer splits become one piece,
their embedding rows starting as the mean of their old pieces' rows."""
import re

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from conftest import tiny_transformer
from ner.e5_converter import add_word_pieces
from ner.spans import Record
from ner.training.loop import frequent_split_words, make_optimizer

PIECES = ["<s>", "<pad>", "</s>", "<unk>", "\u2581", "\u2581the", "\u2581nep", "hro", "toxic", "ity", "\u2581of",
          "\u2581cis", "platin", "n", "e", "p", "h", "r", "o", "t", "x", "i", "c", "y", "s", "l", "a", "f"]


def unigram_tokenizer() -> PreTrainedTokenizerFast:
    vocab = [(piece, 0.0 if piece.startswith("<") else -2.0 - i * 0.1) for i, piece in enumerate(PIECES)]
    backend = Tokenizer(models.Unigram(vocab, unk_id=3))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", cls_token="<s>", sep_token="</s>")


def pieces(tokenizer, word):
    return tokenizer.convert_ids_to_tokens(tokenizer([word], is_split_into_words=True, add_special_tokens=False)["input_ids"])


def test_a_frequent_split_word_becomes_one_piece_with_the_mean_of_its_rows():
    tokenizer = unigram_tokenizer()
    model = tiny_transformer(len(tokenizer))
    assert pieces(tokenizer, "nephrotoxicity") == ["\u2581nep", "hro", "toxic", "ity"]
    old_ids = tokenizer(["nephrotoxicity"], is_split_into_words=True, add_special_tokens=False)["input_ids"]

    new_model, new_tokenizer = add_word_pieces(model, tokenizer, ["nephrotoxicity", "the", "nephrotoxicity"])

    assert len(new_tokenizer) == len(tokenizer) + 1  # "the" is one piece already; duplicates once
    assert pieces(new_tokenizer, "nephrotoxicity") == ["\u2581nephrotoxicity"]
    assert pieces(new_tokenizer, "cisplatin") == pieces(tokenizer, "cisplatin")  # others as they were
    table = new_model.get_input_embeddings().weight
    assert table.shape[0] == new_model.config.vocab_size == len(new_tokenizer)
    old_table = model.get_input_embeddings().weight
    assert torch.allclose(table[-1], old_table[old_ids].mean(0))
    assert torch.equal(table[: len(tokenizer)], old_table)
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)  # the original untouched
    ids = new_tokenizer("the nephrotoxicity of cisplatin", return_tensors="pt")["input_ids"]
    assert new_model(input_ids=ids).last_hidden_state.shape[1] == ids.shape[1]


def test_frequent_split_words_keeps_the_frequent_much_split_ones():
    tokenizer = unigram_tokenizer()
    texts = ["the nephrotoxicity of cisplatin", "nephrotoxicity of the cisplatin", "the cisplatin", "the toxic"]
    records = [Record(text=t, tokens=[(m.start(), m.end()) for m in re.finditer(r"\S+", t)]) for t in texts]
    assert frequent_split_words(tokenizer, records, limit=10, min_count=2, min_pieces=2) == ["cisplatin", "nephrotoxicity"]
    assert frequent_split_words(tokenizer, records, limit=10, min_count=2, min_pieces=3) == ["nephrotoxicity"]
    assert frequent_split_words(tokenizer, records, limit=1, min_count=2, min_pieces=2) == ["cisplatin"]
    assert frequent_split_words(tokenizer, records, limit=10, min_count=4, min_pieces=2) == []


def test_the_embedding_table_can_learn_at_its_own_rate():
    from ner.encoders import WordEncoder
    from ner.span_model import SpanModel, SpanModelSpec

    tokenizer = unigram_tokenizer()
    model = SpanModel(WordEncoder(tiny_transformer(len(tokenizer)), tokenizer), ["Chemical"], SpanModelSpec(hidden_size=32))
    table = model.encoder.transformer.get_input_embeddings().weight
    optimizer, _ = make_optimizer(model, {"learning_rate": 1e-5, "embedding_learning_rate": 1e-3}, 10)
    rates = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    assert rates[id(table)] == 1e-3
    assert sum(1 for group in optimizer.param_groups for p in group["params"] if p is table) == 1
    other = next(p for p in model.encoder.parameters() if p is not table)
    assert rates[id(other)] == 1e-5
    optimizer, _ = make_optimizer(model, {"freeze_embeddings": True, "embedding_learning_rate": 1e-3}, 10)
    assert id(table) not in {id(p) for group in optimizer.param_groups for p in group["params"]}


def test_only_the_new_rows_learn_when_the_recipe_says_so():
    from ner.training.loop import adapt_vocabulary

    tokenizer = unigram_tokenizer()
    model = tiny_transformer(len(tokenizer))
    texts = ["the nephrotoxicity of cisplatin", "nephrotoxicity of the cisplatin"]
    records = [Record(text=t, tokens=[(m.start(), m.end()) for m in re.finditer(r"\S+", t)]) for t in texts]
    settings = {"limit": 10, "min_count": 2, "min_pieces": 2, "train_new_only": True}
    new_model, new_tokenizer = adapt_vocabulary(model, tokenizer, settings, records)
    assert len(new_tokenizer) == len(tokenizer) + 2
    ids = new_tokenizer(texts, return_tensors="pt")["input_ids"]
    new_model(input_ids=ids).last_hidden_state.sum().backward()
    grad = new_model.get_input_embeddings().weight.grad
    assert grad[: len(tokenizer)].abs().sum() == 0
    assert grad[len(tokenizer):].abs().sum() > 0


def test_a_word_encoder_takes_the_grown_vocabulary_and_forgets_its_cached_pieces():
    from ner.encoders import WordEncoder

    tokenizer = unigram_tokenizer()
    encoder = WordEncoder(tiny_transformer(len(tokenizer)), tokenizer)
    assert len(encoder.word_pieces("nephrotoxicity")) == 4
    encoder.swap_vocabulary(*add_word_pieces(encoder.transformer, tokenizer, ["nephrotoxicity"]))
    assert encoder.word_pieces("nephrotoxicity") == [len(tokenizer)]
    assert encoder([["the", "nephrotoxicity"]]).vectors.shape[:2] == (1, 2)
