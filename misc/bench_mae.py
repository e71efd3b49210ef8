"""Speed of an MAE step: images/s of selfstudy's training step (augmentation, schedule, loss
scaler, metrics, with and without the online probes' extra forward pass) against a bare MAE
step, the same model and masking in a plain loop. Prints one JSON line.

    python misc/bench_mae.py                                         # digits/vit/mae as configured
    python misc/bench_mae.py -p 'dataloader.batch_size = 512'       # the GPU figure's setting

The model, task, optimizer and precision are the gin config's (built as a trial builds them);
the images are random, of the dataset's size. Figures:
    throughput_vs_bare           images/s of selfstudy's step / images/s of the bare step
    no_probes_throughput_vs_bare the same with MAETask.online_probes = False
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from misc.bench_train import speed_options, timed  # noqa: E402
from selfstudy.build import build_parts, trainable  # noqa: E402
from selfstudy.config import split_binding  # noqa: E402
from selfstudy.data import Batch  # noqa: E402
from selfstudy.optim import build_optimizer, build_schedule  # noqa: E402
from selfstudy.precision import autocast_dtype  # noqa: E402
from selfstudy.errors import UserError  # noqa: E402
from selfstudy.tasks.mae import MAETask, mae_loss, patchify, random_masking  # noqa: E402
from selfstudy.train import Optimization, Prep, train_epoch  # noqa: E402


def steppers(config: dict, device: torch.device, steps: int):
    """(selfstudy's step, the bare step, batch size) for the config, each a function of no arguments."""
    parts = build_parts(config, device)
    if not isinstance(parts.task, MAETask):
        raise UserError(f"-g {config['gin_config'][0]} trains {type(parts.task).__name__}: give an MAE config, e.g. digits/vit/mae")
    model, task = parts.model.to(memory_format=torch.channels_last), parts.task
    dtype = autocast_dtype(parts.settings.precision, device)
    res, b, channels = parts.dataset.resolution(parts.options), parts.batch_size, parts.dataset.channels
    images = torch.rand(b, channels, res, res, device=device)
    batch = Batch(images, torch.randint(0, parts.dataset.num_classes, (b,), device=device), torch.arange(b, device=device))
    prep = Prep(parts.augment, torch.zeros(channels, device=device), torch.ones(channels, device=device),
                torch.Generator(device=device).manual_seed(0), parts.options.double_sample, device, dtype)
    opt = Optimization(build_optimizer(trainable(model, task)), build_schedule(1e-3, steps), torch.amp.GradScaler(
        enabled=dtype == torch.float16), steps)

    bare_model, bare_task = copy.deepcopy(model), copy.deepcopy(task)  # the same modules, in a plain loop
    bare_opt = build_optimizer(trainable(bare_model, bare_task))
    bare_model.train(), bare_task.train()
    tokens = (res // bare_task.patch) ** 2

    def ours() -> None:
        train_epoch(model, task, [batch], prep, opt, 0)

    def bare() -> None:
        keep, mask = random_masking(b, tokens, bare_task.mask_ratio, device)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            prediction = bare_task.decode(bare_task.encode_visible(bare_model.backbone, images, keep), keep, tokens)
            loss = mae_loss(prediction, patchify(images, bare_task.patch), mask)
        bare_opt.zero_grad(set_to_none=True)
        loss.backward()
        bare_opt.step()

    return ours, bare, b, dtype


def main() -> None:
    args = speed_options(__doc__, "digits/vit/mae")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    figures: dict[str, object] = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu x{torch.get_num_threads()}",
        "config": args.gin, "params": args.params}
    for label, extra in (("", []), ("no_probes_", ["MAETask.online_probes = False"])):
        bindings = [*args.params, *extra]
        ours, bare, b, dtype = steppers({"gin_config": [args.gin], "gin_params": dict(split_binding(x) for x in bindings)},
                                        device, args.steps)
        rounds = [(timed(ours, args.steps, device), timed(bare, args.steps, device)) for _ in range(args.rounds)]
        ours_s, bare_s = (min(times) for times in zip(*rounds))  # interleaved; the fastest round of each
        figures.update({"batch": b, "precision": str(dtype).replace("torch.", "") if dtype else "fp32",
                        f"{label}images_per_s": round(b / ours_s), f"{label}bare_images_per_s": round(b / bare_s),
                        f"{label}throughput_vs_bare": round(bare_s / ours_s, 3)})
    print(json.dumps(figures))


if __name__ == "__main__":
    try:
        main()
    except UserError as err:
        sys.exit(f"error: {str(err).splitlines()[0]}")
