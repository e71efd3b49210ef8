"""The 2020 code's gin names and value forms, translated once into today's settings.

Every binding of a trial (its files, the sweep's keys, -p) is read into one ordered dict before
gin binds any (`selfstudy.config.trial_bindings`); `translate` rewrites that dict, and the rest of
selfstudy sees only today's settings. What a 2020 name meant:

| 2020 | today |
| --- | --- |
| `CMCModel.nce_k`, `nce_t`, `nce_m` | `CMCTask.negatives`, `temperature`, `bank_momentum` |
| `CMCModel.dataset_size` | not needed: the bank has one row per training image |
| `VAEModel.output_res`, `do_reparameterize` | `VAETask.output_res`, `reparameterize` |
| `VAEModel.inpainting = True` | `VAETask.erase` = a square of side res // 4 |
| `AMDIMModel.run_selfsup`, `RotateModel.run_selfsup` | `Wrapper.run_selfsup` |
| `Wrapper.run_selfsup` unset | True for a self-supervised `session.task`, as in 2020 |
| `Wrapper.model_choice` | not needed (the task adds its heads); 'amdim_ref' is refused |
| `Wrapper.run_classifier = False` | `Wrapper.finetune_classifier = False` with run_selfsup |
| `Wrapper.out_classes = [10, 5]` with run_selfsup or dense_pred | its first entry |
| `session.use_apex`, `keep_bn_f32`, `model = 'Wrapper'` | not needed (autocast) |
| `BaseDataset.remote_loading` | not needed (divisions are read in the background) |
| `dataloader.shuffle`, `num_workers` | not needed (batches are sliced on the device) |
| `augment.crop/cutout = True` | res // 8 pixels of padding / a res // 4 square |
| `augment.color_jitter/grayscale = True` | strength 0.4 / probability 0.2; False: 0 |
| `optimizer.optim_fn = 'FusedAdam'` | torch's AdamW (Adam with `adam_w_mode = False`), weight decay 0 by default |
| `scheduler.target_lrs = t` | [0, t, final_lr or 0] over two milestones |
| `scheduler.target_lrs` one longer than milestones | `optimizer.lr` = its first entry |
| `scheduler.final_lr` | the last entry of `scheduler.target_lrs` |

Settings that have no job here are accepted with one note each. Bindings are keys
'scope/Name.param' (a module-qualified name is shortened to its last part); a rule of one
binding applies whatever the scope, the rules over the whole trial read the unscoped bindings,
and every rule reads through macros (`%NAME`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Collection

from selfstudy.errors import UserError
from selfstudy.notes import note
from selfstudy.optim import DEFAULT_MILESTONES, DEFAULT_TARGET_LRS

JITTER, GRAYSCALE = 0.4, 0.2  # the strengths a 2020 `augment.color_jitter/grayscale = True` switched on
MODEL_CHOICES = ("resnet", "rotate", "amdim", "cmc", "vae", "amdim_ref")
AMDIM_REF = ("the 2020 reference AMDIM encoder, which selfstudy does not build: use session.task = 'AMDIMTask' with a "
             "ResNet backbone (init_resnet.choice, e.g. 'resnet50')")


@dataclass
class Translated:
    bindings: dict[str, Any]  # today's settings, in gin's order
    by_resolution: dict[str, Callable[[int], Any]] = field(default_factory=dict)  # values that need the image side


def split_key(key: str) -> tuple[str, str]:
    """'scope/module.Name.param' -> ('scope', 'Name.param'); a macro's key has no '.'."""
    scope, _, name = key.rpartition("/")
    selector, dot, param = name.rpartition(".")
    return scope, (f"{selector.rsplit('.', 1)[-1]}.{param}" if dot else name)


def with_scope(scope: str, name: str) -> str:
    return f"{scope}/{name}" if scope else name


