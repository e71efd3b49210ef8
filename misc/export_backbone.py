"""Write a trial's ResNet-18/50 backbone as a torchvision state dict, or its ViT as a timm one,
with its provenance.

    python misc/export_backbone.py -e EXP/TRIAL [-o backbone.pth]    # the trial's newest checkpoint
    python misc/export_backbone.py -e EXP/NAME                       # a moved snapshot (move_snapshots.py)

The state dict loads strictly into `torchvision.models.resnet18/50(num_classes=K)` (K: the
trial's classes; its linear classifier becomes fc). A backbone trained on images of 64 pixels
or less has the CIFAR stem, which torchvision builds with `model.conv1 = nn.Conv2d(C, 64, 3,
1, 1, bias=False)` and `model.maxpool = nn.Identity()`; the JSON beside the file says which
stem it has, with the trial's config, commit and the metrics of the exported epoch. Default
output: EXP_DIR/EXP/TRIAL/backbone_torchvision.pth (and .json); an existing file is replaced only
with --force.

A ViT (init_resnet.choice = 'vit_tiny', ...) is written in timm's names, backbone_timm.pth: it
loads strictly into `timm.create_model(**record["timm"])`, the keyword arguments the JSON beside
it gives (model name, img_size, patch_size, in_chans, num_classes K, global_pool, fc_norm False;
its linear classifier becomes head). Its pooling (ViT.pool) is read from the trial's
operative_config.gin; where the trial folder is gone, --pool gives it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import paths  # noqa: E402
from selfstudy import folders  # noqa: E402
from selfstudy.checkpoint import load_snapshot  # noqa: E402
from selfstudy.config import first_line  # noqa: E402
from selfstudy.durable import DiskFull, save_torch, write_atomic  # noqa: E402
from selfstudy.errors import UserError  # noqa: E402
from selfstudy.models.vit import TIMM_NAMES, timm_config  # noqa: E402
from selfstudy.weights import timm_state, torchvision_state  # noqa: E402


def source_of(name: str) -> tuple[Path, Path | None, dict[str, Any] | None]:
    """The snapshot that -e names, the folder of the trial that wrote it (if known) and its config."""
    folder = paths.EXP_DIR / name
    if (folder / folders.SNAPSHOT).is_file():  # a moved snapshot
        record = json.loads((folder / "snapshot.json").read_text()) if (folder / "snapshot.json").is_file() else {}
        trial = record.get("trial")  # a folder of the experiment (or study stage) above the snapshot
        trial_dir = next((p / trial for p in (folder, *folder.parents) if trial and (p / trial).is_dir()), None)
        return folder / folders.SNAPSHOT, trial_dir, record.get("config")
    if folder.is_dir():
        snapshot = folders.latest_snapshot(folder)
        trials = folders.trial_dirs(folder)
        if snapshot is None and trials:
            raise UserError(f"-e {name} is an experiment: give one of its trials, e.g. -e "
                            f"{name}/{trials[0].relative_to(folder)}, "
                            "or a moved snapshot EXP/NAME")
        if snapshot is None:
            raise UserError(f"-e {name}: trial folder {folder} has no checkpoint; run it with checkpoints "
                            "(checkpoint_frequency or -c)")
        return snapshot, folder, None
    raise UserError(f"-e {name}: no trial folder or moved snapshot at {folder}; give EXP/TRIAL or EXP/NAME")


def provenance(trial_dir: Path | None, config: dict[str, Any] | None, epoch: int | None) -> dict[str, Any]:
    """The trial's config, commit and the metrics of the snapshot's epoch (its last report of it)."""
    if trial_dir is None or not trial_dir.is_dir():
        return {"config": config, "epoch": epoch}
    info = json.loads((trial_dir / "trial.json").read_text()) if (trial_dir / "trial.json").is_file() else {}
    reports = [row for row in folders.read_results(trial_dir) if row.get("training_iteration") == epoch]
    return {"trial": str(trial_dir), "config": config or folders.read_params(trial_dir),
            "git_commit": info.get("git_commit"), "epoch": epoch, "metrics": reports[-1] if reports else None}


def check_loads(state: dict[str, torch.Tensor], record: dict[str, Any]) -> None:
    """The state dict loads strictly into torchvision's ResNet of the recorded architecture and stem."""
    import torchvision

    model = getattr(torchvision.models, record["architecture"])(num_classes=record["num_classes"] or 1000)
    if record["stem"] == "cifar" or record["in_channels"] != 3:
        kernel, stride = (3, 1) if record["stem"] == "cifar" else (7, 2)
        model.conv1 = torch.nn.Conv2d(record["in_channels"], 64, kernel, stride, kernel // 2, bias=False)
    wanted = {k: v for k, v in model.state_dict().items() if "fc." not in k or record["num_classes"]}
    bad = sorted(set(wanted) ^ set(state)) or [k for k in state if state[k].shape != wanted[k].shape]
    if bad:
        raise UserError(f"this backbone does not fit torchvision's {record['architecture']} (e.g. '{bad[0]}'): "
                        "ResNet.is_half and a ResNet.feat_layer short of the last layer have no torchvision counterpart")


def vit_pool(trial_dir: Path | None, given: str | None) -> str:
    """The ViT's pooling: `--pool`, or what its trial's operative config says (no weight tells it)."""
    operative = trial_dir / "operative_config.gin" if trial_dir is not None else None
    if operative is None or not operative.is_file():
        if given is None:
            raise UserError("cannot tell this ViT's pooling: its trial's operative_config.gin is not found; pass "
                            "--pool cls or --pool mean (the trial's ViT.pool)")
        return given
    found = re.search(r"^ViT\.pool = '(\w+)'", operative.read_text(), re.MULTILINE)
    pool = found.group(1) if found else "cls"
    if given is not None and given != pool:
        raise UserError(f"--pool {given}: the trial pooled with ViT.pool = '{pool}'; drop --pool")
    return pool


def vit_record(state: dict[str, torch.Tensor], pool: str) -> dict[str, Any]:
    """timm's create_model arguments for a ViT state dict in timm's names: its size from the
    tensors' shapes."""
    import timm

    patch = int(state["patch_embed.proj.weight"].shape[-1])
    side = round((state["pos_embed"].shape[1] - 1) ** 0.5) * patch
    channels = int(state["patch_embed.proj.weight"].shape[1])
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    for arch in TIMM_NAMES:
        config = timm_config(arch, channels, side, patch, pool, None if depth == 12 else depth)
        reference = timm.create_model(**config, pretrained=False).state_dict()
        if {k: v.shape for k, v in reference.items()} == {k: v.shape for k, v in state.items() if not k.startswith("head.")}:
            config["num_classes"] = int(state["head.weight"].shape[0]) if "head.weight" in state else 0
            return {"architecture": config["model_name"], "timm": config}
    raise UserError("this ViT has no timm counterpart of the same name (vit_tiny, vit_small or vit_base)")


def check_loads_timm(state: dict[str, torch.Tensor], record: dict[str, Any]) -> None:
    """The state dict loads strictly into `timm.create_model(**record["timm"])`."""
    import timm

    timm.create_model(**record["timm"], pretrained=False).load_state_dict(state, strict=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-e", "--exp", required=True, help="EXP/TRIAL or EXP/NAME under EXP_DIR")
    parser.add_argument("-o", "--output", help="the .pth to write (default: beside the source)")
    parser.add_argument("--force", action="store_true", help="replace the .pth (and its .json) if it exists")
    parser.add_argument("--pool", choices=("cls", "mean"), help="a ViT's ViT.pool, where its trial folder is gone")
    args = parser.parse_args()
    try:
        snapshot, trial_dir, config = source_of(args.exp)
        saved = load_snapshot(snapshot, f"-e {args.exp}")
        vit = any(k.startswith("backbone.net.") for k in saved["model"])
        out = (Path(args.output) if args.output else
               paths.EXP_DIR / args.exp / ("backbone_timm.pth" if vit else "backbone_torchvision.pth"))
        if out.suffix != ".pth":
            raise UserError(f"-o {out}: name a .pth file")
        described = out.with_suffix(".json")
        if (out.exists() or described.exists()) and not args.force:
            raise UserError(f"{out if out.exists() else described} exists: pass --force to replace it, or -o another "
                            "file")
        state = timm_state(saved["model"]) if vit else torchvision_state(saved["model"])
        record = provenance(trial_dir, config, saved.get("epoch"))
        if "best_head" in saved and trial_dir is not None:  # a probe grid: fc is its best head
            heads = folders.read_probe_grid(trial_dir) or []
            record["fc_head"] = next((head for head in heads if head["head"] == saved["best_head"]),
                                     {"head": saved["best_head"]})
        if vit:
            record.update(source=str(snapshot), **vit_record(state, vit_pool(trial_dir, args.pool)))
            check_loads_timm(state, record)
        else:
            conv1 = state["conv1.weight"]
            record.update(source=str(snapshot), architecture="resnet50" if "layer4.0.conv3.weight" in state else
                          "resnet18", stem="imagenet" if conv1.shape[-1] == 7 else "cifar",
                          in_channels=int(conv1.shape[1]),
                          num_classes=int(state["fc.weight"].shape[0]) if "fc.weight" in state else None)
            check_loads(state, record)
        partials = [path.with_name(f".{path.name}.partial") for path in (out, described)]
        try:  # both written whole before either replaces the old files
            save_torch(partials[0], state)  # each fsynced (selfstudy.durable)
            write_atomic(partials[1], json.dumps(record, indent=1, default=str))
            os.replace(partials[0], out)
            os.replace(partials[1], described)
        except DiskFull as err:
            raise UserError(err.strerror.replace("set SELFSTUDY_EXP_DIR to a bigger disk", "choose another -o")) from None
        except OSError as err:
            raise UserError(f"cannot write {out}: {first_line(err)}; choose another -o") from None
        finally:
            for partial in partials:
                if partial.is_file():
                    partial.unlink()
    except UserError as err:
        print(f"error: {first_line(err)}", file=sys.stderr)
        return 2
    if vit:
        print(f"{out} ({record['architecture']}, timm.create_model(**{record['timm']}))")
    else:
        print(f"{out} ({record['architecture']}, {record['stem']} stem, fc of {record['num_classes']} classes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
