"""Gin configs of a trial: finding the files, checking bindings, parsing them afresh.

A trial's config (what Ray Tune stores in `params.json`) is a flat dict:

    {"gin_config": ["digits/r9/classify"],          # gin files, relative to config/
     "gin_params": {"dataloader.batch_size": "128"},  # -p bindings: name -> gin value text
     "seed": 0,
     "metric": "mean_accuracy", "mode": "max",       # what selects the best epoch (Ray config's)
     "BaseDataset.semisupervised": 100}             # any key with a dot is a gin binding

Files are parsed first, then the sweep's binding keys, then the -p bindings.
"""

from __future__ import annotations

import ast
import difflib
import logging
import re
import tokenize
from pathlib import Path
from typing import Any

import gin

import paths
from selfstudy.errors import UserError

GIN_SUFFIX = ".gin"
DEFAULT_GIN_CONFIG = "digits/r9/classify"
RESERVED_KEYS = ("gin_config", "gin_params", "seed", "metric", "mode")  # metric, mode: from the Ray config


def _not_gin_package_probe(record: logging.LogRecord) -> bool:
    """gin first tries an `include 'digits/r9/classify.gin'` as a Python package path and logs
    an error when that fails, before finding the file on our search path; drop that record."""
    return not (record.pathname.endswith("resource_reader.py") and record.getMessage().startswith("Path not found"))


logging.getLogger().addFilter(_not_gin_package_probe)
_BINDING = re.compile(r"^\s*([A-Za-z_][\w./]*\.[A-Za-z_]\w*)\s*=\s*(\S.*?)\s*$", re.DOTALL)


def available_gin_configs() -> list[str]:
    """Names of the shipped gin configs, relative to `CONFIG_DIR`, without `.gin`."""
    return sorted(
        str(p.relative_to(paths.CONFIG_DIR).with_suffix("")) for p in paths.CONFIG_DIR.rglob("*" + GIN_SUFFIX)
    )


def resolve_gin_file(name: str) -> Path:
    """Path of gin config `name` (relative to `CONFIG_DIR` or absolute; `.gin` optional)."""
    candidate = Path(name)
    if candidate.suffix != GIN_SUFFIX:
        candidate = candidate.with_name(candidate.name + GIN_SUFFIX)
    path = candidate if candidate.is_absolute() else paths.CONFIG_DIR / candidate
    if path.is_file():
        return path
    near = difflib.get_close_matches(name.removesuffix(GIN_SUFFIX), available_gin_configs(), n=3, cutoff=0.4)
    hint = f"did you mean: {', '.join(near)}?" if near else f"the configs live in {paths.CONFIG_DIR}"
    raise UserError(f"unknown gin config '{name}': no file {path}; {hint}")


def portable_gin_name(name: str) -> str:
    """A -g name as every trial process can read it: a config of CONFIG_DIR as given, a file
    found from the working directory (trials run elsewhere) as its absolute path."""
    candidate = Path(name if name.endswith(GIN_SUFFIX) else name + GIN_SUFFIX)
    if candidate.is_absolute() or (paths.CONFIG_DIR / candidate).is_file() or not candidate.is_file():
        return name
    return str(candidate.resolve())


def split_binding(text: str) -> tuple[str, str]:
    """Split a `-p` binding 'Name.param = value' into its name and gin value text."""
    match = _BINDING.match(text)
    if match is None:
        raise UserError(
            f"malformed gin binding {text!r}: write it as 'Name.param = value', "
            "e.g. -p 'dataloader.batch_size = 128'"
        )
    return match.group(1), match.group(2)


def gin_value(value: Any) -> str:
    """Gin text for a sweep value: strings starting with '@' or '%' stay references."""
    if isinstance(value, str) and value[:1] in "@%":
        return value
    return repr(value)


def binding_keys(config: dict[str, Any]) -> dict[str, Any]:
    """The entries of a trial config that are gin bindings (keys with a dot)."""
    return {key: value for key, value in config.items() if "." in key}


def check_keys(config: dict[str, Any]) -> None:
    """Refuse keys that are neither reserved nor gin binding names."""
    for key in config:
        if key not in RESERVED_KEYS and "." not in key:
            raise UserError(
                f"unknown key '{key}' in the Ray search space: use a gin binding name "
                f"('Name.param') or one of {', '.join(RESERVED_KEYS)}"
            )


def bind_trial(config: dict[str, Any]) -> None:
    """Clear gin and parse the trial's files and bindings; errors become one-line `UserError`s.
    The configurables must be registered first (`selfstudy.build` imports `selfstudy.components`)."""
    names = config.get("gin_config") or [DEFAULT_GIN_CONFIG]
    if isinstance(names, str):
        names = [names]
    files = [str(resolve_gin_file(name)) for name in names]
    bindings = [f"{key} = {gin_value(value)}" for key, value in binding_keys(config).items()]
    bindings += [f"{key} = {text}" for key, text in (config.get("gin_params") or {}).items()]
    gin.clear_config()
    gin.add_config_file_search_path(str(paths.CONFIG_DIR))
    try:
        gin.parse_config_files_and_bindings(files, bindings, finalize_config=False)
    except tokenize.TokenError:  # an unclosed bracket or quote
        raise UserError(f"gin config: a value is cut short (an unclosed bracket or quote?); check the bindings in "
                        f"{', '.join(names)} and -p, e.g. -p 'dataloader.batch_size = 128'") from None
    except (ValueError, SyntaxError, OSError, TypeError) as err:
        model_2020 = next((name for name in MODELS_2020 if f"'{name}'" in str(err)), None)
        if model_2020:
            raise UserError(f"gin config: {model_2020}.* was a 2020 model class's setting; here the method's settings "
                            f"are {MODELS_2020[model_2020]}.* (see selfstudy/tasks/): rename or drop the binding") from None
        raise UserError(f"gin config: {first_line(err).rstrip('.')}; check the binding names in {', '.join(names)}, "
                        "the Ray config's search space and -p") from None


MODELS_2020 = {"CMCModel": "CMCTask", "AMDIMModel": "AMDIMTask", "AMDIMRefModel": "AMDIMTask", "VAEModel": "VAETask",
               "RotateModel": "RotateTask", "ResnetModel": "ResNet"}  # 2020's backbone classes -> our settings


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (gin appends the offending source lines)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def config_columns(config: dict[str, Any]) -> dict[str, Any]:
    """A trial config flattened to columns named by gin binding."""
    columns = {key: value for key, value in config.items() if key != "gin_params"}
    gin_config = columns.get("gin_config")
    if isinstance(gin_config, list):
        columns["gin_config"] = ",".join(gin_config)
    for key, text in (config.get("gin_params") or {}).items():
        columns[key] = _literal(text)
    return columns
