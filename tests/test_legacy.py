"""2020 values keep their 2020 meaning: one rule per setting."""

from __future__ import annotations

from pathlib import Path

import kornia
import pytest
import torch

from conftest import TINY, Workspace, write_ray_config
from selfstudy.augment import Augment
from selfstudy.config import gin_text, read_bindings
from selfstudy.errors import UserError
from selfstudy.models import Wrapper
from selfstudy.models.resnet import ResNet
from selfstudy.optim import build_optimizer, build_schedule
from selfstudy.rayconfig import load_ray_config
from selfstudy.build import build_parts
from selfstudy.translate2020 import translate
from selfstudy.trial import Trial
from util import vis


def schedule_of(bindings: dict, steps_per_epoch: int = 10, lr: float = 1.0):
    """The schedule that bindings of a config give, through the translator as in a trial."""
    today = translate({"optimizer.lr": lr, **bindings}).bindings
    kwargs = {key.split(".")[1]: value for key, value in today.items() if key.startswith("scheduler.")}
    return build_schedule(today["optimizer.lr"], steps_per_epoch, **kwargs)


def test_target_lrs_one_longer_than_milestones_starts_at_its_first_entry() -> None:
    """`target_lrs = [0, .01, 1e-6]` with `milestones = [5, 25]`: 0 at epoch 0, 0.01 at 5, 1e-6 at 25."""
    schedule = schedule_of({"scheduler.milestones": [5, 25], "scheduler.target_lrs": [0.0, 0.01, 1e-6]}, lr=0.5)
    assert schedule.lr(0) == 0.0  # not optimizer.lr (0.5)
    assert schedule.lr(25) == pytest.approx(0.005)  # half-way to epoch 5
    assert schedule.lr(50) == pytest.approx(0.01)
    assert schedule.lr(250) == pytest.approx(1e-6)
    assert schedule.num_epochs == 25
    ours = schedule_of({"scheduler.milestones": [5, 25], "scheduler.target_lrs": [0.01, 1e-6]}, lr=0.5)
    assert ours.lr(0) == 0.5 and ours.lr(50) == pytest.approx(0.01)
    assert translate({"scheduler.target_lrs": [0.0, 0.01, 1e-6]}).bindings == {"optimizer.lr": 0.0,
                                                                               "scheduler.target_lrs": [0.01, 1e-6]}
    with pytest.raises(UserError, match="need the same, non-zero length: a learning rate for each milestone"):
        schedule_of({"scheduler.milestones": [5, 25], "scheduler.target_lrs": [0.0, 0.01, 1e-6, 0.0]})


def test_a_bool_means_the_2020_default_and_a_number_our_setting() -> None:
    on = translate({"augment.color_jitter": True, "augment.grayscale": True, "augment.crop": True,
                    "augment.cutout": True})
    assert on.bindings == {"augment.color_jitter": 0.4, "augment.grayscale": 0.2}
    assert {key: value_at(32) for key, value_at in on.by_resolution.items()} == {"augment.crop": 4, "augment.cutout": 8}
    assert on.by_resolution["augment.crop"](64) == 8  # res // 8 of the images the trial sees
    off = translate({name: False for name in ("augment.color_jitter", "augment.grayscale", "augment.crop",
                                              "augment.cutout")})
    assert set(off.bindings.values()) == {0} and not off.by_resolution
    numbers = {"augment.color_jitter": 0.8, "augment.grayscale": 0.5, "augment.crop": 1, "augment.cutout": 3}
    assert translate(numbers).bindings == numbers
    read: dict = {}
    read_bindings("augment.crop = True\ntrain/augment.crop = True\naugment.cutout = True\naugment.crop = 2", "-p", read)
    later = translate(read)  # the later binding of a name wins, in any form
    assert later.bindings == {"augment.crop": 2} and set(later.by_resolution) == {"train/augment.crop", "augment.cutout"}