def translate(bindings: dict[str, Any], self_supervised: Collection[str] = ()) -> Translated:
    """Today's settings for a trial's bindings (names and forms of 2020 configs translated, ours
    unchanged). `self_supervised`: the task names that are pretraining methods."""
    out = Translated({})
    for key, value in bindings.items():
        scope, name = split_key(key)
        rule = RULES.get(name) or CLASS_RULES.get(name.split(".")[0])
        for new_name, new_value in rule(name, macro_value(value, bindings)) if rule else [(name, value)]:
            new_key = with_scope(scope, new_name)
            out.bindings.pop(new_key, None)
            out.by_resolution.pop(new_key, None)
            if isinstance(new_value, AtResolution):
                out.by_resolution[new_key] = new_value
            else:
                out.bindings[new_key] = new_value
    for whole in (run_selfsup, run_classifier, first_head, fused_adam, schedule_forms):
        whole(Values(out.bindings), self_supervised)
    return out


def macro_value(value: Any, bindings: dict[str, Any]) -> Any:
    """The value of a macro reference `%NAME` bound among `bindings`; any other value as it is."""
    text = repr(value)
    if not isinstance(value, str) and text.startswith("%") and text[1:] in bindings:
        return macro_value(bindings[text[1:]], bindings)
    return value


class Values:
    """A trial's translated bindings as the rules over the whole trial see them: read through
    their macros, written as bindings."""

    def __init__(self, bindings: dict[str, Any]):
        self.bindings = bindings

    def get(self, key: str, default: Any = None) -> Any:
        return macro_value(self.bindings[key], self.bindings) if key in self.bindings else default

    def __contains__(self, key: str) -> bool:
        return key in self.bindings

    def __setitem__(self, key: str, value: Any) -> None:
        self.bindings[key] = value

    def pop(self, key: str, default: Any = None) -> Any:
        value = self.get(key, default)
        self.bindings.pop(key, None)
        return value

    def setdefault(self, key: str, default: Any) -> None:
        self.bindings.setdefault(key, default)


Pairs = list[tuple[str, Any]]


@dataclass(frozen=True)
class AtResolution:
    """A value computed from the side of the trial's images (known once its dataset is bound)."""

    fraction: int  # the value is side // fraction

    def __call__(self, resolution: int) -> int:
        return resolution // self.fraction


def augment_bool(name: str, value: Any) -> Pairs:
    """A bool of 2020 is its default strength (True) or off (False); a number is ours."""
    if not isinstance(value, bool):
        return [(name, value)]
    strength = {"augment.crop": AtResolution(8), "augment.cutout": AtResolution(4), "augment.color_jitter": JITTER,
                "augment.grayscale": GRAYSCALE}[name]
    return [(name, strength if value else 0)]


def model_choice(name: str, value: Any) -> Pairs:
    if value == "amdim_ref":
        raise UserError(f"Wrapper.model_choice = 'amdim_ref' chose {AMDIM_REF}")
    if value not in MODEL_CHOICES:
        raise UserError(f"unknown Wrapper.model_choice {value!r}; choose from: {', '.join(MODEL_CHOICES)} (or leave it "
                        "out: the task brings its heads)")
    note(f"Wrapper.model_choice = {value!r}: every task's backbone is init_resnet.choice and the task (session.task) "
         "adds its own heads, so the setting is not needed")
    return []


def kept_for_later(name: str, value: Any) -> Pairs:
    """A setting read by a rule over the whole trial (see `translate`)."""
    return [(name, value)]


def without_job(why: str, when: Callable[[Any], bool] = lambda value: True) -> Callable[[str, Any], Pairs]:
    def rule(name: str, value: Any) -> Pairs:
        if when(value):
            note(f"{name} is not used: {why}")
        return []
    return rule


def session_model(name: str, value: Any) -> Pairs:
    if value != "Wrapper":
        raise UserError(f"session.model = {value!r}: the model is always 'Wrapper' (a backbone, init_resnet.choice, "
                        "with the task's heads): remove the setting")
    return []


def renamed(names: dict[str, str | Callable[[Any], Pairs] | None], settings: str) -> Callable[[str, Any], Pairs]:
    """The rule of a 2020 model class: each parameter becomes today's setting (a name, a rule, or
    None for a parameter whose job is done another way, with a note)."""
    def rule(name: str, value: Any) -> Pairs:
        cls, param = name.split(".")
        if param not in names:
            raise UserError(f"gin config: {name} was not a setting of 2020's {cls} (it had {', '.join(names)}); "
                            f"here the settings are {settings}: rename or drop the binding")
        target = names[param]
        if target is None:
            note(f"{name} = {value!r} is not needed: {JOBS_DONE[name]}")
            return []
        return target(value) if callable(target) else [(target, value)]
    return rule


