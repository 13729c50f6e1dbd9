"""LoCoMo's answer metrics: token F1 exactly as LoCoMo's `task_eval/evaluation.py` computes it, and
BLEU-1 as Mem0's LoCoMo evaluation (which MemLoRA follows) computes it.

LoCoMo normalises an answer by dropping commas, lower-casing, stripping punctuation and the words
a/an/the/and, then compares Porter-stemmed tokens (multiset overlap). Category 1 (multi-hop) answers
are lists: both sides are split on commas and each gold part takes its best-matching predicted part.
Category 3 gold answers keep only the text before the first ';'.
"""

from __future__ import annotations

import re
import string
from collections import Counter

from nltk.stem import PorterStemmer
from nltk.tokenize import NLTKWordTokenizer
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

_STEMMER = PorterStemmer()
_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
    s = str(s).replace(",", "").lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = re.sub(r"\b(a|an|the|and)\b", " ", s)
    return " ".join(s.split())


def _stems(s: str) -> list[str]:
    return [_STEMMER.stem(w) for w in normalize_answer(s).split()]


def token_f1(prediction: str, gold: str) -> float:
    """LoCoMo's `f1_score`: F1 of the stemmed-token multisets."""
    pred, ref = _stems(prediction), _stems(gold)
    same = sum((Counter(pred) & Counter(ref)).values())
    if same == 0:
        return 0.0
    p, r = same / len(pred), same / len(ref)
    return 2 * p * r / (p + r)


def multi_answer_f1(prediction: str, gold: str) -> float:
    """LoCoMo's `f1` for list answers: mean over gold parts of the best F1 against any predicted part."""
    preds = [p.strip() for p in prediction.split(",")]
    golds = [g.strip() for g in gold.split(",")]
    return sum(max(token_f1(p, g) for p in preds) for g in golds) / len(golds)


def gold_answer(answer, category: int) -> str:
    text = str(answer)
    return text.split(";")[0].strip() if category == 3 else text


def locomo_f1(prediction: str, answer, category: int) -> float:
    """The F1 LoCoMo scores a question of `category` (1-4) with."""
    gold = gold_answer(answer, category)
    return multi_answer_f1(prediction, gold) if category == 1 else token_f1(prediction, gold)


_TOKENIZER = NLTKWordTokenizer()


def bleu1(prediction: str, gold: str) -> float:
    """Sentence BLEU-1 as Mem0's LoCoMo evaluation computes it: NLTK `sentence_bleu` with weights
    (1, 0, 0, 0) and smoothing method1 on lower-cased word tokens. Tokens come from NLTK's word
    tokenizer without its sentence splitter (which needs downloaded data; answers are one sentence)."""
    pred = _TOKENIZER.tokenize(str(prediction).lower())
    ref = _TOKENIZER.tokenize(str(gold).lower())
    if not pred or not ref:
        return 0.0
    return float(sentence_bleu([ref], pred, weights=(1, 0, 0, 0), smoothing_function=SmoothingFunction().method1))
