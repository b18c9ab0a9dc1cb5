"""The contract every pipeline passes (flair's habit): a tiny random encoder is overfit
on a few sentences of the pipeline's domain, saved, loaded, and must give the same spans
and scores, and score F1 = 1 on what it learnt."""
import random

import spacy
import torch

from ner.evaluation import evaluate, predict_docs, record_to_doc
from ner.spans import Record, join_words, word_spans_to_char_spans
from ner.training.batches import Segment
from ner.training.loop import batch_loss

from conftest import tiny_tokenizer, tiny_transformer


class PipelineContract:
    lang = "en"
    labels: list[str] = []
    examples: list[tuple[list[str], list[tuple[int, int, str]]]] = []
    decoding = "flat"
    storage = "fp32"
    steps = 120
    model = {"@architectures": "ner_suite.SpanModel.v1", "max_width": 6}

    def build(self):
        words = [w for ws, _ in self.examples for w in ws]
        tokenizer = tiny_tokenizer(words)
        nlp = spacy.blank(self.lang)
        ner = nlp.add_pipe("span_ner", name="ner", config={
            "labels": self.labels, "decoding": self.decoding, "storage": self.storage,
            "model": {**self.model, "encoder": "tiny", "hidden_size": 32, "window": 12, "stride": 6},
        })
        ner.set_model(tiny_transformer(len(tokenizer)), tokenizer)
        return nlp, ner

    def records(self):
        out = []
        for words, spans in self.examples:
            text, tokens = join_words(words)
            out.append(Record(text, word_spans_to_char_spans(tokens, spans), tokens=tokens))
        return out

    def overfit(self, ner):
        torch.manual_seed(0)
        segments = [Segment(words, spans, None) for words, spans in self.examples]
        optimizer = torch.optim.Adam(ner.model.parameters(), lr=3e-3)
        ner.model.train()
        for _ in range(self.steps):
            loss = batch_loss(ner.model, random.Random(0).sample(segments, len(segments)))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return loss.item()

    def predict(self, nlp):
        docs = [record_to_doc(nlp.vocab, r) for r in self.records()]
        return [[(s.start, s.end, s.label_, score) for s, score in zip(d.spans["ner"], d.spans["ner"].attrs["scores"])]
                for d in predict_docs(nlp, docs)]

    def test_overfit_save_load_same_spans_score(self, tmp_path):
        nlp, ner = self.build()
        assert self.overfit(ner) < 0.05
        before = self.predict(nlp)
        assert [[(s, e, l) for s, e, l, _ in doc] for doc in before] == [sorted(spans) for _, spans in self.examples]
        nlp.to_disk(tmp_path / "pipeline")
        loaded = spacy.load(tmp_path / "pipeline")
        after = self.predict(loaded)
        tolerance = 0.05 if self.storage.startswith("int8") else 1e-4
        for doc_before, doc_after in zip(before, after):
            assert [x[:3] for x in doc_before] == [x[:3] for x in doc_after]
            assert all(abs(a[3] - b[3]) < tolerance for a, b in zip(doc_before, doc_after))
        assert evaluate(loaded, self.records()).micro["f1"] == 1.0
