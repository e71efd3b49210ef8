"""Other projects' checkpoints initialise the backbone, and ours export to torchvision's layout:
each layout is fabricated here from a torchvision model (no download)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision

from conftest import Workspace
from selfstudy.errors import UserError
from selfstudy.models import ResNet, Wrapper

IMAGES = torch.randn(2, 3, 96, 96)


def reference(arch: str = "resnet18") -> torchvision.models.ResNet:
    """A torchvision ResNet with random weights and non-trivial BatchNorm statistics."""
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(num_classes=10).eval()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
    return model


def features(model: torchvision.models.ResNet) -> torch.Tensor:
    head, model.fc = model.fc, torch.nn.Identity()
    with torch.no_grad():
        out = model(IMAGES)
    model.fc = head
    return out


def layouts(state: dict[str, torch.Tensor]) -> dict[str, object]:
    """The same encoder in each project's layout, with the extra parts those checkpoints carry."""
    encoder = {k: v for k, v in state.items() if not k.startswith("fc.")}
    return {
        "torchvision": state,
        "moco": {"arch": "resnet18", "epoch": 200, "state_dict": {
            **{f"module.encoder_q.{k}": v for k, v in encoder.items()},
            "module.encoder_q.fc.0.weight": torch.randn(512, 512),  # the MLP head (v2)
            **{f"module.encoder_k.{k}": v + 1 for k, v in encoder.items()},  # the key encoder: not taken
            "module.queue": torch.randn(128, 16)}},
        "mmselfsup": {"meta": {"epoch": 10}, "state_dict": {
            **{f"backbone.{k}": v for k, v in encoder.items()}, "neck.mlp.0.weight": torch.randn(8, 8)}},
        "encoder": encoder,
    }


def backbone(path: Path, arch: str = "resnet18", **options) -> torch.Tensor:
    model = Wrapper(ResNet(arch, input_res=96), num_classes=10, pretrained=str(path), **options).eval()
    with torch.no_grad():
        return model.backbone(IMAGES)


@pytest.mark.parametrize("layout", ["torchvision", "moco", "mmselfsup", "encoder"])
def test_each_layout_gives_the_source_models_features(layout: str, tmp_path: Path) -> None:
    source = reference()
    path = tmp_path / f"{layout}.pth"
    torch.save(layouts(source.state_dict())[layout], path)
    want = features(source)
    assert torch.equal(backbone(path), want)  # told apart by its keys ('auto')
    assert torch.equal(backbone(path, pretrained_format=layout), want)


def test_resnet50_and_the_stated_layout(tmp_path: Path) -> None:
    source = reference("resnet50")
    torch.save(layouts(source.state_dict())["moco"], tmp_path / "moco50.pth")
    assert torch.allclose(backbone(tmp_path / "moco50.pth", "resnet50"), features(source), atol=1e-6)
    with pytest.raises(UserError, match="no 'backbone.\\*' keys, so it is not in the mmselfsup layout"):
        backbone(tmp_path / "moco50.pth", "resnet50", pretrained_format="mmselfsup")


def test_checkpoints_that_do_not_fit_are_named(tmp_path: Path) -> None:
    torch.save(reference("resnet50").state_dict(), tmp_path / "r50.pth")
    with pytest.raises(UserError, match="does not fit this backbone: 198 unexpected \\(layer1.0.bn3.bias, .*\\) keys; "
                                        "set init_resnet.choice"):
        backbone(tmp_path / "r50.pth", "resnet18")
    torch.save(reference().state_dict(), tmp_path / "r18.pth")
    with pytest.raises(UserError, match="does not fit this backbone: 165 missing .* keys; set init_resnet.choice"):
        backbone(tmp_path / "r18.pth", "resnet50")
    torch.save({"weights": {"w": torch.zeros(1)}}, tmp_path / "odd.pth")
    with pytest.raises(UserError, match="cannot tell the layout of the checkpoint .* Wrapper.pretrained_format"):
        backbone(tmp_path / "odd.pth")
    with pytest.raises(UserError, match="'conv1.weight' is \\(64, 3, 7, 7\\) in the checkpoint but \\(64, 3, 3, 3\\) "
                                        "here; images of 64 pixels or less"):
        Wrapper(ResNet("resnet18", input_res=32), num_classes=10, pretrained=str(tmp_path / "r18.pth"))


