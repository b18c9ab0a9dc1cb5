"""Shared fixtures: tiny random encoders built in the test, never downloaded."""
import pytest
import torch

from ner.datasets import find_data_root
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

TINY_WORDS = (
    "Angela Merkel met Tim Cook in Berlin . Paris London Apple Google visited said the a of "
    "and to on at with from Barack Obama Microsoft Germany France New York Times Reuters "
    "aspirin cancer BRCA1 gene protein disease @user #tag http://t.co 😀 Straße"
).split()


def tiny_tokenizer(words=TINY_WORDS) -> PreTrainedTokenizerFast:
    vocab = {token: i for i, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *dict.fromkeys(words)])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]"
    )


def tiny_transformer(vocab_size: int, hidden: int = 32, layers: int = 1, seed: int = 0) -> BertModel:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=2, intermediate_size=2 * hidden, max_position_embeddings=64)
    return BertModel(config, add_pooling_layer=False)


@pytest.fixture
def tiny_encoder_parts():
    tokenizer = tiny_tokenizer()
    return tiny_transformer(len(tokenizer)), tokenizer


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run faster on one thread, above all on a machine busy with training
    (a module opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory):
    """The suite's own span component on a tiny random encoder, saved to disk (untrained:
    its entities are arbitrary, but it runs the whole torch path). A module may define
    its own ``pipeline_dir`` (a trained one) instead."""
    from test_span_ner import TestEnglishContract

    nlp, _ = TestEnglishContract().build()
    path = tmp_path_factory.mktemp("pipeline") / "tiny"
    nlp.to_disk(path)
    return path


def _shared_data_available() -> bool:
    try:
        return find_data_root().is_dir()
    except FileNotFoundError:
        return False


# Tests that read ../shared/data (or $NER_SUITE_DATA) skip, saying so, where it is absent.
needs_data = pytest.mark.skipif(not _shared_data_available(), reason="shared data folder not available")
