"""Self-supervised methods: each loss against a value worked out by hand, and 20 optimisation
steps of each method on tiny data lower it."""

from __future__ import annotations

import copy
import math
import re

import gin
import pytest
import torch

from conftest import TINY
from selfstudy.tasks.amdim import AMDIMTask, amdim_nce
from selfstudy.tasks.barlow import BarlowTwinsTask, barlow_loss
from selfstudy.config import split_binding
from selfstudy.data import Batch
from selfstudy import notes
from selfstudy.errors import UserError
from selfstudy.models import ResNet, Wrapper
from selfstudy.tasks.byol import BYOLTask, byol_loss, ema_momentum
from selfstudy.tasks.cmc import CMCTask, memory_bank_nce, split_lab
from selfstudy.tasks.dino import DINOHead, DINOTask, dino_loss, teacher_temperature
from selfstudy.tasks.moco import MoCoTask, moco_loss, momentum_update, shuffled_encode, split_encode
from selfstudy.tasks.mocov3 import MoCoV3Task, mocov3_loss
from selfstudy.tasks.rotate import rotate_batch, rotation_loss
from selfstudy.tasks.simclr import SimCLRTask, nt_xent
from selfstudy.tasks.simsiam import SimSiamTask, simsiam_loss
from selfstudy.tasks.vae import VAETask, erase_squares, gaussian_kl, vae_loss
from selfstudy.tasks.vicreg import VICRegTask, vicreg_loss
from selfstudy.trial import Trial


@pytest.mark.parametrize("task, setting, value, says", [
    (SimCLRTask, "temperature", 0, "a finite number above 0"),
    (SimCLRTask, "proj_dim", 0, "a whole number, at least 1"),
    (BYOLTask, "base_momentum", 1.5, "in [0, 1]"), (BYOLTask, "proj_hidden", 64.0, "a whole number"),
    (MoCoTask, "temperature", -0.2, "above 0"), (MoCoTask, "momentum", True, "in [0, 1]"),
    (MoCoTask, "queue_size", 0, "at least 1"), (CMCTask, "bank_momentum", -1, "in [0, 1]"),
    (CMCTask, "negatives", "many", "a whole number"), (AMDIMTask, "reg", -0.1, "at least 0"),
    (AMDIMTask, "scales", 0, "at least 1"), (VAETask, "erase", 2.5, "a whole number, at least 0"),
    (VAETask, "latent", 0, "at least 1"), (SimCLRTask, "temperature", math.inf, "a finite number above 0"),
    (AMDIMTask, "tclip", math.nan, "a finite number above 0"), (BarlowTwinsTask, "off_diagonal", -1, "at least 0"),
    (VICRegTask, "variance", math.inf, "at least 0"), (SimSiamTask, "pred_hidden", 0, "at least 1"),
    (MoCoV3Task, "temperature", 0.0, "above 0"), (MoCoV3Task, "base_momentum", 1.01, "in [0, 1]"),
    (DINOTask, "student_temp", 0, "above 0"), (DINOTask, "teacher_warmup", 1.5, "in [0, 1]"),
    (DINOTask, "out_dim", 0, "at least 1"), (DINOTask, "center_momentum", -0.1, "in [0, 1]")])
def test_method_settings_out_of_range_are_refused(task: type, setting: str, value: object, says: str) -> None:
    task()  # the defaults pass
    expected = rf"{task.__name__}\.{setting} = {re.escape(repr(value))} must be .*{re.escape(says)}"
    with pytest.raises(UserError, match=expected):
        task(**{setting: value})


def test_method_settings_at_the_ends_of_their_ranges_are_taken() -> None:
    MoCoTask(momentum=0.0), MoCoTask(momentum=1.0), BYOLTask(base_momentum=1), CMCTask(bank_momentum=0)
    AMDIMTask(reg=0), VAETask(erase=0, lmd=0), SimCLRTask(temperature=1e-3, proj_dim=1, proj_hidden=1)
    BarlowTwinsTask(off_diagonal=0), VICRegTask(invariance=0, variance=0, covariance=0), SimSiamTask(pred_hidden=1)
    MoCoV3Task(base_momentum=0), MoCoV3Task(base_momentum=1), DINOTask(teacher_warmup=0, center_momentum=1, layers=1)


