"""Our strict entity-level micro F1 equals seqeval's on the same tag sequences."""
from hypothesis import given, settings, strategies as st
from seqeval.metrics import f1_score

from ner.evaluation import Scores
from ner.spans import tags_to_word_spans

TAG = st.sampled_from(["O", "O", "B-PER", "I-PER", "B-LOC", "I-LOC"])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.lists(TAG, min_size=1, max_size=12), st.lists(TAG, min_size=12, max_size=12)), min_size=1, max_size=5))
def test_micro_f1_matches_seqeval(pairs):
    gold_tags = [g for g, _ in pairs]
    predicted_tags = [p[: len(g)] for g, p in pairs]
    scores = Scores()
    for gold, predicted in zip(gold_tags, predicted_tags):
        scores.add(tags_to_word_spans(gold), tags_to_word_spans(predicted))
    assert abs(scores.micro["f1"] - f1_score(gold_tags, predicted_tags)) < 1e-9