def inpainting(value: Any) -> Pairs:
    if value is True:
        note("VAEModel.inpainting = True: the encoder sees each image with a blanked square of side res // 4 "
             "(VAETask.erase) and the decoder brings back the whole image")
        return [("VAETask.erase", AtResolution(4))]
    return [("VAETask.erase", 0)] if value is False else [("VAETask.erase", value)]


def refused(why: str) -> Callable[[str, Any], Pairs]:
    def rule(name: str, value: Any) -> Pairs:
        raise UserError(f"gin config: {name} {why}")
    return rule


JOBS_DONE = {"CMCModel.dataset_size": "the memory bank has one row per training image, counted from the dataset"}
RULES: dict[str, Callable[[str, Any], Pairs]] = {
    "Wrapper.model_choice": model_choice,
    "Wrapper.run_classifier": kept_for_later,
    "session.use_apex": without_job("mixed precision is torch's autocast (session.precision)"),
    "session.keep_bn_f32": without_job("autocast keeps BatchNorm in float32 by itself"),
    "session.model": session_model,
    "BaseDataset.remote_loading": without_job("a split larger than BaseDataset.max_images is read in divisions in "
                                              "the background"),
    "dataloader.num_workers": without_job("images live on the device and batches are sliced there, with no workers"),
    "dataloader.shuffle": without_job("training batches are always shuffled (by the trial's seed and the epoch) and "
                                      "evaluation reads each split in order", when=lambda value: value is not True),
    **{f"augment.{name}": augment_bool for name in ("crop", "cutout", "color_jitter", "grayscale")},
}
CLASS_RULES: dict[str, Callable[[str, Any], Pairs]] = {
    "CMCModel": renamed({"dataset_size": None, "nce_k": "CMCTask.negatives", "nce_t": "CMCTask.temperature",
                         "nce_m": "CMCTask.bank_momentum"}, "CMCTask.*"),
    "VAEModel": renamed({"output_res": "VAETask.output_res", "inpainting": inpainting,
                         "do_reparameterize": "VAETask.reparameterize"}, "VAETask.*"),
    "AMDIMModel": renamed({"run_selfsup": "Wrapper.run_selfsup"}, "AMDIMTask.* and Wrapper.run_selfsup"),
    "RotateModel": renamed({"run_selfsup": "Wrapper.run_selfsup"}, "RotateTask.* and Wrapper.run_selfsup"),
    "AMDIMRefModel": refused(f"set {AMDIM_REF}"),
    "ResnetModel": refused("was a 2020 backbone class's setting; here the backbone's settings are ResNet.* and "
                           "init_resnet.choice: rename or drop the binding"),
}


def run_selfsup(bindings: Values, self_supervised: Collection[str]) -> None:
    """Unset, 2020's Wrapper.run_selfsup was True: a self-supervised task trains with it."""
    if "Wrapper.run_selfsup" not in bindings and bindings.get("session.task") in self_supervised:
        bindings["Wrapper.run_selfsup"] = True


def run_classifier(bindings: Values, self_supervised: Collection[str]) -> None:
    """`run_classifier = False` kept the labels from the backbone; the probes of a
    self-supervised run still train (on detached features)."""
    value = bindings.pop("Wrapper.run_classifier", True)
    if value is True:
        return
    if value is not False:
        raise UserError(f"Wrapper.run_classifier = {value!r} must be True or False")
    if bindings.get("Wrapper.run_selfsup"):
        note("Wrapper.run_classifier = False: the linear and MLP probes still train, on detached features, so they "
             "report accuracy without changing the backbone")
        bindings["Wrapper.finetune_classifier"] = False
    elif bindings.get("session.task", "ClassifyTask") == "ClassifyTask" and not bindings.get("ClassifyTask.is_pose"):
        raise UserError("Wrapper.run_classifier = False leaves ClassifyTask nothing to train: remove it, or set "
                        "Wrapper.run_selfsup = True with a self-supervised session.task")
    else:
        note("Wrapper.run_classifier = False is not used: the task trains heads of its own")