def test_rotations_and_their_labels() -> None:
    images = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    turned, labels = rotate_batch(images)
    assert labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    for k in range(4):
        assert torch.equal(turned[2 * k: 2 * k + 2], torch.rot90(images, k, dims=(2, 3)))
    assert torch.equal(torch.rot90(turned[2], 3, dims=(1, 2)), images[0])  # label 1 undone by three more turns
    loss, accuracy = rotation_loss(torch.zeros(8, 4), labels)
    assert loss.item() == pytest.approx(math.log(4))  # uniform logits


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_nt_xent_of_identical_orthogonal_embeddings(temperature: float) -> None:
    b = 4
    z = torch.eye(8)[:b] * 3.0  # orthogonal rows, any length: cosines are 1 with the partner, 0 otherwise
    expected = math.log(1 + (2 * b - 2) * math.exp(-1 / temperature))
    assert nt_xent(z, z.clone(), temperature).item() == pytest.approx(expected, rel=1e-3)
    # partners orthogonal to each other and to everyone: every logit 0, 2B - 1 candidates
    assert nt_xent(torch.eye(8)[:b], torch.eye(8)[b:], temperature).item() == pytest.approx(math.log(2 * b - 1))


def test_moco_loss_of_a_matching_key_and_orthogonal_queue() -> None:
    q = torch.eye(6)[:2]
    queue = torch.eye(6)[2:]  # K = 4 negatives, orthogonal to the queries
    assert moco_loss(q, q, queue, 0.2).item() == pytest.approx(math.log(1 + 4 * math.exp(-1 / 0.2)), rel=1e-3)
    assert moco_loss(q, -q, queue, 1.0).item() == pytest.approx(math.log(1 + 4 * math.exp(1.0)), rel=1e-5)


def test_mocov3_loss_by_hand() -> None:
    """B = 2, D = 2, T = 1. q normalises to the identity; k = [[1, 1], [1, -1]] to rows of 1/sqrt(2):
    logits [[a, a], [a, -a]] with a = 1/sqrt(2). Row 1 (target 0): two equal logits, ln 2; row 2
    (target 1): -(-a) + ln(e^a + e^-a) = ln(1 + e^(2a)) = ln(1 + e^sqrt(2)). Mean, times 2T = 2."""
    q = torch.tensor([[3.0, 0.0], [0.0, 2.0]])
    k = torch.tensor([[1.0, 1.0], [1.0, -1.0]])
    expected = 2 * (math.log(2) + math.log(1 + math.exp(math.sqrt(2)))) / 2
    assert mocov3_loss(q, k, 1.0).item() == pytest.approx(expected, rel=1e-6)
    # keys equal to the queries at T = 0.5: logits 2 on the diagonal, 0 off it: 2T ln(1 + e^-2) per row
    assert mocov3_loss(q, q, 0.5).item() == pytest.approx(math.log(1 + math.exp(-2)), rel=1e-6)


def test_dino_loss_by_hand() -> None:
    """B = 2, K = 2; teacher temperature 0.5 with centre [1, 0], student temperature 1. Teacher:
    global view 1 centres to [0, 0] (distribution [1/2, 1/2]); view 2 to [ln 3, 0] / [0, ln 3] after
    sharpening ([3/4, 1/4] / [1/4, 3/4]). Student: views 1 and 3 (local) [0, 0] (log 1/2 each),
    view 2 [ln 3, 0] (log 3/4, log 1/4). Pairs: teacher 1 x student 2: -(ln 3/4 + ln 1/4) / 2 =
    ln(16/3) / 2; teacher 1 x student 3, teacher 2 x students 1 and 3: ln 2 each (a uniform
    student). Mean of the four; teacher 2 x student 2 is the same view and left out."""
    ln3, t = math.log(3), 0.5
    center = torch.tensor([[1.0, 0.0]])
    teacher = [torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([[1 + t * ln3, 0.0], [1.0, t * ln3]])]
    student = [torch.zeros(2, 2), torch.tensor([[ln3, 0.0], [ln3, 0.0]]), torch.zeros(2, 2)]
    expected = (math.log(16 / 3) / 2 + 3 * math.log(2)) / 4
    assert dino_loss(student, teacher, center, 1.0, t).item() == pytest.approx(expected, rel=1e-6)
    globals_only = (math.log(16 / 3) / 2 + math.log(2)) / 2  # no local view: two pairs
    assert dino_loss(student[:2], teacher, center, 1.0, torch.tensor(t)).item() == pytest.approx(globals_only, rel=1e-6)
    teacher = [x.requires_grad_() for x in teacher]
    dino_loss([x.requires_grad_() for x in student], teacher, center, 1.0, t).backward()
    assert all(x.grad is None for x in teacher)  # the teacher gets no gradient