def test_a_checkpoint_that_needs_code_is_refused_in_one_line(workspace: Workspace, tmp_path: Path) -> None:
    (tmp_path / "evil.py").write_text("class Payload:\n    def __reduce__(self):\n"
                                      "        return (print, ('ran code',))\n")
    subprocess.run([sys.executable, "-c", "import torch, evil; torch.save({'state_dict': evil.Payload()}, 'evil.pth')"],
                   cwd=tmp_path, check=True)
    done = workspace.run("-l", "-q", "-p", f"Wrapper.pretrained = '{tmp_path / 'evil.pth'}'",
                         "init_resnet.choice = 'resnet18'")
    assert done.returncode == 2 and "ran code" not in done.stdout + done.stderr
    error = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "need code to load" in error[0] and "Traceback" not in done.stderr
    bad_layout = workspace.run("-l", "-q", "-p", f"Wrapper.pretrained = '{tmp_path / 'evil.pth'}'",
                               "Wrapper.pretrained_format = 'keras'")
    assert bad_layout.returncode == 2 and "unknown Wrapper.pretrained_format 'keras'" in bad_layout.stderr


def test_export_loads_into_torchvision_and_imports_back(workspace: Workspace) -> None:
    """A ResNet-18 trial (ImageNet stem: 72-pixel images) exported, loaded strictly into
    torchvision, and imported again: the same features throughout."""
    done = workspace.run("-e", "r18", "-l", "-q", "-p", "init_resnet.choice = 'resnet18'", "BaseDataset.input_res = 72",
                         "session.train_iters = 1", "session.valid_iters = 1", "scheduler.milestones = [1]",
                         "scheduler.target_lrs = [0.01]", "dataloader.batch_size = 16")
    assert done.returncode == 0, done.stdout + done.stderr
    trial = next((workspace.exp_dir / "r18").glob("trial_*"))
    exported = workspace.run("-e", f"r18/{trial.name}", script="misc/export_backbone.py")
    assert exported.returncode == 0, exported.stdout + exported.stderr
    path = trial / "backbone_torchvision.pth"
    provenance = json.loads(path.with_suffix(".json").read_text())
    assert (provenance["architecture"], provenance["stem"], provenance["num_classes"]) == ("resnet18", "imagenet", 10)
    assert provenance["metrics"]["epoch"] == 1 and provenance["config"]["gin_params"]["BaseDataset.input_res"] == "72"
    assert provenance["epoch"] == 1  # the metrics are those of the exported checkpoint's epoch
    written = path.stat().st_mtime_ns
    again = workspace.run("-e", f"r18/{trial.name}", script="misc/export_backbone.py")
    assert again.returncode == 2 and again.stderr.strip().endswith("exists: pass --force to replace it, or -o another file")
    assert path.stat().st_mtime_ns == written and "Traceback" not in again.stderr
    assert workspace.run("-e", f"r18/{trial.name}", "--force", script="misc/export_backbone.py").returncode == 0

    theirs = torchvision.models.resnet18(num_classes=10)
    theirs.load_state_dict(torch.load(path, weights_only=True))  # strict
    ours = Wrapper(ResNet("resnet18", input_res=96), num_classes=10,
                   pretrained=str(next(trial.glob("checkpoint_*")) / "snapshot")).eval()
    with torch.no_grad():
        trained = ours.backbone(IMAGES)
    assert torch.equal(features(theirs.eval()), trained)
    assert torch.equal(backbone(path), trained)  # and back in, as a torchvision checkpoint


def test_other_real_world_layouts_load(tmp_path: Path) -> None:
    """timm-style {"model": ...}, MoCo v3 (base_encoder) and files without num_batches_tracked."""
    source = reference()
    encoder = {k: v for k, v in source.state_dict().items() if not k.startswith("fc.")}
    want = features(source)
    for name, data in {"timm": {"model": source.state_dict(), "epoch": 3},
                       "mocov3": {"state_dict": {f"module.base_encoder.{k}": v for k, v in encoder.items()}},
                       "old": {k: v for k, v in encoder.items() if not k.endswith("num_batches_tracked")}}.items():
        torch.save(data, tmp_path / f"{name}.pth")
        assert torch.equal(backbone(tmp_path / f"{name}.pth"), want), name


def test_a_probes_export_keeps_its_logits(tmp_path: Path) -> None:
    """A linear probe sees standardised features: the export folds that into fc."""
    from selfstudy.weights import torchvision_state

    torch.manual_seed(0)
    probe = Wrapper(ResNet("resnet18", input_res=96), num_classes=10, finetune_classifier=False)
    probe.train()
    with torch.no_grad():
        probe(torch.randn(8, 3, 96, 96) * 2 + 1)  # running statistics of the features move
    probe.eval()
    theirs = torchvision.models.resnet18(num_classes=10).eval()
    theirs.load_state_dict(torchvision_state(probe.state_dict()))
    with torch.no_grad():
        assert torch.allclose(theirs(IMAGES), probe(IMAGES).logits, atol=1e-4)
