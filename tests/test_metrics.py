"""Metrics on hand-worked cases."""

from __future__ import annotations

import math

import pytest

from softprompt.data.records import VisionExample
from softprompt.tasks import metrics as m


def test_bleu_identical_is_100_and_accepts_uneven_references() -> None:
    preds = ["the cat sat on the mat today", "a quick brown fox jumps over it"]
    assert m.bleu(preds, [[preds[0]], [preds[1]]]) == pytest.approx(100.0)
    # Different reference counts per example: the missing slot is padded for sacrebleu.
    assert m.bleu(preds, [[preds[0], "something else"], [preds[1]]]) == pytest.approx(100.0)
    assert m.bleu(preds, [["x y z w v"], ["q r s t u"]]) == pytest.approx(0.0)
    assert m.bleu([], []) == 0.0


def test_length_mismatch_and_empty_references_raise() -> None:
    with pytest.raises(ValueError, match="2 predictions but 1"):
        m.bleu(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match="no references"):
        m.rouge(["a"], [[]])


def test_rouge_hand_worked() -> None:
    # unigrams: pred {the, cat, sat}, ref {the, cat, was, sitting}: overlap 2 -> P 2/3, R 1/2.
    # bigrams: pred {the cat, cat sat}, ref {the cat, cat was, was sitting}: overlap 1 -> P 1/2, R 1/3.
    scores = m.rouge(["the cat sat"], [["the cat was sitting"]])
    assert scores["rouge1"] == pytest.approx(100 * 4 / 7)
    assert scores["rouge2"] == pytest.approx(100 * 0.4)
    assert scores["rougeL"] == pytest.approx(100 * 4 / 7)
    # Multi-reference: the best reference counts; the average is over examples.
    two = m.rouge(["the cat sat", "dogs bark"], [["unrelated words", "the cat sat"], ["dogs bark"]])
    assert two["rouge1"] == pytest.approx(100.0)


def test_exact_match_squad_normalisation() -> None:
    assert m.exact_match(["The Eiffel tower!"], [["eiffel  tower"]]) == 100.0
    assert m.exact_match(["Paris", "London"], [["paris", "france"], ["Rome"]]) == 50.0


def test_text_generation_metrics_keys() -> None:
    out = m.text_generation_metrics(["a b c d e"], ["a b c d e"])
    assert set(out) == {"bleu", "rouge1", "rouge2", "rougeL", "exact_match"}
    assert out["exact_match"] == 100.0 and out["rouge1"] == pytest.approx(100.0)


def test_perplexity() -> None:
    assert m.perplexity(0.0) == 1.0
    assert m.perplexity(math.log(20.0)) == pytest.approx(20.0)
    assert m.perplexity(1e6) == math.inf


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Two", "2"),
        ("the dog.", "dog"),
        ("dont", "don't"),
        ("yes!", "yes"),
        ("isnt", "isn't"),
        ("1,000", "1000"),  # comma between digits: punctuation removed, not spaced
        ("2.5", "2.5"),  # a period before a digit stays
        ("black-and-white", "black and white"),
        ("A man , a plan", "man plan"),
        ("none", "0"),
    ],
)
def test_normalize_vqa_answer(raw: str, expected: str) -> None:
    assert m.normalize_vqa_answer(raw) == expected


def test_vqa_accuracy_leave_one_out() -> None:
    def answers(matches: int) -> list[str]:
        return ["dog"] * matches + ["cat"] * (10 - matches)

    # 2 matches: 8 subsets keep 2 (2/3), 2 subsets keep 1 (1/3) -> 0.6.
    assert m.vqa_question_accuracy("Dog.", answers(2)) == pytest.approx(0.6)
    # 3 matches: 7 subsets keep 3 (1.0), 3 keep 2 (2/3) -> 0.9 (the official formula).
    assert m.vqa_question_accuracy("dog", answers(3)) == pytest.approx(0.9)
    assert m.vqa_question_accuracy("dog", answers(4)) == pytest.approx(1.0)
    assert m.vqa_question_accuracy("dog", answers(10)) == pytest.approx(1.0)
    assert m.vqa_question_accuracy("bird", answers(10)) == 0.0
    # Fewer answers: the same formula over what is there; a single answer gives min(1/3, 1).
    assert m.vqa_question_accuracy("dog", ["dog", "dog", "dog"]) == pytest.approx(2 / 3)
    assert m.vqa_question_accuracy("two", ["2"]) == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        m.vqa_question_accuracy("dog", [])
    corpus = m.vqa_accuracy(["dog", "dog"], [answers(2), answers(4)])
    assert corpus == pytest.approx(100 * (0.6 + 1.0) / 2)