def test_dino_head_and_teacher_temperature() -> None:
    head = DINOHead(5, 7, hidden=6, bottleneck=3)
    assert len(DINOHead(5, 7, 6, 3, batch_norm=True).mlp) == len(head.mlp) + 2  # after each hidden layer
    x = torch.randn(4, 5)
    logits = head(x)
    assert logits.shape == (4, 7) and logits.abs().max() <= 1 + 1e-6  # cosines
    with torch.no_grad():
        head.last.mul_(torch.arange(1.0, 8.0)[:, None])  # rescaled rows: the same (normalised) last layer
    assert torch.allclose(head(x), logits, atol=1e-6)
    frozen = head(x, gate=torch.tensor(0.0))
    assert torch.equal(frozen, head(x))  # the gate changes the gradient, not the value ...
    frozen.sum().backward()
    assert torch.equal(head.last.grad, torch.zeros_like(head.last)) and head.mlp[0].weight.grad.abs().sum() > 0
    assert [teacher_temperature(s, 10, 0.04, 0.07, 0.3) for s in (0, 1, 2, 3, 9)] == \
        pytest.approx([0.04, 0.05, 0.06, 0.07, 0.07])
    assert teacher_temperature(0, 10, 0.04, 0.07, 0.0) == 0.07  # no warmup


def test_memory_bank_nce_and_lab_views() -> None:
    z = torch.eye(6)[:2]
    negatives = torch.eye(6)[2:].expand(2, 4, 6)  # K = 4 orthogonal negatives per row
    assert memory_bank_nce(z, z, negatives, 0.1).item() == pytest.approx(math.log(1 + 4 * math.exp(-10)), rel=1e-3)
    assert memory_bank_nce(z, torch.eye(6)[4:], negatives, 1.0).item() == pytest.approx(math.log(5))
    images = torch.randn(2, 3, 4, 4)
    l_view, ab_view = split_lab(images)
    assert torch.equal(l_view[:, 0], images[:, 0]) and (l_view[:, 1:] == 0).all()
    assert torch.equal(ab_view[:, 1:], images[:, 1:]) and (ab_view[:, 0] == 0).all()


def test_amdim_nce_of_uninformative_and_matching_scores() -> None:
    b, e, n = 3, 4, 5
    zeros = amdim_nce(torch.zeros(b, e), torch.randn(b, e, n), tclip=20.0)
    assert zeros.item() == pytest.approx(math.log(1 + (b - 1) * n))  # every score 0: 1 positive among (B-1)N + 1
    g = torch.eye(e)[:b] * 50  # each image's local features point along its own global one
    local = torch.eye(e)[:b, :, None].expand(b, e, n) * 50
    clipped = 5.0  # scores 50 * 50 / sqrt(4) = 1250, clipped to ~5; others 0
    expected = math.log(1 + (b - 1) * n * math.exp(-clipped))
    assert amdim_nce(g, local, tclip=clipped, reg=0.0).item() == pytest.approx(expected, rel=1e-3)


