"""Evaluation metrics for generated text, VQA, classification and captions.

Scale: every score is on a 0-100 scale (BLEU, ROUGE, exact match, VQA accuracy,
accuracy, precision, recall, F1, ROC-AUC, average precision). CIDEr-D is
coco-caption's value times 100 (the way papers quote it, e.g. 120.5), so it can
exceed 100. Losses and perplexity are raw values. The per-question helper
`vqa_question_accuracy` returns 0-1.

`references` arguments take one list of reference strings per prediction (a bare
string counts as a single reference). Empty inputs score 0.0. Only numpy,
sacrebleu and rouge-score are needed; the latter two are imported on first use.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

References = Sequence[Sequence[str] | str]


def _ref_lists(predictions: Sequence[str], references: References, name: str) -> list[list[str]]:
    if len(predictions) != len(references):
        raise ValueError(
            f"{name}: {len(predictions)} predictions but {len(references)} reference lists"
        )
    refs = [[r] if isinstance(r, str) else list(r) for r in references]
    for i, r in enumerate(refs):
        if not r:
            raise ValueError(f"{name}: example {i} has no references")
    return refs


# ----------------------------------------------------------------------------- generated text


def bleu(predictions: Sequence[str], references: References) -> float:
    """Corpus BLEU (sacrebleu defaults: 13a tokenisation, exp smoothing), 0-100.

    Args:
        predictions: one hypothesis per example.
        references: one or more references per example; counts may differ.
    """
    refs = _ref_lists(predictions, references, "bleu")
    if not refs:
        return 0.0
    import sacrebleu

    # sacrebleu wants one stream per reference slot; None marks "no reference here"
    # so examples may have different numbers of references.
    width = max(len(r) for r in refs)
    streams = [[r[k] if k < len(r) else None for r in refs] for k in range(width)]
    return float(sacrebleu.corpus_bleu(list(predictions), streams).score)


def rouge(predictions: Sequence[str], references: References) -> dict[str, float]:
    """ROUGE-1/2/L F-measure (rouge-score, Porter stemmer), averaged over examples, 0-100.

    With several references an example scores its best reference, per ROUGE type.

    Returns:
        ``{"rouge1": ..., "rouge2": ..., "rougeL": ...}``.
    """
    keys = ("rouge1", "rouge2", "rougeL")
    refs = _ref_lists(predictions, references, "rouge")
    if not refs:
        return dict.fromkeys(keys, 0.0)
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(keys), use_stemmer=True)
    totals = dict.fromkeys(keys, 0.0)
    for pred, ref in zip(predictions, refs, strict=True):
        if hasattr(scorer, "score_multi"):
            best = {k: s.fmeasure for k, s in scorer.score_multi(ref, pred).items()}
        else:  # older rouge-score
            per_ref = [scorer.score(r, pred) for r in ref]
            best = {k: max(s[k].fmeasure for s in per_ref) for k in keys}
        for k in keys:
            totals[k] += best[k]
    return {k: 100.0 * v / len(refs) for k, v in totals.items()}


_PUNCTUATION = frozenset(string.punctuation)


def _squad_normalize(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(predictions: Sequence[str], references: References) -> float:
    """SQuAD-style exact match, 0-100.

    Both sides are lowercased and stripped of punctuation, articles and extra
    whitespace; an example counts if it equals any of its references.
    """
    refs = _ref_lists(predictions, references, "exact_match")
    if not refs:
        return 0.0
    hits = sum(
        any(_squad_normalize(p) == _squad_normalize(r) for r in rs)
        for p, rs in zip(predictions, refs, strict=True)
    )
    return 100.0 * hits / len(refs)


def text_generation_metrics(predictions: Sequence[str], references: References) -> dict[str, float]:
    """BLEU, ROUGE-1/2/L and exact match in one dict (all 0-100)."""
    return {
        "bleu": bleu(predictions, references),
        **rouge(predictions, references),
        "exact_match": exact_match(predictions, references),
    }


def perplexity(mean_loss: float) -> float:
    """exp(mean token cross-entropy); ``inf`` instead of an overflow error."""
    try:
        return math.exp(mean_loss)
    except OverflowError:
        return math.inf


# ----------------------------------------------------------------------------- VQA

# The tables below are those of the official VQA evaluation script (vqaEval.py),
# including its oddities (e.g. "somebody'd" -> "somebodyd", capitalised keys that
# never match after lowercasing), so our numbers equal the leaderboard's.
_VQA_CONTRACTIONS = dict(
    pair.split("=")
    for pair in """
