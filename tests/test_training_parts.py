"""Schedule, optimizer, models, the classification loss and deterministic trials, each on its own."""

from __future__ import annotations

import math
import os

import gin
import pytest
import torch
import torchvision

from conftest import TINY
from selfstudy.config import split_binding
from selfstudy.errors import UserError
from selfstudy.models import ResNet, Wrapper
from selfstudy.optim import Schedule, build_optimizer, check_optimizer, optimizer_class
from selfstudy.precision import autocast_dtype
from selfstudy.tasks.classify import classify_loss
from selfstudy.settings import explain_nondeterminism
from selfstudy.trial import Trial


def test_schedule_is_piecewise_linear_through_milestones() -> None:
    schedule = Schedule(base_lr=0.0, milestones=(2, 6), target_lrs=(0.4, 0.0), steps_per_epoch=10)
    assert schedule.lr(0) == 0.0
    assert schedule.lr(10) == pytest.approx(0.2)  # half way to the first milestone
    assert schedule.lr(20) == pytest.approx(0.4)
    assert schedule.lr(40) == pytest.approx(0.2)
    assert schedule.lr(60) == schedule.lr(99) == 0.0
    assert schedule.num_epochs == 6
    curved = Schedule(1.0, (2,), (2.0,), 10, exp_factor=2.0)  # the last segment times e ** 2, e 1 to 1e-7 by step
    assert curved.lr(10) == pytest.approx(1.5 * (1 - 10 / 19 * (1 - 1e-7)) ** 2)  # step 10 of 20


@pytest.mark.parametrize("milestones, lrs", [((5, 2), (0.1, 0.0)), ((5,), (0.1, 0.0)), ((), ())])
def test_schedule_rejects_bad_milestones(milestones: tuple, lrs: tuple) -> None:
    with pytest.raises(UserError, match="scheduler"):
        Schedule(0.1, milestones, lrs, 10)


def test_optimizer_by_name() -> None:
    assert optimizer_class("AdamW") is torch.optim.AdamW
    with pytest.raises(UserError, match="choose from: .*SGD"):
        optimizer_class("Sgd")
    opt = build_optimizer([torch.nn.Parameter(torch.zeros(2))], optim_fn="SGD", lr=0.3, momentum=0.9)
    assert opt.defaults["lr"] == 0.3 and opt.defaults["momentum"] == 0.9


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_torchvision_resnets_keep_torchvision_names(arch: str) -> None:
    ours = ResNet(arch, input_res=224)
    theirs = getattr(torchvision.models, arch)()
    assert set(ours.state_dict()) == {k for k in theirs.state_dict() if not k.startswith("fc.")}
    ours.load_state_dict({k: v for k, v in theirs.state_dict().items() if not k.startswith("fc.")})
    assert ours.out_dim == theirs.fc.in_features


@pytest.mark.parametrize("arch", ["resnet9", "resnet18", "resnet50"])
def test_a_backbone_built_for_shapes_only_has_the_widths_of_a_real_one(arch: str) -> None:
    """check_trial builds the model on the meta device, where the output width is read off the
    last BatchNorm instead of a forward pass: the same width for every stage, halved or not."""
    for feat_layer in [None, 0, 1, "layer2"]:
        for is_half in (False, True):
            kwargs = {"feat_layer": feat_layer, "is_half": is_half, "width": 8, "in_channels": 1}
            real = ResNet(arch, **kwargs)
            with torch.device("meta"):
                shapes = ResNet(arch, **kwargs)
            assert next(shapes.parameters()).is_meta
            assert shapes.out_dim == real.out_dim == real(torch.zeros(1, 1, 32, 32)).shape[1], (feat_layer, is_half)


def test_the_optimizer_check_refuses_what_building_refuses() -> None:
    params = [torch.nn.Parameter(torch.zeros(2))]
    check_optimizer(params)  # good settings pass
    for bad, says in ((dict(momentum=-1.0), "Invalid momentum value"), (dict(bogus=1), "unexpected keyword")):
        for run in (lambda: build_optimizer(params, **bad), lambda: check_optimizer_with(params, **bad)):
            with pytest.raises(UserError, match=says):
                run()
    with pytest.raises(UserError, match="empty parameter list"):  # nothing to train
        check_optimizer([])


def check_optimizer_with(params: list[torch.nn.Parameter], **bindings: object) -> None:
    """`check_optimizer` under optimizer.* bindings, as a run's check meets them."""
    with gin.unlock_config():
        for name, value in bindings.items():
            gin.bind_parameter(f"optimizer.{name}", value)
    try:
        check_optimizer(params)
    finally:
        gin.clear_config()