def test_amdim_nce_adds_the_penalty_on_raw_scores() -> None:
    """B = 2, E = 1, N = 1: raw scores g_b l_c = [[3, 1], [6, 2]]; penalty 0.05 x mean(9, 1, 36, 4)
    on the raw scores, the NCE on the clipped ones."""
    g, local = torch.tensor([[1.0], [2.0]]), torch.tensor([[[3.0]], [[1.0]]])
    clip = lambda x: 4.0 * math.tanh(x / 4.0)  # noqa: E731
    nce = (math.log(math.exp(clip(3)) + math.exp(clip(1))) - clip(3)
           + math.log(math.exp(clip(2)) + math.exp(clip(6))) - clip(2)) / 2
    assert amdim_nce(g, local, tclip=4.0, reg=0.0).item() == pytest.approx(nce, rel=1e-6)
    assert amdim_nce(g, local, tclip=4.0).item() == pytest.approx(nce + 0.05 * 12.5, rel=1e-6)


def test_byol_loss_and_momentum() -> None:
    x = torch.randn(5, 8)
    assert byol_loss(x, 2 * x).item() == pytest.approx(0.0, abs=1e-6)
    assert byol_loss(torch.eye(4)[:2], torch.eye(4)[2:]).item() == pytest.approx(2.0)
    assert byol_loss(x, -x).item() == pytest.approx(4.0)
    assert ema_momentum(0.99, 0, 100) == pytest.approx(0.99) and ema_momentum(0.99, 100, 100) == pytest.approx(1.0)
    target, online = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    expected = 0.9 * target.weight.detach() + 0.1 * online.weight.detach()
    momentum_update(target, online, 0.9)
    assert torch.allclose(target.weight, expected)


def test_barlow_twins_loss_by_hand() -> None:
    """B = 2, D = 2: each standardised column is (+1, -1) or (-1, +1), so C is +-1 by hand."""
    z1 = torch.tensor([[1.0, 3.0], [3.0, 1.0]])  # columns standardise to (-1, 1) and (1, -1)
    same = barlow_loss(z1, z1, off_diagonal=0.5)  # C = [[1, -1], [-1, 1]]: diagonal 1, off-diagonal (-1)^2 twice
    assert same.item() == pytest.approx(0.5 * 2, abs=1e-4)
    swapped = barlow_loss(z1, z1.flip(1), off_diagonal=0.0)  # C = [[-1, 1], [1, -1]]: (1 - -1)^2 twice
    assert swapped.item() == pytest.approx(8.0, abs=1e-3)


def test_vicreg_loss_by_hand() -> None:
    """z = [[0, 0], [2, 2]]: variance 2 per column (std 1.414: no hinge), covariance 2 off the
    diagonal (2^2 * 2 / D = 4 per branch); identical views: no invariance term."""
    z = torch.tensor([[0.0, 0.0], [2.0, 2.0]])
    assert vicreg_loss(z, z, 25, 25, 1).item() == pytest.approx(8.0, abs=1e-4)
    flat = torch.zeros(2, 2)  # no spread: the hinge is 1 - sqrt(1e-4) = 0.99 per column, no covariance
    assert vicreg_loss(flat, flat + 1, 1, 1, 1).item() == pytest.approx(1.0 + 0.99, abs=1e-4)


def test_simsiam_loss_and_its_stopped_gradient() -> None:
    p = torch.tensor([[1.0, 0.0], [0.0, 2.0]], requires_grad=True)
    z = torch.tensor([[3.0, 0.0], [0.0, 1.0]], requires_grad=True)
    assert simsiam_loss(p, p, z, z).item() == pytest.approx(-1.0)  # aligned: cos 1
    assert simsiam_loss(p, p, z.flip(1), z.flip(1)).item() == pytest.approx(0.0, abs=1e-6)  # orthogonal
    simsiam_loss(p, p, z, z).backward()
    assert z.grad is None and p.grad is not None  # the projections' gradient is stopped


def test_momentum_update_averages_parameters_and_copies_buffers() -> None:
    target, online = torch.nn.BatchNorm1d(3), torch.nn.BatchNorm1d(3)
    online.train()(torch.randn(8, 3) * 2 + 1)  # online running statistics move away from the target's
    with torch.no_grad():
        online.weight.fill_(3.0)
    momentum_update(target, online, 0.9)
    assert torch.allclose(target.weight, torch.full((3,), 0.9 * 1.0 + 0.1 * 3.0))
    assert torch.equal(target.running_mean, online.running_mean) and torch.equal(target.running_var, online.running_var)
    assert target.num_batches_tracked.item() == 1