aint=ain't arent=aren't cant=can't couldve=could've couldnt=couldn't couldn'tve=couldn't've
couldnt've=couldn't've didnt=didn't doesnt=doesn't dont=don't hadnt=hadn't hadnt've=hadn't've
hadn'tve=hadn't've hasnt=hasn't havent=haven't hed=he'd hed've=he'd've he'dve=he'd've hes=he's
howd=how'd howll=how'll hows=how's Id've=I'd've I'dve=I'd've Im=I'm Ive=I've isnt=isn't itd=it'd
itd've=it'd've it'dve=it'd've itll=it'll let's=let's maam=ma'am mightnt=mightn't
mightnt've=mightn't've mightn'tve=mightn't've mightve=might've mustnt=mustn't mustve=must've
neednt=needn't notve=not've oclock=o'clock oughtnt=oughtn't ow's'at='ow's'at 'ows'at='ow's'at
'ow'sat='ow's'at shant=shan't shed've=she'd've she'dve=she'd've she's=she's shouldve=should've
shouldnt=shouldn't shouldnt've=shouldn't've shouldn'tve=shouldn't've somebody'd=somebodyd
somebodyd've=somebody'd've somebody'dve=somebody'd've somebodyll=somebody'll somebodys=somebody's
someoned=someone'd someoned've=someone'd've someone'dve=someone'd've someonell=someone'll
someones=someone's somethingd=something'd somethingd've=something'd've
something'dve=something'd've somethingll=something'll thats=that's thered=there'd
thered've=there'd've there'dve=there'd've therere=there're theres=there's theyd=they'd
theyd've=they'd've they'dve=they'd've theyll=they'll theyre=they're theyve=they've twas='twas
wasnt=wasn't wed've=we'd've we'dve=we'd've weve=we've werent=weren't whatll=what'll
whatre=what're whats=what's whatve=what've whens=when's whered=where'd wheres=where's
whereve=where've whod=who'd whod've=who'd've who'dve=who'd've wholl=who'll whos=who's
whove=who've whyll=why'll whyre=why're whys=why's wont=won't wouldve=would've wouldnt=wouldn't
wouldnt've=wouldn't've wouldn'tve=wouldn't've yall=y'all yall'll=y'all'll y'allll=y'all'll
yall'd've=y'all'd've y'alld've=y'all'd've y'all'dve=y'all'd've youd=you'd youd've=you'd've
you'dve=you'd've youll=you'll youre=you're youve=you've
""".split()
)
_VQA_NUMBERS = {
    w: str(i) for i, w in enumerate("zero one two three four five six seven eight nine ten".split())
}
_VQA_NUMBERS["none"] = "0"
_VQA_ARTICLES = {"a", "an", "the"}
_VQA_PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<"]
_VQA_PUNCT += ["@", "`", ",", "?", "!"]
# Official regex, quirk kept: "(?!<=\d)" is a lookahead, so every "." not followed by a
# digit is dropped ("2.5" survives, "dog." does not).
_VQA_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_VQA_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")


def normalize_vqa_answer(answer: str) -> str:
    """Normalise an answer as the official VQA script does.

    Punctuation is deleted when it touches a space (or when the answer has a
    comma between digits, "1,000" -> "1000"), else replaced by a space; periods
    not followed by a digit are dropped; then lowercase, number words -> digits
    ("two" -> "2"), articles removed, contractions restored ("dont" -> "don't").
    """
    text = answer.replace("\n", " ").replace("\t", " ").strip()
    has_digit_comma = _VQA_COMMA_STRIP.search(text) is not None
    out = text
    for p in _VQA_PUNCT:
        if p + " " in text or " " + p in text or has_digit_comma:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    out = _VQA_PERIOD_STRIP.sub("", out)
    words = [_VQA_NUMBERS.get(w, w) for w in out.lower().split()]
    words = [_VQA_CONTRACTIONS.get(w, w) for w in words if w not in _VQA_ARTICLES]
    return " ".join(words)


def vqa_question_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """VQA accuracy of one prediction, 0-1.

    The official formula: average, over the n leave-one-out subsets of the n human
    answers, of ``min(#matches in the subset / 3, 1)``. With 10 answers, 2 matches
    give 0.6, 3 give 0.9 and 4 or more give 1.0. Fewer than 10 answers use the same
    formula over the answers given; with a single answer there is no subset to
    leave one out of, so it is ``min(matches / 3, 1)`` (at most 1/3: use
    `exact_match` for single-answer data). Unlike the official script, which only
    normalises annotator answers that disagree (VQAv2's are pre-normalised), both
    sides are always normalised.

    Raises:
        ValueError: `answers` is empty.
    """
    if not answers:
        raise ValueError("vqa accuracy needs at least one human answer")
    pred = normalize_vqa_answer(prediction)
    matched = [normalize_vqa_answer(a) == pred for a in answers]
    total = sum(matched)
    if len(matched) == 1:
        return min(total / 3.0, 1.0)
    # Leaving out a matching answer leaves total-1 matches, any other leaves total.
    return sum(min((total - m) / 3.0, 1.0) for m in matched) / len(matched)


def vqa_accuracy(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> float:
    """Mean `vqa_question_accuracy` over questions, 0-100."""
    if len(predictions) != len(answers):
        raise ValueError(f"vqa_accuracy: {len(predictions)} predictions but {len(answers)} answers")
    if not predictions:
        return 0.0
    accs = [vqa_question_accuracy(p, a) for p, a in zip(predictions, answers, strict=True)]
    return 100.0 * sum(accs) / len(accs)


# ----------------------------------------------------------------------------- classification


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.zeros(np.broadcast(num, den).shape, dtype=float)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _average_ranks(x: np.ndarray) -> np.ndarray:
    # 1-based ranks, ties share their mean rank (what the Mann-Whitney U statistic needs).
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return (ends - (counts - 1) / 2.0)[inverse]


def _roc_auc(is_pos: np.ndarray, scores: np.ndarray) -> float | None:
    n_pos = int(is_pos.sum())
    n_neg = len(is_pos) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    u = _average_ranks(scores)[is_pos].sum() - n_pos * (n_pos + 1) / 2.0
    return 100.0 * float(u) / (n_pos * n_neg)


def _average_precision(is_pos: np.ndarray, scores: np.ndarray) -> float | None:
    # sum_k (R_k - R_{k-1}) P_k over distinct thresholds, as scikit-learn defines it.
    n_pos = int(is_pos.sum())
    if n_pos == 0:
        return None
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], is_pos[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # end of each group of tied scores
    tps = np.cumsum(y)[last]
    fps = np.cumsum(~y)[last]
    precision = tps / (tps + fps)
    recall = tps / n_pos
    return 100.0 * float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def classification_metrics(
    y_true: Sequence[str],
    y_pred: Sequence[str],
    labels: Sequence[str],
    probabilities: Sequence[Sequence[float]] | None = None,
    positive_label: str | None = None,
) -> dict[str, Any]:
    """Accuracy, per-class and macro precision/recall/F1, confusion matrix, ROC-AUC/AP.

    Args:
        y_true: true label per example.
        y_pred: predicted label per example.
        labels: all labels, in the order used for the confusion matrix and probabilities.
        probabilities: optional ``[n_examples][len(labels)]`` class probabilities.
        positive_label: the positive class for ROC-AUC / AP; default ``labels[0]``.

    Returns:
        ``accuracy``, ``precision_macro``, ``recall_macro``, ``f1_macro``, ``per_class``
        (label -> precision/recall/f1/support), ``confusion_matrix`` (rows true,
        columns predicted, `labels` order), ``labels``; with two labels and
        probabilities also ``roc_auc`` and ``average_precision`` (None when `y_true`
        holds a single class, as they are undefined). Scores are 0-100; a zero
        denominator gives 0.0.

    Raises:
        ValueError: lengths differ, or a label is not in `labels`.
    """
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} true labels but {len(y_pred)} predictions")
    index = {label: i for i, label in enumerate(labels)}
    if len(index) != len(labels):
        raise ValueError(f"duplicate labels in {list(labels)}")
    unknown = sorted({*y_true, *y_pred} - index.keys())
    if unknown:
        raise ValueError(f"labels {unknown} are not in labels={list(labels)}")
    k = len(labels)
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, ([index[t] for t in y_true], [index[p] for p in y_pred]), 1)
    tp = np.diag(cm).astype(float)
    support = cm.sum(axis=1)
    precision = _safe_div(tp, cm.sum(axis=0))
    recall = _safe_div(tp, support)
    f1 = _safe_div(2 * precision * recall, precision + recall)
    result: dict[str, Any] = {
        "accuracy": 100.0 * float(_safe_div(tp.sum(), np.asarray(cm.sum()))),
        "precision_macro": 100.0 * float(precision.mean()) if k else 0.0,
        "recall_macro": 100.0 * float(recall.mean()) if k else 0.0,
        "f1_macro": 100.0 * float(f1.mean()) if k else 0.0,
        "per_class": {
            label: {
                "precision": 100.0 * float(precision[i]),
                "recall": 100.0 * float(recall[i]),
                "f1": 100.0 * float(f1[i]),
                "support": int(support[i]),
            }
            for i, label in enumerate(labels)
        },
        "confusion_matrix": cm.tolist(),
        "labels": list(labels),
    }
    if probabilities is not None and k == 2:
        probs = np.asarray(probabilities, dtype=float)
        if probs.shape != (len(y_true), 2):
            raise ValueError(f"probabilities must be [{len(y_true)}][2], got {list(probs.shape)}")
        positive = labels[0] if positive_label is None else positive_label
        if positive not in index:
            raise ValueError(f"positive_label {positive!r} is not in labels={list(labels)}")
        scores = probs[:, index[positive]]
        is_pos = np.array([t == positive for t in y_true], dtype=bool)
        result["roc_auc"] = _roc_auc(is_pos, scores)
        result["average_precision"] = _average_precision(is_pos, scores)
    return result


# ----------------------------------------------------------------------------- CIDEr-D

# coco-caption's PTB tokenizer drops these tokens.
_CIDER_PUNCT = {"''", "'", "``", "`", ".", "?", "!", ",", ":", "-", "--", "...", ";"}


def _cider_ngrams(text: str, n: int) -> Counter[tuple[str, ...]]:
    # Approximates coco-caption's PTB tokenisation: lowercase, split off punctuation.
    words = [w for w in re.findall(r"\w+|'\w+|[^\w\s]+", text.lower()) if w not in _CIDER_PUNCT]
    return Counter(
        tuple(words[i : i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1)
    )


def cider(
    predictions: Sequence[str], references: References, *, n: int = 4, sigma: float = 6.0
) -> float:
    """CIDEr-D as coco-caption computes it, times 100.

    n-grams 1..n weighted by tf-idf, the hypothesis' counts clipped to each
    reference's, a gaussian length penalty (sigma 6), averaged over n and over
    references, times 10; the mean over examples is then multiplied by 100 (so
    coco-caption's 1.205 reads 120.5). As in coco-caption, the idf is computed over
    the references being evaluated, so scores depend on the evaluated set, and a
    set of one image scores 0 (every n-gram has idf 0).
    """
    refs = _ref_lists(predictions, references, "cider")
    if not refs:
        return 0.0
    ref_counts = [[_cider_ngrams(r, n) for r in rs] for rs in refs]
    doc_freq: Counter[tuple[str, ...]] = Counter()
    for counts in ref_counts:
        doc_freq.update({g for c in counts for g in c})
    log_docs = math.log(float(len(refs)))

    def vectorize(counts: Counter) -> tuple[list[dict], list[float], int]:
        vec: list[dict] = [{} for _ in range(n)]
        norm = [0.0] * n
        for gram, tf in counts.items():
            weight = tf * (log_docs - math.log(max(1.0, doc_freq[gram])))
            vec[len(gram) - 1][gram] = weight
            norm[len(gram) - 1] += weight * weight
        # coco-caption measures length in bigrams; kept so the penalty matches theirs.
        length = sum(tf for gram, tf in counts.items() if len(gram) == 2)
        return vec, [math.sqrt(x) for x in norm], length

    total = 0.0
    for pred, counts in zip(predictions, ref_counts, strict=True):
        vh, nh, lh = vectorize(_cider_ngrams(pred, n))
        score = np.zeros(n)
        for c in counts:
            vr, nr, lr = vectorize(c)
            penalty = math.exp(-((lh - lr) ** 2) / (2 * sigma**2))
            for k in range(n):
                val = sum(min(w, vr[k].get(g, 0.0)) * vr[k].get(g, 0.0) for g, w in vh[k].items())
                if nh[k] != 0 and nr[k] != 0:
                    val /= nh[k] * nr[k]
                score[k] += val * penalty
        total += float(score.mean()) / len(counts) * 10.0
    return 100.0 * total / len(refs)
