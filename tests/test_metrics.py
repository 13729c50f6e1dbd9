"""LoCoMo answer metrics against values computed by hand from LoCoMo's and Mem0's definitions."""

import math

import pytest

from memlora.metrics import bleu1, locomo_f1, normalize_answer, token_f1


def test_normalize_drops_commas_punctuation_articles_and_and():
    assert normalize_answer("The Beach, a Lake AND the Park!") == "beach lake park"


def test_token_f1_uses_porter_stems_and_multiset_overlap():
    assert token_f1("The running dogs", "a dog runs") == 1.0  # run/dog on both sides
    # pred {went, to, paris} vs gold {paris}: P = 1/3, R = 1, F1 = 0.5
    assert token_f1("went to Paris", "Paris") == pytest.approx(0.5)
    assert token_f1("7 May 2023", "8 May 2023") == pytest.approx(2 / 3)
    assert token_f1("", "anything") == 0.0


def test_category_rules():
    # category 1 splits on commas: gold parts "painting", "pottery"; best match 1.0 and 0.0 -> 0.5
    assert locomo_f1("painting, swimming", "Painting, pottery", 1) == pytest.approx(0.5)
    # category 3 keeps the gold text before ';'
    assert locomo_f1("likely yes", "Likely yes; she loves it", 3) == 1.0
    # other categories: one token F1 over the whole answer, commas dropped
    assert locomo_f1("Paris, France", "Paris", 4) == pytest.approx(2 * 0.5 * 1 / 1.5)


def test_bleu1_is_clipped_unigram_precision_times_brevity_penalty():
    assert bleu1("7 May 2023", "7 May 2023") == 1.0
    assert bleu1("May 2023", "7 May 2023") == pytest.approx(math.exp(1 - 3 / 2))  # P = 1, BP = e^(1-3/2)
    assert bleu1("the the the", "the cat") == pytest.approx(1 / 3)  # clipped: 1 of 3, longer than gold
    assert bleu1("dog", "a cat") == 0.0
    assert bleu1("", "a cat") == 0.0