def test_shuffle_bn_encodes_keys_in_random_sub_batches_and_restores_their_order() -> None:
    torch.manual_seed(0)
    backbone = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(1))
    projector = torch.nn.Sequential(torch.nn.Linear(4 * 4 * 4, 6), torch.nn.BatchNorm1d(6))
    images = torch.randn(12, 3, 6, 6)
    encoders = (backbone, projector)
    backbone.eval(), projector.eval()  # running statistics: the order and the split do not matter
    whole = projector(backbone(images))
    assert torch.allclose(shuffled_encode(encoders, images, 3, torch.Generator().manual_seed(1)), whole, atol=1e-6)
    backbone.train(), projector.train()  # batch statistics of each sub-batch
    keys = shuffled_encode(encoders, images, 3, torch.Generator().manual_seed(1))
    order = torch.randperm(12, generator=torch.Generator().manual_seed(1))
    for group in order.chunk(3):  # image i's key is its own sub-batch's encoding, in the batch's order
        assert torch.allclose(keys[group], projector(backbone(images[group])), atol=1e-5)
    assert not torch.allclose(keys, projector(backbone(images)), atol=1e-3)  # not the whole batch's statistics
    features, queries = split_encode(encoders, images, 3)  # queries: consecutive sub-batches
    assert torch.allclose(queries[4:8], projector(backbone(images[4:8])), atol=1e-5)
    assert torch.allclose(features[:4], backbone(images[:4]), atol=1e-6)
    with pytest.raises(UserError, match="MoCoTask.bn_splits = 1 must be an integer >= 2"):
        MoCoTask(bn_splits=1)


def test_vae_terms() -> None:
    zeros = torch.zeros(3, 4)
    assert gaussian_kl(zeros, zeros).tolist() == [0.0, 0.0, 0.0]  # the prior itself
    assert gaussian_kl(torch.ones(1, 4), torch.zeros(1, 4)).item() == pytest.approx(2.0)  # 4 dims x mu^2 / 2
    sigma2 = 2.0  # unit mean shift aside, KL of a wider Gaussian: (sigma^2 - 1 - log sigma^2) / 2 per dim
    assert gaussian_kl(torch.zeros(1, 1), torch.full((1, 1), math.log(sigma2))).item() == \
        pytest.approx((sigma2 - 1 - math.log(sigma2)) / 2)
    x = torch.randn(2, 3, 4, 4)
    loss, error, kl = vae_loss(x, x, zeros[:2], zeros[:2], lmd=0.5)
    assert loss.item() == error.item() == kl.item() == 0.0
    assert vae_loss(x + 1, x, torch.ones(2, 4), zeros[:2], lmd=0.5)[0].item() == pytest.approx(1 + 0.5 * 2)
    erased = erase_squares(torch.ones(8, 3, 10, 10), 4)
    assert ((erased[:, 0] == 0).sum(dim=(1, 2)) == 16).all() and torch.equal(erased[:, 0] == 0, erased[:, 2] == 0)


LEARNING_RATES = {"amdim": 0.3}  # its clipped scores start flat and move slowly at 0.02
STEPS = {"amdim": 60}  # ... and still slowly at 0.3
EXTRA = {"moco": ["MoCoTask.momentum = 0.9"]}  # within 20 steps a 0.99 key encoder barely follows the queries
# DINO's loss is the teacher's entropy plus the student's distance from it: the student's part goes down
# against a teacher held still (momentum 1, centre and temperature fixed), sharp enough that its entropy is small
EXTRA["dino"] = ["DINOTask.base_momentum = 1.0", "DINOTask.center_momentum = 1.0", "DINOTask.teacher_warmup = 0.0",
                 "DINOTask.teacher_temp = 0.01"]