def first_head(bindings: Values, self_supervised: Collection[str]) -> None:
    """2020 configs give [11, 1] dense and [10, 5] pretraining: one head, the class, learns there."""
    sizes = bindings.get("Wrapper.out_classes")
    dense = bindings.get("Wrapper.dense_pred")
    if isinstance(sizes, (list, tuple)) and len(sizes) > 1 and (dense or bindings.get("Wrapper.run_selfsup")):
        note(f"Wrapper.out_classes = {list(sizes)} with Wrapper.{'dense_pred' if dense else 'run_selfsup'}: the "
             f"{'per-pixel classifier learns' if dense else 'probes learn'} the class ({sizes[0]} outputs); the other "
             "entries are not used")
        bindings["Wrapper.out_classes"] = sizes[0]


def fused_adam(bindings: Values, self_supervised: Collection[str]) -> None:
    """apex's FusedAdam is torch's AdamW (Adam with adam_w_mode = False), without weight decay
    unless set (torch's AdamW would decay by 0.01)."""
    if bindings.get("optimizer.optim_fn") != "FusedAdam":
        return
    choice = "AdamW" if bindings.pop("optimizer.adam_w_mode", True) else "Adam"
    bindings.pop("optimizer.set_grad_none", None)  # gradients are set to None anyway
    if not bindings.pop("optimizer.bias_correction", True):
        raise UserError("optimizer.bias_correction = False has no torch equivalent: remove it")
    bindings["optimizer.optim_fn"] = choice
    bindings.setdefault("optimizer.weight_decay", 0.0)
    note(f"optimizer.optim_fn = 'FusedAdam' (apex) is torch.optim.{choice}")


def schedule_forms(bindings: Values, self_supervised: Collection[str]) -> None:
    """A single target_lrs t rose from 0 to t at the first of two milestones and fell to
    final_lr at the second; a list one longer than the milestones began at its first entry."""
    if bindings.get("scheduler.scheduler_fn") == "ReduceLROnPlateau":  # it has no target_lrs
        if bindings.pop("scheduler.final_lr", None) is not None:
            note("scheduler.final_lr is not used: a ReduceLROnPlateau schedule lowers the rate on its metric")
        return
    if "scheduler.target_lrs" not in bindings and "scheduler.final_lr" not in bindings:
        return
    milestones = bindings.get("scheduler.milestones", DEFAULT_MILESTONES)
    milestones = list(milestones) if isinstance(milestones, (list, tuple)) else None  # None: a macro's
    target_lrs = bindings.get("scheduler.target_lrs", list(DEFAULT_TARGET_LRS))
    final_lr = bindings.pop("scheduler.final_lr", None)
    if isinstance(target_lrs, (int, float)) and not isinstance(target_lrs, bool):
        if milestones is not None and len(milestones) != 2:
            raise UserError(f"scheduler.target_lrs = {target_lrs} (one number, 2020) rises from 0 to it at the first of "
                            f"two milestones and falls to final_lr at the second, but scheduler.milestones = "
                            f"{milestones}: give two milestones or a list of learning rates")
        target_lrs = [0.0, target_lrs, final_lr or 0.0]
    elif final_lr is not None and isinstance(target_lrs, (list, tuple)) and target_lrs:
        target_lrs = [*target_lrs[:-1], final_lr]
    if isinstance(target_lrs, (list, tuple)) and milestones is not None and len(target_lrs) == len(milestones) + 1:
        note(f"scheduler.target_lrs = {list(target_lrs)} has one entry more than scheduler.milestones = {milestones}: "
             f"as in 2020 configs, the first is the learning rate at epoch 0 (optimizer.lr = {target_lrs[0]})")
        bindings["optimizer.lr"] = target_lrs[0]
        target_lrs = list(target_lrs[1:])
    bindings["scheduler.target_lrs"] = target_lrs
