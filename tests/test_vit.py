"""Vision transformers (timm) as backbones, their weights in and out in timm's layout, and MAE."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import timm
import torch

from conftest import Workspace
from selfstudy.config import split_binding
from selfstudy.errors import UserError
from selfstudy.models import ResNet, ViT, Wrapper
from selfstudy.tasks.mae import mae_loss, patchify, random_masking, sincos_2d
from selfstudy.trial import Trial

TINY_VIT = ["ViT.depth = 1", "BaseDataset.num_valid = 64", "dataloader.batch_size = 32",
            "scheduler.milestones = [1, 2]", "BaseDataset.semisupervised = 64"]


def timm_vit(**options) -> torch.nn.Module:
    torch.manual_seed(1)
    return timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=4, depth=2, **options).eval()


def test_a_timm_vit_imports_with_identical_features_in_each_layout(tmp_path: Path) -> None:
    """timm's own state dict, DINO's training checkpoint (teacher and student, with a head) and
    MAE's (with a decoder) all initialise the backbone to timm's features, for both poolings."""
    images = torch.randn(4, 3, 32, 32)
    for pool, timm_pool in (("cls", "token"), ("mean", "avg")):
        source = timm_vit(num_classes=10, global_pool=timm_pool, fc_norm=False)
        with torch.no_grad():
            want = source.forward_head(source.forward_features(images), pre_logits=True)
        encoder = {k: v for k, v in source.state_dict().items() if not k.startswith("head.")}
        files = {"timm": source.state_dict(),
                 "dino": {"teacher": {**{f"backbone.{k}": v for k, v in encoder.items()},
                                      "head.last_layer.weight_g": torch.ones(8, 1)},
                          "student": {f"module.backbone.{k}": v * 0 for k, v in encoder.items()}, "epoch": 3},
                 "mae": {"model": {**encoder, "mask_token": torch.zeros(1, 1, 64),
                                   "decoder_embed.weight": torch.zeros(64, 192)}}}
        for layout, data in files.items():
            path = tmp_path / f"{layout}.pth"
            torch.save(data, path)
            for given in ("auto", layout):
                ours = Wrapper(ViT("vit_tiny", input_res=32, depth=2, pool=pool), 10, pretrained=str(path),
                               pretrained_format=given).eval()
                with torch.no_grad():
                    assert torch.equal(ours.backbone(images), want), (pool, layout, given)


def test_vit_weights_that_do_not_fit_are_named(tmp_path: Path) -> None:
    torch.save(timm_vit().state_dict(), tmp_path / "vit.pth")
    with pytest.raises(UserError, match=r"'pos_embed' is \(1, 65, 192\) in the checkpoint but \(1, 17, 192\) here; "
                                        r".*set ViT.patch_size and BaseDataset.input_res"):
        Wrapper(ViT("vit_tiny", input_res=32, depth=2, patch_size=8), 10, pretrained=str(tmp_path / "vit.pth"))
    with pytest.raises(UserError, match=r"12 unexpected \(blocks.1.attn.proj.bias, .*init_resnet.choice to the "
                                        r"checkpoint's ViT .* and ViT.depth to its blocks"):
        Wrapper(ViT("vit_tiny", input_res=32, depth=1), 10, pretrained=str(tmp_path / "vit.pth"))
    with pytest.raises(UserError, match="does not fit this backbone: .* missing"):  # a ViT's weights into a ResNet
        Wrapper(ResNet("resnet18"), 10, pretrained=str(tmp_path / "vit.pth"), pretrained_format="timm")


def test_vit_feature_map_pooling_and_other_image_sizes() -> None:
    vit = ViT("vit_tiny", input_res=32, depth=1, pool="mean").eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens = vit.tokens(images)
        grid = vit.feature_map(images)
        assert grid.shape == (2, 192, 8, 8) and torch.equal(grid[:, :, 1, 2], tokens[:, 1 + 8 * 1 + 2])
        assert torch.allclose(vit(images), grid.mean(dim=(2, 3)), atol=1e-6)
        assert vit(torch.randn(3, 3, 16, 16)).shape == (3, 192)  # a local crop: 4 x 4 patches
        dense = Wrapper(vit, 4, dense_pred=True).eval()(images)  # segmentation reads the patch tokens
        assert dense.logits.shape == (2, 4, 32, 32) and torch.allclose(dense.features, grid.mean(dim=(2, 3)), atol=1e-6)
    with pytest.raises(UserError, match=r"ViT.patch_size = 5 does not divide the 32-pixel images .* choose one of "
                                        r"1, 2, 4, 8, 16"):
        ViT("vit_tiny", input_res=32, patch_size=5)


def test_the_export_loads_strictly_into_timm_with_the_same_logits(workspace: Workspace) -> None:
    """A ViT classifier trained through the CLI, exported by misc/export_backbone.py: timm's model
    of the recorded name and arguments takes it strictly and gives the trial's logits."""
    done = workspace.run("-e", "vit", "-l", "-q", "-c", "-g", "digits/vit/classify", "-p", *TINY_VIT,
                         "ViT.pool = 'mean'", "session.train_iters = 2", "scheduler.milestones = [1]",
                         "scheduler.target_lrs = [0.001]")
    assert done.returncode == 0, done.stdout + done.stderr
    trial = next((workspace.exp_dir / "vit").glob("trial_*"))
    exported = workspace.run("-e", f"vit/{trial.name}", script="misc/export_backbone.py")
    assert exported.returncode == 0, exported.stdout + exported.stderr
    record = json.loads((trial / "backbone_timm.json").read_text())
    assert record["timm"] == {"model_name": "vit_tiny_patch16_224", "img_size": 32, "patch_size": 4, "in_chans": 3,
                              "num_classes": 10, "global_pool": "avg", "fc_norm": False, "depth": 1}
    theirs = timm.create_model(**record["timm"]).eval()
    theirs.load_state_dict(torch.load(trial / "backbone_timm.pth", weights_only=True), strict=True)
    ours = Wrapper(ViT("vit_tiny", input_res=32, depth=1, pool="mean"), 10,
                   pretrained=str(next(trial.glob("checkpoint_*")) / "snapshot")).eval()
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(theirs(images), ours(images).logits, atol=1e-5)