def ssl_trial(name: str, *extra: str) -> Trial:
    bindings = [*TINY, "BaseDataset.semisupervised = 64", *extra]
    return Trial({"gin_config": [f"digits/r9/{name}"], "seed": 0,
                  "gin_params": dict(split_binding(b) for b in bindings)})


@pytest.mark.parametrize("name", ["rotate", "simclr", "moco", "byol", "vae", "cmc", "amdim", "barlow", "vicreg",
                                  "simsiam", "mocov3", "dino"])
def test_twenty_steps_lower_the_loss(workspace, name: str) -> None:
    lr = LEARNING_RATES.get(name, 0.02)
    trial = ssl_trial(name, f"optimizer.lr = {lr}", "MoCoTask.queue_size = 48", *EXTRA.get(name, []))
    steps = STEPS.get(name, 20)
    batch = trial.prep(next(trial.splits["train"].batches(32, 1, shuffle=(0, 1))), "train")
    start_state = copy.deepcopy(trial.task.state_dict())

    def objective() -> float:  # the method's own loss on the batch (batch statistics), against the starting queue
        trial.model.train(), trial.task.train()
        with torch.no_grad():
            kept = {key: trial.task.state_dict()[key].clone() for key in ("queue", "bank_l", "bank_ab")
                    if key in start_state}  # measure against the starting queue or banks
            for key in kept:
                getattr(trial.task, key).copy_(start_state[key])
            torch.manual_seed(0)  # the same negatives drawn from a bank
            value = trial.task.objective(trial.model, batch)[0].item()
            for key, tensor in kept.items():
                getattr(trial.task, key).copy_(tensor)
        return value

    before = objective()
    for step in range(steps):
        trial.model.train(), trial.task.train()
        loss, metrics = trial.task.loss(trial.model, batch)
        trial.opt.optimizer.zero_grad()
        loss.backward()
        for group in trial.opt.optimizer.param_groups:
            group["lr"] = lr
        trial.opt.optimizer.step()
        trial.task.after_step(trial.model, step, steps)
        assert {"loss", "accuracy", "mlp_accuracy"} <= set(metrics)
    assert objective() < before * 0.95, (name, before, objective())
    trial.close()


def test_dino_teacher_sees_the_global_views_and_the_student_every_view(workspace) -> None:
    trial = ssl_trial("dino", "augment.local_crops = 2")
    batch = trial.prep(next(trial.splits["train"].batches(8, 1, shuffle=(0, 1))), "train")
    seen: dict[str, list[tuple[int, ...]]] = {"student": [], "teacher": []}
    for name, module in (("student", trial.model.backbone), ("teacher", trial.task.teacher_backbone)):
        module.register_forward_hook(lambda m, args, out, name=name: seen[name].append(tuple(args[0].shape)))
    trial.task.train()
    trial.task.objective(trial.model, batch)
    assert seen["teacher"] == [(16, batch.images.shape[1], 32, 32)]  # the 2 x 8 global views, in one pass
    assert [shape[-1] for shape in seen["student"]] == [32, 16] and seen["student"][1][0] == 2 * 8
    center = trial.task.center.clone()
    assert center.abs().sum() > 0  # a training pass moves the centre ...
    trial.task.eval()
    trial.task.objective(trial.model, batch)
    assert torch.equal(center, trial.task.center)  # ... an evaluation does not
    trial.task.after_step(trial.model, 2, 10)  # the next step's temperature: step 3 of 10, warm after 3
    assert trial.task.temperature.item() == pytest.approx(0.07)
    trial.task.freeze_last = 0.5  # ... and the last layer's gate: frozen over steps 0-4 of 10
    assert [trial.task.after_step(trial.model, s, 10) or trial.task.last_gate.item() for s in (3, 4)] == [0.0, 1.0]
    trial.close()


