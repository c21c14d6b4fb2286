"""Losses (Eq. 1-13) against hand values and PyTorch's reference losses; multitask balancing
(Algorithm 1) against a sequence worked out by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from emodistill.evaluation.metrics import ccc
from emodistill.methods.balancing import TaskBalancer
from emodistill.methods.losses import (
    MAX_CLASS_WEIGHT,
    ClassWeights,
    ccc_torch,
    distillation_loss,
    supervision_loss,
    training_class_weights,
)
from emodistill.tasks import PAPER_AU_POS_WEIGHT, PAPER_EXPR_WEIGHT, PAPER_TASKS, task_set, va_expectation

EQUAL = {"AU": 1.0, "EXPR": 1.0, "VA": 1.0}
UNIFORM = ClassWeights.uniform(PAPER_TASKS)


def paper_weights() -> ClassWeights:
    """The class weights the paper used on Aff-wild2 (Appendix A)."""
    return ClassWeights({"AU": np.array(PAPER_AU_POS_WEIGHT), "EXPR": np.array(PAPER_EXPR_WEIGHT)})


def with_bins(weight: float) -> ClassWeights:
    return training_class_weights(PAPER_TASKS, {}, {}, reweight=False, va_bins=weight)


def random_logits(B: int = 2, L: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {name: torch.randn(B, L, n, generator=g, dtype=torch.float64, requires_grad=True)
            for name, n in (("AU", 12), ("EXPR", 7), ("VA", 40))}


def random_labels(B: int = 2, L: int = 3, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"AU": torch.randint(0, 2, (B, L, 12), generator=g).double(),
            "EXPR": torch.randint(0, 7, (B, L), generator=g),
            "VA": torch.rand(B, L, 2, generator=g, dtype=torch.float64) * 2 - 1}


def test_class_weights_by_hand():
    # Row 4 is invalid and holds garbage that must be ignored.
    au = np.zeros((5, 12))
    au[0, 0] = 1  # AU1: 1 positive, 3 negatives -> 3
    au[:4, 2] = 1  # AU4: no negative -> floor 1/100
    au[4] = -1
    expr = np.array([0, 0, 0, 1, -1])
    masks = {"AU": np.array([1, 1, 1, 1, 0], bool), "EXPR": np.array([1, 1, 1, 1, 0], bool)}
    weights = training_class_weights(PAPER_TASKS, {"AU": au, "EXPR": expr}, masks, reweight=True).by_task
    assert weights["AU"][0] == pytest.approx(3.0)
    assert weights["AU"][1] == MAX_CLASS_WEIGHT  # never positive
    assert weights["AU"][2] == pytest.approx(1 / MAX_CLASS_WEIGHT)
    # frequencies 3/4 and 1/4 over the 2 classes seen: w = 1 / (2 f)
    np.testing.assert_allclose(weights["EXPR"][:2], [2 / 3, 2.0])
    assert (weights["EXPR"][2:] == MAX_CLASS_WEIGHT).all()
    assert np.dot([0.75, 0.25], weights["EXPR"][:2]) == pytest.approx(1.0)
    assert "VA" not in weights  # the paper's VA loss takes no weights


def test_class_weights_follow_the_task_set_and_round_trip():
    eight = training_class_weights(task_set("ABAW6"), {"EXPR": np.array([0, 7, 7, 7])}, {}, reweight=True).by_task
    assert eight["EXPR"].shape == (8,) and eight["EXPR"][7] == pytest.approx(2 / 3)
    assert (UNIFORM.by_task["AU"] == 1).all() and (UNIFORM.by_task["EXPR"] == 1).all()
    weights = paper_weights()
    back = ClassWeights.from_dict(json.loads(json.dumps(weights.as_dict())))
    np.testing.assert_array_equal(back.by_task["EXPR"], weights.by_task["EXPR"])
    # no labels at all -> weights stay 1
    assert (training_class_weights(PAPER_TASKS, {}, {}, reweight=True).by_task["AU"] == 1).all()
    # class_weights.json as runs saved it before the weights were keyed by task
    old = ClassWeights.from_dict({"au_pos_weight": [2.0] * 12, "expr_weight": [1.0] * 7, "va_bins": 0.5})
    assert old.by_task["AU"][0] == 2.0 and old.by_task["VA"].tolist() == [0.5]
    assert "VA" not in ClassWeights.from_dict({"au_pos_weight": [2.0] * 12, "expr_weight": [1.0] * 7}).by_task


def test_au_bce_hand_value():
    logits = {"AU": torch.zeros(1, 1, 12)}
    labels = {"AU": torch.tensor([[[1.0] + [0.0] * 11]])}
    weights = ClassWeights({"AU": np.full(12, 2.0), "EXPR": np.ones(7)})
    loss, per_task = supervision_loss(PAPER_TASKS, logits, labels, {}, weights, EQUAL)
    # one positive entry weighted 2, eleven negatives weighted 1, each -log(1/2); mean of 12
    assert float(loss) == pytest.approx(13 * math.log(2) / 12)
    assert per_task == {"AU": pytest.approx(13 * math.log(2) / 12)}


def test_supervision_matches_torch_references_on_valid_frames():
    logits, labels = random_logits(), random_labels()
    masks = {name: torch.tensor([[True, False, True], [True, True, False]]) for name in EQUAL}
    labels["EXPR"][~masks["EXPR"]] = -1  # invalid labels as the readers write them
    weights = paper_weights()
    _, per_task = supervision_loss(PAPER_TASKS, logits, labels, masks, weights, EQUAL)
    valid = masks["AU"]
    expected_au = F.binary_cross_entropy_with_logits(
        logits["AU"][valid], labels["AU"][valid],
        pos_weight=torch.tensor(PAPER_AU_POS_WEIGHT, dtype=torch.float64))
    expected_expr = F.cross_entropy(logits["EXPR"][valid], labels["EXPR"][valid],
                                    weight=torch.tensor(weights.by_task["EXPR"]))
    prediction = va_expectation(torch.softmax(logits["VA"][valid].unflatten(-1, (2, 20)), -1)
                                .flatten(-2)).detach().numpy()
    truth = labels["VA"][valid].numpy()
    expected_va = sum(1 - ccc(truth[:, d], prediction[:, d]) for d in range(2))
    assert per_task["AU"] == pytest.approx(expected_au.item())
    assert per_task["EXPR"] == pytest.approx(expected_expr.item())
    assert per_task["VA"] == pytest.approx(expected_va, abs=1e-6)


def test_task_weights_combine_losses():
    logits, labels = random_logits(), random_labels()
    task_weights = {"AU": 0.5, "EXPR": 0.2, "VA": 0.3}
    loss, per_task = supervision_loss(PAPER_TASKS, logits, labels, {}, UNIFORM, task_weights)
    assert loss.item() == pytest.approx(sum(task_weights[k] * v for k, v in per_task.items()))
    loss.backward()
    assert all(torch.isfinite(t.grad).all() for t in logits.values())


def test_absent_tasks_contribute_zero():
    logits, labels = random_logits(), random_labels()
    del labels["EXPR"]
    masks = {"VA": torch.zeros(2, 3, dtype=torch.bool)}
    loss, per_task = supervision_loss(PAPER_TASKS, logits, labels, masks, UNIFORM, EQUAL)
    assert set(per_task) == {"AU"}
    assert loss.item() == pytest.approx(per_task["AU"])
    # nothing valid at all: zero, finite, and backward still works
    loss, per_task = supervision_loss(PAPER_TASKS, logits, {}, {}, UNIFORM, EQUAL)
    assert per_task == {} and loss.item() == 0.0
    loss.backward()
    assert all((t.grad == 0).all() for t in logits.values())


def test_missing_task_weight_is_an_error():
    with pytest.raises(ValueError, match="EXPR"):
        supervision_loss(PAPER_TASKS, random_logits(), random_labels(), {}, UNIFORM,
                         {"AU": 1.0, "VA": 1.0})


@pytest.mark.parametrize("constant", ["prediction", "target", "both"])
def test_ccc_torch_constant_inputs_are_finite(constant):
    target = torch.linspace(-1, 1, 6, dtype=torch.float64).unsqueeze(1)
    prediction = (torch.linspace(-0.5, 0.7, 6, dtype=torch.float64) ** 2).unsqueeze(1)
    if constant in ("target", "both"):
        target = torch.full((6, 1), 0.3, dtype=torch.float64)
    if constant in ("prediction", "both"):
        prediction = torch.full((6, 1), 0.3, dtype=torch.float64)
    prediction.requires_grad_(True)
    value = ccc_torch(target, prediction)
    value.sum().backward()
    assert torch.isfinite(value).all() and torch.isfinite(prediction.grad).all()
    assert value.item() == pytest.approx(0.0, abs=1e-6)


def test_ccc_torch_matches_hand_value():
    target = torch.tensor([[1.0], [2.0], [3.0]], dtype=torch.float64)
    prediction = torch.tensor([[2.0], [4.0], [6.0]], dtype=torch.float64)
    # cov 4/3, var 2/3 and 8/3, mean gap 2: 2 (4/3) / (2/3 + 8/3 + 4) = 8/22
    assert float(ccc_torch(target, prediction)) == pytest.approx(8 / 22)


def test_va_loss_with_one_valid_frame_is_finite():
    logits = random_logits()
    masks = {"VA": torch.tensor([[True, False, False], [False, False, False]])}
    loss, per_task = supervision_loss(PAPER_TASKS, logits, random_labels(), masks, UNIFORM,
                                      {"VA": 1.0, "AU": 1.0, "EXPR": 1.0})
    loss.backward()
    assert per_task["VA"] == pytest.approx(2.0)  # CCC 0 per dimension
    assert torch.isfinite(logits["VA"].grad).all()


def test_distillation_matches_torch_references():
    student, teacher_logits = random_logits(seed=3), random_logits(seed=4)
    soft = {"AU": torch.sigmoid(teacher_logits["AU"]).detach(),
            "EXPR": torch.softmax(teacher_logits["EXPR"], -1).detach(),
            "VA": torch.softmax(teacher_logits["VA"].unflatten(-1, (2, 20)), -1)
            .flatten(-2).detach()}
    weights = paper_weights()
    _, per_task = distillation_loss(PAPER_TASKS, student, soft, None, weights, EQUAL)
    expected_au = F.binary_cross_entropy_with_logits(
        student["AU"], soft["AU"], pos_weight=torch.tensor(PAPER_AU_POS_WEIGHT).double())
    expected_kl = F.kl_div(torch.log_softmax(student["EXPR"].flatten(0, 1), -1),
                           soft["EXPR"].flatten(0, 1), reduction="batchmean")
    student_va = va_expectation(torch.softmax(student["VA"].unflatten(-1, (2, 20)), -1)
                                .flatten(-2)).detach().reshape(-1, 2).numpy()
    teacher_va = va_expectation(soft["VA"]).reshape(-1, 2).numpy()
    expected_va = sum(1 - ccc(teacher_va[:, d], student_va[:, d]) for d in range(2))
    assert per_task["AU"] == pytest.approx(expected_au.item())
    assert per_task["EXPR"] == pytest.approx(expected_kl.item())
    assert per_task["VA"] == pytest.approx(expected_va, abs=1e-6)


def test_distillation_from_itself_has_zero_kl_and_ccc_loss():
    logits = random_logits()
    soft = {"EXPR": torch.softmax(logits["EXPR"], -1).detach(),
            "VA": torch.softmax(logits["VA"].unflatten(-1, (2, 20)), -1).flatten(-2).detach()}
    soft["EXPR"][0, 0] = float("nan")  # a masked-out frame must not reach the loss
    masks = {"EXPR": torch.tensor([[False, True, True], [True, True, True]])}
    _, per_task = distillation_loss(PAPER_TASKS, logits, soft, masks, UNIFORM, EQUAL)
    assert per_task["EXPR"] == pytest.approx(0.0, abs=1e-12)
    assert per_task["VA"] == pytest.approx(0.0, abs=1e-6)


def test_va_bins_add_cross_entropy_and_kl_to_the_ccc_loss():
    logits, labels = random_logits(seed=5), random_labels(seed=6)
    teacher = torch.softmax(random_logits(seed=7)["VA"].unflatten(-1, (2, 20)), -1).flatten(-2).detach()
    paper, binned_weights = UNIFORM, with_bins(0.5)
    _, plain = supervision_loss(PAPER_TASKS, logits, labels, {}, paper, EQUAL)
    _, binned = supervision_loss(PAPER_TASKS, logits, labels, {}, binned_weights, EQUAL)
    values = labels["VA"].reshape(-1, 2)
    log_probs = torch.log_softmax(logits["VA"].reshape(-1, 2, 20), -1)
    index = torch.as_tensor(np.clip(np.floor((values.numpy() + 1) * 10), 0, 19)).long()  # the label's bin
    cross_entropy = sum(F.nll_loss(log_probs[:, d], index[:, d]) for d in range(2))
    assert binned["VA"] == pytest.approx(plain["VA"] + 0.5 * cross_entropy.item())
    assert binned["AU"] == plain["AU"] and binned["EXPR"] == plain["EXPR"]  # VA only
    _, plain = distillation_loss(PAPER_TASKS, logits, {"VA": teacher}, None, paper, EQUAL)
    _, binned = distillation_loss(PAPER_TASKS, logits, {"VA": teacher}, None, binned_weights, EQUAL)
    kl = sum(F.kl_div(log_probs[:, d], teacher.reshape(-1, 2, 20)[:, d], reduction="batchmean") for d in range(2))
    assert binned["VA"] == pytest.approx(plain["VA"] + 0.5 * kl.item())


def test_va_bins_learn_the_shape_that_ccc_leaves_free():
    # Two frames with targets -0.55 and +0.45: 1 - CCC is already 0 for any prediction whose
    # expectations are exact, whatever the spread of the bins; the bins' loss narrows it.
    targets = torch.tensor([[-0.55, -0.55], [0.45, 0.45]], dtype=torch.float64)
    wide = torch.zeros(2, 40, dtype=torch.float64)
    for row, centre in enumerate((4, 14)):  # mass spread evenly over 3 bins around the label's
        for d in range(2):
            wide[row, d * 20 + centre - 1 : d * 20 + centre + 2] = 1.0
    narrow = torch.where(wide > 0, torch.tensor(-10.0, dtype=torch.float64), torch.tensor(-30.0, dtype=torch.float64))
    for row, centre in enumerate((4, 14)):
        narrow[row, [centre, 20 + centre]] = 0.0
    wide = torch.where(wide > 0, 0.0, -30.0).double()
    weights = with_bins(1.0)
    losses = {}
    for name, logits in (("wide", wide), ("narrow", narrow)):
        paper, _ = supervision_loss(PAPER_TASKS, {"VA": logits[None]}, {"VA": targets[None]}, {}, UNIFORM, EQUAL)
        both, _ = supervision_loss(PAPER_TASKS, {"VA": logits[None]}, {"VA": targets[None]}, {}, weights, EQUAL)
        assert float(paper) == pytest.approx(0.0, abs=1e-6)
        losses[name] = float(both)
    assert losses["narrow"] < 0.01 < losses["wide"]


def test_kl_with_one_hot_teacher_is_cross_entropy():
    logits = {"EXPR": torch.tensor([[[2.0, 0.0, -1.0, 0.5, 0.0, 0.0, 1.0]]])}
    soft = {"EXPR": torch.tensor([[[1.0, 0, 0, 0, 0, 0, 0]]])}
    _, per_task = distillation_loss(PAPER_TASKS, logits, soft, None, UNIFORM, EQUAL)
    expected = -torch.log_softmax(logits["EXPR"][0, 0], -1)[0]  # 0 log 0 terms vanish
    assert per_task["EXPR"] == pytest.approx(expected.item())


def test_balancer_follows_algorithm_1_by_hand():
    balancer = TaskBalancer(["AU", "EXPR", "VA"])
    assert balancer.weights == pytest.approx({"AU": 1 / 3, "EXPR": 1 / 3, "VA": 1 / 3})
    # epoch 1: first scores always improve -> m = 1, 1, 1
    assert balancer.update({"AU": 0.5, "EXPR": 0.4, "VA": 0.3}) == pytest.approx(
        {"AU": 1 / 3, "EXPR": 1 / 3, "VA": 1 / 3})
    # epoch 2: AU improves, EXPR ties (no improvement), VA drops -> m = 1, 2, 2 -> 1, 1, 1
    balancer.update({"AU": 0.6, "EXPR": 0.4, "VA": 0.2})
    assert balancer.stalled == {"AU": 1, "EXPR": 2, "VA": 2}
    # epoch 3: only VA improves over its best 0.3 -> m = 2, 3, 1 -> 1, log2 3, 1
    weights = balancer.update({"AU": 0.55, "EXPR": 0.3, "VA": 0.35})
    total = 2 + math.log2(3)
    assert weights == pytest.approx({"AU": 1 / total, "EXPR": math.log2(3) / total,
                                     "VA": 1 / total})
    # epoch 4: nothing improves -> m = 3, 4, 2 -> log2 3, 2, 1
    state = json.loads(json.dumps(balancer.state_dict()))
    weights = balancer.update({"AU": 0.0, "EXPR": 0.0, "VA": 0.0})
    total = math.log2(3) + 3
    assert weights == pytest.approx({"AU": math.log2(3) / total, "EXPR": 2 / total,
                                     "VA": 1 / total})
    # resuming from the saved state repeats epoch 4 exactly
    resumed = TaskBalancer(["AU", "EXPR", "VA"])
    resumed.load_state_dict(state)
    assert resumed.update({"AU": 0.0, "EXPR": 0.0, "VA": 0.0}) == weights


def test_fixed_balancer_and_errors():
    balancer = TaskBalancer(["AU", "EXPR"], fixed=True)
    for _ in range(4):
        assert balancer.update({"AU": 0.0, "EXPR": 0.0}) == {"AU": 0.5, "EXPR": 0.5}
    with pytest.raises(ValueError, match="VA"):
        balancer.update({"AU": 1.0, "VA": 1.0})


def test_balancer_task_without_a_score_keeps_its_count():
    balancer = TaskBalancer(["AU", "EXPR"])
    balancer.update({"AU": 0.5, "EXPR": 0.5})
    balancer.update({"AU": 0.4, "EXPR": 0.4})  # m = 2, 2
    weights = balancer.update({"AU": 0.3})  # AU m = 3, EXPR stays 2
    assert balancer.stalled == {"AU": 3, "EXPR": 2}
    total = math.log2(3) + 1
    assert weights == pytest.approx({"AU": math.log2(3) / total, "EXPR": 1 / total})


def test_balancer_load_rejects_other_tasks():
    balancer = TaskBalancer(["AU", "EXPR"])
    with pytest.raises(ValueError, match="tasks"):
        TaskBalancer(["AU"]).load_state_dict(balancer.state_dict())