def test_mae_loss_by_hand_and_patch_order() -> None:
    # patch 1 = (1, 3): mean 2, unbiased variance 2, normalised (-1, 1) / sqrt(2 + 1e-6) -> squared error 0.5
    # against a zero prediction; patch 2 = (2, 2) normalises to (0, 0) but is not masked
    prediction, target, mask = torch.zeros(1, 2, 2), torch.tensor([[[1.0, 3.0], [2.0, 2.0]]]), torch.tensor([[1.0, 0.0]])
    assert mae_loss(prediction, target, mask).item() == pytest.approx(0.5 * 2 / (2 + 1e-6))
    assert mae_loss(prediction, target, mask, norm_pix=False).item() == pytest.approx((1 + 9) / 2)
    assert mae_loss(prediction, target, torch.ones(1, 2)).item() == pytest.approx(0.5 / (2 + 1e-6) * 2 / 2)
    images = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    patches = patchify(images, 4)  # 4 patches of 4 x 4 x 3, in the order of a ViT's tokens
    assert patches.shape == (2, 4, 48) and torch.equal(patches[1, 2, :3], images[1, :, 4, 0])
    assert torch.equal(patches[0, 1, 3:6], images[0, :, 0, 5])  # the next pixel of the row, channels last
    keep, masked = random_masking(3, 64, 0.75, torch.device("cpu"))
    assert keep.shape == (3, 16) and masked.sum(dim=1).tolist() == [48] * 3
    assert torch.equal(masked.gather(1, keep), torch.zeros(3, 16))
    embedding = sincos_2d(8, 128)
    assert embedding.shape == (64, 128) and torch.allclose(embedding[0, :32], torch.zeros(32))  # sin of row 0


def test_twenty_mae_steps_lower_the_loss(workspace: Workspace) -> None:
    bindings = [*TINY_VIT, "optimizer.lr = 0.001"]
    trial = Trial({"gin_config": ["digits/vit/mae"], "seed": 0, "gin_params": dict(split_binding(b) for b in bindings)})
    batch = trial.prep(next(trial.splits["train"].batches(32, 1, shuffle=(0, 1))), "train")
    start = copy.deepcopy(trial.model.state_dict())

    def objective() -> float:  # the same masks each time
        torch.manual_seed(0)
        with torch.no_grad():
            return trial.task.objective(trial.model, batch)[0].item()

    before = objective()
    for _ in range(20):
        loss, metrics = trial.task.loss(trial.model, batch)
        trial.opt.optimizer.zero_grad()
        loss.backward()
        for group in trial.opt.optimizer.param_groups:
            group["lr"] = 0.001
        trial.opt.optimizer.step()
    assert {"loss", "accuracy", "mlp_accuracy"} <= set(metrics)
    assert objective() < before * 0.9, before
    assert not torch.equal(start["backbone.net.blocks.0.attn.qkv.weight"],
                           trial.model.state_dict()["backbone.net.blocks.0.attn.qkv.weight"])
    trial.close()


def test_decay_all_false_keeps_weight_decay_off_biases_norms_and_tokens() -> None:
    from selfstudy.optim import build_optimizer

    vit = ViT("vit_tiny", input_res=32, depth=1)
    optimizer = build_optimizer(vit.parameters(), optim_fn="AdamW", lr=1e-3, weight_decay=0.05, decay_all=False)
    decayed, kept = optimizer.param_groups
    names = {id(p): name for name, p in vit.named_parameters()}
    assert decayed["weight_decay"] == 0.05 and kept["weight_decay"] == 0.0
    assert {names[id(p)] for p in kept["params"]} >= {"net.cls_token", "net.pos_embed", "net.norm.weight",
                                                      "net.blocks.0.attn.qkv.bias"}
    assert {names[id(p)] for p in decayed["params"]} == {"net.patch_embed.proj.weight", "net.blocks.0.attn.qkv.weight",
                                                         "net.blocks.0.attn.proj.weight", "net.blocks.0.mlp.fc1.weight",
                                                         "net.blocks.0.mlp.fc2.weight"}