def test_2020_augment_booleans_through_gin() -> None:
    params = {"augment.crop": "True", "augment.cutout": "True", "augment.color_jitter": "False"}
    parts = build_parts({"gin_config": ["digits/r9/classify"], "gin_params": params}, torch.device("meta"))
    resolution = parts.dataset.resolution(parts.options)
    assert (parts.augment.crop, parts.augment.cutout) == (resolution // 8, resolution // 4)
    assert parts.augment.color_jitter == 0


EXP_ARGS_GRID = """
from ray import tune
from ray.tune.suggest.basic_variant import BasicVariantGenerator  # Ray 0.8's module path

exp_args = {
    "stop": {"training_iteration": 2},
    "resume": False,
    "verbose": 1,
    "checkpoint_freq": 1,
    "checkpoint_at_end": True,
    "num_samples": 1,
    "resources_per_trial": {"cpu": 1},
    "search_alg": BasicVariantGenerator(),
    "config": {"BaseDataset.semisupervised": tune.grid_search([60, 120])},
}
"""


def test_a_2020_exp_args_config_loads_with_one_note_per_keyword_done_elsewhere(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from ray.tune.search.basic_variant import BasicVariantGenerator

    config = load_ray_config(str(write_ray_config(tmp_path, EXP_ARGS_GRID)))
    assert config.search_space["BaseDataset.semisupervised"] == {"grid_search": [60, 120]}
    assert (config.checkpoint_frequency, config.checkpoint_at_end, config.num_samples) == (1, True, 1)
    assert config.resources_per_trial == {"cpu": 1}
    assert isinstance(config.search_alg, BasicVariantGenerator)
    notes = capsys.readouterr().err.splitlines()
    assert any("ray.tune.suggest.basic_variant is ray.tune.search.basic_variant" in line for line in notes)
    for key in ("stop", "resume", "verbose"):
        assert sum(f"exp_args['{key}'] is not used" in line for line in notes) == 1, key
    write_ray_config(tmp_path, 'exp_args = {"config": {}, "trial_executor": None}\n')
    with pytest.raises(UserError, match="exp_args\\['trial_executor'\\] is not a setting"):
        load_ray_config(str(tmp_path / "sweep_config.py"))


def test_a_2020_exp_args_sweep_runs_unchanged(workspace: Workspace, tmp_path: Path) -> None:
    config = write_ray_config(tmp_path, EXP_ARGS_GRID)
    done = workspace.run("-e", "legacy", "-l", "-q", "-r", str(config), "-p", *TINY)
    assert done.returncode == 0, done.stdout + done.stderr
    frame = vis.load_experiment("legacy")
    assert sorted(frame["BaseDataset.semisupervised"]) == [60, 120] and (frame["status"] == "finished").all()
    assert "note: ray.tune.suggest.basic_variant is ray.tune.search.basic_variant" in done.stderr


def test_2020_settings_without_a_job_are_accepted_with_one_note_each(workspace: Workspace, tmp_path: Path) -> None:
    config = write_ray_config(tmp_path, 'from ray import tune\n'
                                        'search_space = {"BaseDataset.semisupervised": tune.grid_search([60, 120])}\n')
    done = workspace.run("-e", "apex", "-l", "-q", "-r", str(config), "-p", *TINY, "session.use_apex = True",
                         "session.keep_bn_f32 = True", "BaseDataset.remote_loading = True")
    assert done.returncode == 0, done.stdout + done.stderr
    notes = [line for line in done.stderr.splitlines() if line.startswith("note: ")]
    assert len(notes) == 3, done.stderr  # once each, though two trials were checked and ran
    assert any(line.startswith("note: session.use_apex is not used") for line in notes)
    assert any(line.startswith("note: BaseDataset.remote_loading is not used") for line in notes)
    assert (vis.load_experiment("apex")["status"] == "finished").all()


def test_feat_layer_minus_one_is_the_last_stage_and_k_the_pooled_stage_k() -> None:
    torch.manual_seed(0)
    images = torch.randn(2, 3, 32, 32)
    last = ResNet("resnet9", width=8, feat_layer=-1).eval()
    assert last.stage_names == ["prep", "layer1", "layer2", "layer3"] and last.out_dim == 64
    for k, channels in ((0, 8), (1, 16), (2, 32)):
        net = ResNet("resnet9", width=8, feat_layer=k, out_feats=256).eval()  # 2020: no projection at stage k
        assert net.out_dim == channels and isinstance(net.project, torch.nn.Identity)
        full = ResNet("resnet9", width=8).eval()
        full.load_state_dict(net.state_dict(), strict=False)
        with torch.no_grad():
            assert torch.equal(net(images), full.stage_maps(images)[k].mean(dim=(2, 3)))
    with pytest.raises(UserError, match="ResNet.feat_layer 4 is not a stage .* 0-3, or -1"):
        ResNet("resnet9", feat_layer=4)


def test_out_feats_is_a_linear_projection_before_or_after_pooling() -> None:
    torch.manual_seed(0)
    images = torch.randn(2, 3, 32, 32)
    before = ResNet("resnet9", width=8, out_feats=24, prepool_fc=True).eval()
    after = ResNet("resnet9", width=8, out_feats=24, prepool_fc=False).eval()
    after.load_state_dict(before.state_dict())  # the same weights: a linear map commutes with the mean
    assert before.project.linear.weight.shape == (24, 64) and before.out_dim == after.out_dim == 24
    with torch.no_grad():
        assert before(images).shape == after(images).shape == (2, 24)
        assert torch.allclose(before(images), after(images), atol=1e-5)
        assert before.feature_map(images).shape == (2, 24, 4, 4)
        raw = before.unprojected_map(images).mean(dim=(2, 3))
        assert torch.allclose(after(images), raw @ after.project.linear.weight.T + after.project.linear.bias, atol=1e-5)
    ours = ResNet("resnet9", width=8, out_feats=24)  # prepool_fc unset: our 1x1 conv, BatchNorm, ReLU
    assert isinstance(ours.project, torch.nn.Sequential) and ours.out_dim == 24


@pytest.mark.parametrize("arch, full", [("resnet9", [16, 32, 64, 128]), ("resnet18", [64, 64, 128, 256, 512]),
                                        ("resnet50", [64, 256, 512, 1024, 2048])])
def test_is_half_halves_every_layer_not_the_stem(arch: str, full: list[int]) -> None:
    images = torch.randn(1, 3, 32, 32)
    for half, expected in ((False, full), (True, [full[0]] + [c // 2 for c in full[1:]])):
        net = ResNet(arch, width=16, is_half=half).eval()
        with torch.no_grad():
            assert [m.shape[1] for m in net.stage_maps(images)] == expected


def test_skip_init_pool_and_dilation_keep_their_torchvision_meaning() -> None:
    images = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        assert ResNet("resnet18", input_res=128).feature_map(images).shape[-1] == 4  # stride 2 stem, max-pool
        assert ResNet("resnet18", input_res=128, skip_init_pool=True).feature_map(images).shape[-1] == 8
        dilated = ResNet("resnet50", input_res=128, replace_stride_with_dilation=[False, False, True])
        assert dilated.feature_map(images).shape[-1] == 8
    with pytest.raises(UserError, match="replace_stride_with_dilation applies to resnet18/50"):
        ResNet("resnet9", replace_stride_with_dilation=[False, True, True])
    with pytest.raises(UserError, match="needs resnet50's bottleneck blocks"):
        ResNet("resnet18", replace_stride_with_dilation=[False, False, True])
    with pytest.raises(UserError, match="needs one bool per layer after the first"):
        ResNet("resnet50", replace_stride_with_dilation=True)
    for bad in (True, -2, 1.5):
        with pytest.raises(UserError, match="freeze_at_k = .* must be None"):
            ResNet("resnet9", freeze_at_k=bad)
    stem = ResNet("resnet9", freeze_at_k=-1)
    assert not any(p.requires_grad for p in stem.prep.parameters()) and all(p.requires_grad for p in stem.layer1.parameters())
    assert all(p.requires_grad for p in ResNet("resnet9", freeze_at_k=None).parameters())  # 2020's None
    one = ResNet("resnet9", freeze_at_k=1)  # 2020: gradients stop after layer 2
    assert not any(p.requires_grad for m in (one.prep, one.layer1, one.layer2) for p in m.parameters())
    assert all(p.requires_grad for p in one.layer3.parameters())
    with pytest.raises(UserError, match="freeze_at_k = 2 freezes the stem and layers 1 to 3, but resnet9 up to layer2"):
        ResNet("resnet9", feat_layer=2, freeze_at_k=2)


def test_exp_factor_and_a_single_target_lr_keep_their_2020_meaning() -> None:
    """2020: target_lrs = t is [0, t, final_lr]; exp_factor multiplies the last segment by e ** f,
    e falling linearly from 1 to 1e-7 across it (0: plain linear; below 0 allowed)."""
    single = {"scheduler.milestones": [2, 6], "scheduler.target_lrs": 0.1, "scheduler.final_lr": 1e-3}
    plain = schedule_of(single)
    assert (plain.lr(0), plain.lr(20), plain.lr(60)) == pytest.approx((0.0, 0.1, 1e-3))
    assert plain.lr(40) == pytest.approx((0.1 + 1e-3) / 2)
    for factor in (2.0, -0.5):
        curved = schedule_of({**single, "scheduler.exp_factor": factor})
        assert curved.lr(10) == pytest.approx(plain.lr(10))  # the first segment stays linear
        # step 40 is step 20 of the last segment's 40: e = 1 - 20 / 39 * (1 - 1e-7), as 2020's linspace
        assert curved.lr(40) == pytest.approx(plain.lr(40) * (1 - 20 / 39 * (1 - 1e-7)) ** factor)
    listed = schedule_of({**single, "scheduler.target_lrs": [0, 0.1, 0.5]})
    assert listed.lr(60) == pytest.approx(1e-3)  # final_lr replaces the last entry
    last_step = schedule_of({**single, "scheduler.exp_factor": 1.0})
    assert last_step.lr(59) == pytest.approx(plain.lr(59) * 1e-7)  # as 2020's linspace: e is 1e-7 at the last step
    with pytest.raises(UserError, match="target_lrs = 0.1 .* give two milestones or a list"):
        schedule_of({"scheduler.milestones": [2, 4, 6], "scheduler.target_lrs": 0.1})
    with pytest.raises(UserError, match="unknown scheduler.milestone; choose from"):
        build_schedule(1.0, 10, milestone=[2, 6])


def test_reduce_lr_on_plateau_lowers_the_rate_on_the_metric_and_resumes_exactly() -> None:
    weights = torch.nn.Parameter(torch.zeros(2))

    def plateau() -> tuple[torch.optim.Optimizer, object]:
        optimizer = torch.optim.SGD([weights], lr=0.1)
        return optimizer, build_schedule(0.1, 10, optimizer, milestones=[8], scheduler_fn="ReduceLROnPlateau",
                                         metric="valid_loss", factor=0.5, patience=1)

    optimizer, schedule = plateau()
    assert schedule.num_epochs == 8 and schedule.lr(0) == 0.1
    for loss in (1.0, 0.9, 0.9, 0.9):  # no improvement for two epochs (patience 1): halved once
        schedule.observe({"valid_loss": loss})
    assert schedule.lr(123) == pytest.approx(0.05)
    saved = (optimizer.state_dict(), schedule.state_dict())
    optimizer2, resumed = plateau()
    optimizer2.load_state_dict(saved[0])
    resumed.load_state_dict(saved[1])
    for run in (schedule, resumed):
        run.observe({"valid_loss": 0.9})
        run.observe({"valid_loss": 0.9})
    assert resumed.lr(0) == schedule.lr(0) == pytest.approx(0.025)
    with pytest.raises(UserError, match="scheduler.metric 'valid_loss' is not among this run's metrics"):
        schedule.observe({"train_loss": 1.0})
    with pytest.raises(UserError, match="scheduler.patience is a ReduceLROnPlateau setting"):
        build_schedule(0.1, 10, milestones=[8], patience=3)


def test_fused_adam_is_torch_adamw() -> None:
    params = [torch.nn.Parameter(torch.zeros(2))]

    def optimizer_of(**settings) -> torch.optim.Optimizer:
        today = translate({f"optimizer.{name}": value for name, value in settings.items()}).bindings
        return build_optimizer(params, **{key.split(".")[1]: value for key, value in today.items()})

    adam = optimizer_of(optim_fn="FusedAdam", lr=0.01, weight_decay=0.1, betas=(0.8, 0.999))
    assert type(adam) is torch.optim.AdamW and adam.defaults["weight_decay"] == 0.1
    assert optimizer_of(optim_fn="FusedAdam").defaults["weight_decay"] == 0.0  # apex's default, not 0.01
    assert type(optimizer_of(optim_fn="FusedAdam", adam_w_mode=False)) is torch.optim.Adam
    assert type(optimizer_of(optim_fn="FusedAdam", set_grad_none=True)) is torch.optim.AdamW
    with pytest.raises(UserError, match="optimizer.bias_correction = False has no torch equivalent"):
        optimizer_of(optim_fn="FusedAdam", bias_correction=False)


def test_finetune_classifier_and_finetune_selfsup_have_their_2020_sense() -> None:
    """finetune_classifier: the labels train the backbone (True), or a probe on frozen features
    (False); unset, supervised runs train it. finetune_selfsup = False: the backbone stays frozen.
    run_classifier = False kept the labels from the backbone of a pretraining run."""
    for setting, backbone_learns in ((None, True), (True, True), (False, False)):
        model = Wrapper(ResNet("resnet9", width=4), num_classes=3, finetune_classifier=setting)
        model.train()
        model.set_step(0)
        model(torch.randn(4, 3, 16, 16)).logits.sum().backward()
        assert (model.backbone.prep[0].weight.grad is not None) == backbone_learns, setting
    pretrain = Wrapper(ResNet("resnet9", width=4), num_classes=3, run_selfsup=True)
    assert not pretrain.labels_train_backbone and not pretrain.always_frozen
    joint = Wrapper(ResNet("resnet9", width=4), num_classes=3, run_selfsup=True, finetune_classifier=True)
    assert joint.labels_train_backbone
    measured = Wrapper(ResNet("resnet9", width=4), num_classes=3, run_selfsup=True, finetune_selfsup=False)
    assert measured.always_frozen and not any(p.requires_grad for p in measured.backbone.parameters())
    no_classifier = translate({"Wrapper.run_selfsup": True, "Wrapper.finetune_classifier": True,
                               "Wrapper.run_classifier": False}).bindings
    assert no_classifier == {"Wrapper.run_selfsup": True, "Wrapper.finetune_classifier": False}
    assert not Wrapper(ResNet("resnet9", width=4), num_classes=3, run_selfsup=True,
                       finetune_classifier=no_classifier["Wrapper.finetune_classifier"]).labels_train_backbone
    with pytest.raises(UserError, match="Wrapper.run_classifier = False leaves ClassifyTask nothing to train"):
        translate({"Wrapper.run_classifier": False})
    assert translate({"Wrapper.run_classifier": False, "ClassifyTask.is_pose": True}).bindings == {
        "ClassifyTask.is_pose": True}  # the pose head of the task trains alone
    with pytest.raises(UserError, match="unknown Wrapper.model_choice 'vgg'"):
        translate({"Wrapper.model_choice": "vgg"})
    assert translate({"Wrapper.model_choice": "cmc"}).bindings == {}


def test_with_finetune_classifier_only_the_classifier_trains_the_backbone_beside_the_method() -> None:
    """Both probes of a pretraining run, linear (the classifier) and MLP (2020's out_mlp beside
    out_fc): with run_selfsup and finetune_classifier = True the linear classifier's gradients
    reach the backbone, the MLP probe's do not."""
    torch.manual_seed(0)
    features_of = ResNet("resnet9", width=4)
    joint = Wrapper(features_of, num_classes=3, run_selfsup=True, finetune_classifier=True).train()
    targets = torch.tensor([0, 1, 2, 0])
    for probe, reaches in (("classifier", True), ("mlp_probe", False)):
        joint.zero_grad()
        features = features_of(torch.randn(4, 3, 16, 16))
        normed = joint.feature_norm(features if probe == "classifier" else features.detach())
        torch.nn.functional.cross_entropy(getattr(joint, probe)(normed), targets).backward()
        assert (features_of.prep[0].weight.grad is not None) == reaches, probe
    joint.zero_grad()
    loss, _ = joint.probe_loss(features_of(torch.randn(4, 3, 16, 16)), targets)
    loss.backward()
    assert features_of.prep[0].weight.grad is not None and joint.mlp_probe[0].weight.grad is not None
    probe_only = Wrapper(ResNet("resnet9", width=4), num_classes=3, run_selfsup=True).train()
    loss, _ = probe_only.probe_loss(probe_only.backbone(torch.randn(4, 3, 16, 16)), targets)
    loss.backward()
    assert probe_only.backbone.prep[0].weight.grad is None  # the default: probes on detached features


def test_colour_operations_on_cielab_images_run_in_rgb() -> None:
    """A CIELAB batch (as the 2020 syn files store) under grayscale with probability 1 comes back
    grey: a and b are 0, L keeps its range."""
    rgb = torch.rand(4, 3, 8, 8)
    lab = kornia.color.rgb_to_lab(rgb)
    augment = Augment(grayscale=1.0, flip=False, crop=0, color_space="lab")
    zero, one = torch.zeros(3), torch.ones(3)
    out = augment(lab, zero, one).images
    assert out[:, 1:].abs().max() < 0.05 and 0 <= out[:, 0].min() and out[:, 0].max() <= 100
    with pytest.raises(UserError, match="need RGB or CIELAB images"):
        Augment(color_jitter=0.4, color_space="hsv").check()


def test_a_plateau_schedule_resumes_as_if_never_interrupted(workspace: Workspace, tmp_path: Path) -> None:
    """ReduceLROnPlateau's state lives in the checkpoint: epoch 3 after a restore at epoch 2 equals
    epoch 3 of an uninterrupted run. (threshold 10 in 'abs' mode: no epoch after the first
    improves, so with patience 0 the rate halves every epoch from the second on.)"""
    plateau = {"scheduler.scheduler_fn": "'ReduceLROnPlateau'", "scheduler.threshold": "10.0",
               "scheduler.threshold_mode": "'abs'", "scheduler.patience": "0", "scheduler.factor": "0.5",
               "scheduler.milestones": "[3]", "optimizer.lr": "0.05", "ResNet.width": "4",
               "BaseDataset.num_valid": "64", "dataloader.batch_size": "32", "session.train_iters": "3"}
    config = {"gin_config": ["digits/r9/classify"], "seed": 0, "gin_params": plateau}
    straight = Trial(config)
    lrs = [straight.run_epoch()["lr"] for _ in range(2)]
    assert lrs == pytest.approx([0.05, 0.05]) and straight.opt.schedule.lr(0) == pytest.approx(0.025)
    straight.save(tmp_path / "ckpt")
    third = straight.run_epoch()
    straight.close()
    resumed = Trial(config)
    resumed.restore(tmp_path / "ckpt")
    again = resumed.run_epoch()
    resumed.close()
    assert again["lr"] == third["lr"] == pytest.approx(0.025) and again["train_loss"] == third["train_loss"]
    assert resumed.opt.schedule.lr(0) == straight.opt.schedule.lr(0) == pytest.approx(0.0125)


def test_2020_mistakes_get_one_line(tmp_path: Path) -> None:
    """Values a 2020 config may carry that have no meaning here: one line naming the setting."""
    with pytest.raises(UserError, match=r"augment.crop = 'yes' must be a number \(0: off\)"):
        Augment(crop="yes")
    with pytest.raises(UserError, match=r"augment.crop = -2 must lie in \[0, inf\]"):
        Augment(crop=-2)
    with pytest.raises(UserError, match=r"augment.solarize = True must be a number \(0: off\)"):
        Augment(solarize=True)  # no 2020 form: a bool would silently mean probability 1
    with pytest.raises(UserError, match="ResNet.out_feats = -5 must be a number of channels"):
        ResNet("resnet9", out_feats=-5)
    with pytest.raises(UserError, match="scheduler.metric = 'test_loss' must name a train_\\* or valid_\\* metric"):
        build_schedule(0.1, 10, milestones=[3], scheduler_fn="ReduceLROnPlateau", metric="test_loss")
    both = write_ray_config(tmp_path, 'search_space = {}\nexp_args = {"config": {}}\n')
    with pytest.raises(UserError, match="defines both search_space and a 2020 exp_args: keep one"):
        load_ray_config(str(both))
    with pytest.raises(UserError, match="gin config: CMCModel.nce_size was not a setting of 2020's CMCModel \\(it had "
                                        "dataset_size, nce_k, nce_t, nce_m\\); here the settings are CMCTask"):
        build_parts({"gin_config": ["digits/r9/cmc"], "gin_params": {"CMCModel.nce_size": "8192"}}, torch.device("meta"))


def test_bindings_are_read_in_order_through_macros_and_errors_name_their_file(tmp_path: Path) -> None:
    """Rules read a 2020 value behind a macro; a module-qualified name is the same setting as its
    short one (the later binding wins); values come back as gin reads them; a syntax error names
    the file and line it is in."""
    text = ("LRS = [0, 0.4, 0]\nCROP = True\nscheduler.milestones = [1, 2]\nscheduler.target_lrs = %LRS\n"
            "augment.crop = %CROP\nscheduler.patience = 1e999\nVAEModel.inpainting = True\n"
            "selfstudy.tasks.vae.VAETask.erase = 0\n")
    read: dict = {}
    read_bindings(text, "macros.gin", read)
    today = translate(read)
    assert today.bindings["optimizer.lr"] == 0 and today.bindings["scheduler.target_lrs"] == [0.4, 0]
    assert "augment.crop" in today.by_resolution  # True behind %CROP: res // 8
    assert today.bindings["VAETask.erase"] == 0 and "VAETask.erase" not in today.by_resolution
    assert gin_text(today.bindings["scheduler.patience"]) == "1e999" and gin_text((1,)) == "(1,)"
    (tmp_path / "inner.gin").write_text("augment.flip = True\naugment.crop = [1,\n  2\n")
    (tmp_path / "outer.gin").write_text(f"include '{tmp_path / 'inner.gin'}'\n")
    with pytest.raises(UserError, match="a value is cut short in .*inner.gin"):
        read_bindings((tmp_path / "outer.gin").read_text(), str(tmp_path / "outer.gin"), {})
    (tmp_path / "inner.gin").write_text("augment.flip = True\naugment.crop = = 2\n")
    with pytest.raises(UserError, match=r"inner.gin, line 2: "):
        read_bindings((tmp_path / "outer.gin").read_text(), str(tmp_path / "outer.gin"), {})