def test_resnet_options() -> None:
    net = ResNet("resnet18", input_res=32, feat_layer="layer3", freeze_at_k=0, out_feats=24)
    assert net.out_dim == 24 and net.stage_names[-1] == "layer3"
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 24)
    assert not any(p.requires_grad for p in net.layer1.parameters()) and not net.conv1.weight.requires_grad
    assert all(p.requires_grad for p in net.layer2.parameters())
    before = net.bn1.running_mean.clone()
    net.train()(torch.randn(4, 3, 32, 32))
    assert torch.equal(before, net.bn1.running_mean)  # frozen stages keep their statistics
    with pytest.raises(UserError, match="choose from: prep, layer1"):
        ResNet("resnet9", feat_layer="layer4")


def test_wrapper_trains_only_the_classifier_when_asked() -> None:
    model = Wrapper(ResNet("resnet9", width=4), num_classes=3, classifier="mlp", warmup_fc=2)
    model.train()
    for step, backbone_learns in ((0, False), (1, False), (2, True)):
        model.set_step(step)
        model.zero_grad()
        model(torch.randn(4, 3, 16, 16)).logits.sum().backward()
        assert (model.backbone.prep[0].weight.grad is not None) == backbone_learns
        assert model.classifier[0].weight.grad is not None
    frozen = Wrapper(ResNet("resnet9", width=4), num_classes=3, finetune_classifier=False)  # a probe
    assert not any(p.requires_grad for p in frozen.backbone.parameters())
    tuned = Wrapper(ResNet("resnet9", width=4), num_classes=3, finetune_classifier=True)  # the 2020 meaning
    assert all(p.requires_grad for p in tuned.backbone.parameters())
    with pytest.raises(UserError, match="fewer than"):
        Wrapper(ResNet("resnet9", width=4), num_classes=3, out_classes=2)


def test_classify_loss_against_hand_computed_values() -> None:
    loss, accuracy = classify_loss(torch.zeros(4, 5), torch.tensor([0, 1, 2, 3]))
    assert loss.item() == pytest.approx(math.log(5))
    logits = torch.tensor([[3.0, 0.0], [0.0, 3.0], [3.0, 0.0]])
    loss, accuracy = classify_loss(logits, torch.tensor([0, 1, 1]))
    assert accuracy.item() == pytest.approx(2 / 3)
    assert loss.item() == pytest.approx((2 * math.log(1 + math.exp(-3)) + math.log(1 + math.exp(3))) / 3, rel=1e-5)


def test_precision_choices() -> None:
    cpu = torch.device("cpu")
    assert autocast_dtype("auto", cpu) is None and autocast_dtype("fp32", cpu) is None
    assert autocast_dtype("bf16", cpu) is torch.bfloat16
    with pytest.raises(UserError, match="needs a CUDA GPU"):
        autocast_dtype("fp16", cpu)
    with pytest.raises(UserError, match="choose from: auto, fp32, bf16, fp16"):
        autocast_dtype("fp8", cpu)


def test_deterministic_trials_refuse_nondeterministic_operations(workspace) -> None:
    def trial(*bindings: str) -> Trial:
        return Trial({"gin_config": ["digits/r9/classify"],
                      "gin_params": dict(split_binding(b) for b in (*TINY, "session.train_iters = 2", *bindings))})

    try:
        deterministic = trial("session.deterministic = True")
        assert torch.are_deterministic_algorithms_enabled()
        assert not torch.is_deterministic_algorithms_warn_only_enabled()  # an error, not a warning
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"  # set when selfstudy was imported
        assert math.isfinite(deterministic.run_epoch()["train_loss"])
        deterministic.close()
        with pytest.raises(UserError, match=r"^session.deterministic = True, but put_ has no deterministic "
                                            r"implementation on this device: set session.deterministic = False"):
            with explain_nondeterminism():
                torch.zeros(4).put_(torch.tensor([1]), torch.ones(1))  # has none, even on the CPU
        trial().close()  # the next trial of the process is not deterministic
        assert not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)


def test_gradients_max_norm_clips_each_step(workspace) -> None:
    """One plain SGD step (no momentum, no decay) moves the parameters by lr x the clipped norm."""
    bindings = (*TINY, "session.train_iters = 1", "gradients.max_norm = 0.001", "optimizer.momentum = 0.0", "optimizer.nesterov = False",
                "optimizer.weight_decay = 0.0")
    trial = Trial({"gin_config": ["digits/r9/classify"], "gin_params": dict(split_binding(b) for b in bindings)})
    trial.opt.schedule = Schedule(0.5, (1,), (0.5,), steps_per_epoch=1)  # lr 0.5 throughout
    params = [p for group in trial.opt.optimizer.param_groups for p in group["params"]]
    before = [p.detach().clone() for p in params]
    trial.run_epoch()
    moved = torch.cat([(p.detach() - b).flatten() for p, b in zip(params, before)]).norm().item()
    assert moved == pytest.approx(0.5 * 0.001, rel=1e-3)
    trial.close()