def test_classification_metrics_tiny_confusion() -> None:
    y_true = ["cat", "cat", "dog", "dog", "bird"]
    y_pred = ["cat", "dog", "dog", "dog", "cat"]
    out = m.classification_metrics(y_true, y_pred, ["cat", "dog", "bird"])
    assert out["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert out["accuracy"] == pytest.approx(60.0)
    cat, dog, bird = (out["per_class"][k] for k in ("cat", "dog", "bird"))
    assert (cat["precision"], cat["recall"], cat["support"]) == (50.0, 50.0, 2)
    assert dog["precision"] == pytest.approx(200 / 3) and dog["recall"] == 100.0
    assert dog["f1"] == pytest.approx(80.0)
    # bird is never predicted: zero division gives 0.0, not an error.
    assert bird == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert out["precision_macro"] == pytest.approx((50 + 200 / 3 + 0) / 3)
    assert out["f1_macro"] == pytest.approx((50 + 80 + 0) / 3)
    assert "roc_auc" not in out
    with pytest.raises(ValueError, match="not in labels"):
        m.classification_metrics(["x"], ["cat"], ["cat", "dog"])


def test_roc_auc_and_average_precision() -> None:
    labels = ["ai", "real"]
    y = ["ai", "ai", "real", "real"]
    perfect = [[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.1, 0.9]]
    out = m.classification_metrics(y, y, labels, probabilities=perfect)
    assert out["roc_auc"] == pytest.approx(100.0)
    assert out["average_precision"] == pytest.approx(100.0)
    reversed_ = [[1 - a, 1 - b] for a, b in perfect]
    assert m.classification_metrics(y, y, labels, reversed_)["roc_auc"] == pytest.approx(0.0)
    # positive_label picks the other column: the perfect ranking stays perfect.
    assert m.classification_metrics(y, y, labels, perfect, positive_label="real")[
        "roc_auc"
    ] == pytest.approx(100.0)
    # One positive ranked above one of two negatives, tie with the other: (1 + 0.5) / 2.
    tied = m.classification_metrics(
        ["ai", "real", "real"], ["ai", "ai", "real"], labels, [[0.5, 0.5], [0.5, 0.5], [0.2, 0.8]]
    )
    assert tied["roc_auc"] == pytest.approx(75.0)
    single_class = m.classification_metrics(["ai"], ["ai"], labels, [[0.7, 0.3]])
    assert single_class["roc_auc"] is None


def test_cider_hand_worked_and_ordering() -> None:
    # Two images, one-word captions: only unigrams exist, idf = log 2 for "dog" and
    # "cat". Image 1 matches (cosine 1 at n=1, 0 at n=2..4 -> 10 * 1/4 = 2.5), image 2
    # does not (0). coco-caption gives 1.25; we report x100.
    assert m.cider(["dog", "bird"], [["dog"], ["cat"]]) == pytest.approx(125.0)
    refs = [
        ["a dog runs in the park", "a dog running through a park"],
        ["a red car parked on the road"],
        ["two birds fly high in the blue sky"],
    ]
    same = m.cider([r[0] for r in refs], refs)
    unrelated = m.cider(["pizza oven hot"] * 3, refs)
    assert same > unrelated
    assert unrelated == 0.0


def test_vqa_task_reports_consensus_accuracy_only_for_annotator_sets() -> None:
    from softprompt.tasks.kinds import VisionTask, task_metrics

    task = VisionTask(type="vqa", template="Question: {question} Answer:")
    record = [{"prediction": "two"}]
    single = [VisionExample(id="1", image_path="a.png", text="how many?", target="two")]
    # One reference answer: exact match only (the VQA formula would cap a hit at 33%).
    assert task_metrics(task, single, record) == {"exact_match": 100.0}
    annotated = [
        VisionExample(
            id="1", image_path="a.png", text="how many?", references=["2"] * 2 + ["3"] * 8
        )
    ]
    got = task_metrics(task, annotated, record)
    assert got["exact_match"] == 0.0  # SQuAD normalisation keeps number words
    assert 0 < got["vqa_accuracy"] < 100