def test_finetune_selfsup_false_trains_the_heads_on_a_frozen_backbone(workspace) -> None:
    trial = ssl_trial("rotate", "Wrapper.finetune_selfsup = False", "session.train_iters = 3")
    backbone = copy.deepcopy(trial.model.backbone.state_dict())
    head = trial.task.head.weight.detach().clone()
    trial.run_epoch()
    assert all(torch.equal(v, trial.model.backbone.state_dict()[k]) for k, v in backbone.items())  # BN stats too
    assert not torch.equal(head, trial.task.head.weight)
    trial.close()
    gin.clear_config()  # the trial's bindings (run_selfsup) would reach Wrapper
    supervised = Wrapper(ResNet("resnet9", width=4), num_classes=3, finetune_selfsup=False)  # 2020: harmless
    assert any("finetune_selfsup = False has no job without Wrapper.run_selfsup" in n for n in notes.seen())
    assert not supervised.always_frozen


def test_warmup_freezes_a_backbone_that_the_task_calls_itself(workspace) -> None:
    """RotateTask calls model.backbone directly (its head is its own): during Wrapper.warmup_fc
    the backbone's weights and BatchNorm statistics stay, while the task's head learns."""
    trial = ssl_trial("rotate", "Wrapper.warmup_fc = 3", "session.train_iters = 3")
    backbone = copy.deepcopy(trial.model.backbone.state_dict())
    head = trial.task.head.weight.detach().clone()
    trial.run_epoch()  # steps 0, 1, 2: all in the warmup
    assert all(torch.equal(v, trial.model.backbone.state_dict()[k]) for k, v in backbone.items())
    assert not torch.equal(head, trial.task.head.weight)
    trial.run_epoch()  # steps 3, 4, 5: the backbone trains
    assert not torch.equal(backbone["prep.0.weight"], trial.model.backbone.state_dict()["prep.0.weight"])
    trial.close()


def test_cmc_evaluates_an_image_against_its_own_other_view(workspace) -> None:
    """The bank has rows of training images only: in training an image's positive is its bank row,
    in evaluation the other view of the image itself, so a validation index names no bank row."""
    trial = ssl_trial("cmc")
    batch = trial.prep(next(trial.splits["valid"].batches(16, 1)), "valid")
    moved = batch._replace(index=batch.index + 1)

    def loss(training: bool, indexed: Batch) -> float:
        trial.model.train(training), trial.task.train(training)
        torch.manual_seed(0)  # the same negatives
        with torch.no_grad():
            return trial.task.objective(trial.model, indexed)[0].item()

    trial.task.bank_l.copy_(torch.nn.functional.normalize(torch.randn_like(trial.task.bank_l), dim=1))
    bank = trial.task.bank_l.clone()
    assert loss(False, batch) == pytest.approx(loss(False, moved))
    assert torch.equal(bank, trial.task.bank_l)  # evaluation leaves the bank alone
    assert loss(True, batch) != pytest.approx(loss(True, moved), rel=1e-4)
    trial.close()


def test_methods_refuse_what_they_cannot_use(workspace) -> None:
    with pytest.raises(UserError, match="SimCLRTask compares two views.*BaseDataset.double_sample"):
        ssl_trial("simclr", "BaseDataset.double_sample = False")
    with pytest.raises(UserError, match="RotateTask is a self-supervised method: set Wrapper.run_selfsup = True"):
        ssl_trial("rotate", "Wrapper.run_selfsup = False")
    with pytest.raises(UserError, match="MoCoTask.queue_size = 64 is not below the 64 training images of "
                                        "DigitsDataset: .* about 5% of the images: 3"):
        ssl_trial("moco", "MoCoTask.queue_size = 64")


def test_checkpoints_keep_the_task_state(workspace, tmp_path) -> None:
    trial = ssl_trial("moco", "session.train_iters = 3", "MoCoTask.queue_size = 48")
    trial.run_epoch()
    trial.save(tmp_path / "ckpt")
    fresh = ssl_trial("moco", "session.train_iters = 3", "MoCoTask.queue_size = 48")
    assert not torch.equal(fresh.task.queue, trial.task.queue)
    fresh.restore(tmp_path / "ckpt")
    assert torch.equal(fresh.task.queue, trial.task.queue) and fresh.task.queue_position == 32 * 3 % 48
    assert all(torch.equal(a, b) for a, b in zip(fresh.task.key_backbone.state_dict().values(),
                                                 trial.task.key_backbone.state_dict().values()))
    trial.close(), fresh.close()
