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
import importlib
import math
import re
import tokenize
from pathlib import Path
from typing import Any, Callable, Collection

import gin
from gin import config_parser

import paths
from selfstudy.errors import UserError
from selfstudy.translate2020 import translate

GIN_SUFFIX = ".gin"
DEFAULT_GIN_CONFIG = "digits/r9/classify"
RESERVED_KEYS = ("gin_config", "gin_params", "seed", "metric", "mode")  # metric, mode: from the Ray config


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


class _Reference:
    """A `@name`, `@name()` or `%macro` in a value, as read: its repr is the gin text again."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return self.text


class _Reader(config_parser.ParserDelegate):
    def configurable_reference(self, scoped_configurable_name: str, evaluate: bool) -> _Reference:
        return _Reference(f"@{scoped_configurable_name}{'()' if evaluate else ''}")

    def macro(self, macro_name: str) -> _Reference:
        return _Reference(f"%{macro_name}")


def read_bindings(text: str, where: str, into: dict[str, Any], depth: int = 0) -> None:
    """Add the bindings of gin `text` to `into` in order ('scope/Name.param' or a macro's name ->
    value; a later binding of a name replaces an earlier one), following its includes. `where`
    names the text in errors (a file, or a -p binding)."""
    try:
        statements = list(config_parser.ConfigParser(text, _Reader()))
    except tokenize.TokenError:  # an unclosed bracket or quote
        raise UserError(f"gin config: a value is cut short in {where} (an unclosed bracket or quote?)") from None
    except SyntaxError as err:
        line = f", line {err.lineno}" if err.lineno else ""
        raise UserError(f"gin config: {where}{line}: {str(err.msg).rstrip('.')}") from None
    for statement in statements:
        if isinstance(statement, config_parser.BindingStatement):
            name = f"{statement.selector}.{statement.arg_name}" if statement.arg_name else statement.selector
            key = f"{statement.scope}/{name}" if statement.scope else name
            into.pop(key, None)
            into[key] = statement.value
        elif isinstance(statement, config_parser.IncludeStatement):
            path = included_file(statement.filename, where)
            if depth > 20:
                raise UserError(f"gin config: {where} includes itself (through {path.name}): remove the circle")
            read_bindings(path.read_text(), str(path), into, depth + 1)
        elif isinstance(statement, config_parser.ImportStatement):
            if statement.module.startswith("__gin__"):
                raise UserError(f"gin config: {where} imports {statement.module}, which selfstudy does not support: "
                                "remove the line")
            importlib.import_module(statement.module)


def included_file(name: str, where: str) -> Path:
    """The file of `include name`: as given (absolute or from the working directory), else in CONFIG_DIR."""
    for path in (Path(name), paths.CONFIG_DIR / name):
        if path.is_file():
            return path
    raise UserError(f"gin config: {where} includes {name!r}, which is neither a file nor a config in "
                    f"{paths.CONFIG_DIR}: fix the include")


def trial_bindings(config: dict[str, Any]) -> dict[str, Any]:
    """Every binding of the trial, in gin's order: its files, then the sweep's keys, then -p."""
    names = config.get("gin_config") or [DEFAULT_GIN_CONFIG]
    if isinstance(names, str):
        names = [names]
    bindings: dict[str, Any] = {}
    try:
        for name in names:
            path = resolve_gin_file(name)
            read_bindings(path.read_text(), str(path), bindings)
        for key, value in binding_keys(config).items():
            read_bindings(f"{key} = {gin_value(value)}", f"the search space's {key}", bindings)
        for key, text in (config.get("gin_params") or {}).items():
            read_bindings(f"{key} = {text}", f"-p '{key} = {text}'", bindings)
    except (ValueError, OSError, ImportError) as err:
        raise UserError(f"gin config: {first_line(err).rstrip('.')}; check {', '.join(names)}, the Ray config's "
                        "search space and -p") from None
    return bindings


def bind_trial(config: dict[str, Any], self_supervised: Collection[str] = ()) -> dict[str, Callable[[int], Any]]:
    """Clear gin and bind the trial's files and bindings, the 2020 names translated
    (`selfstudy.translate2020`); errors become one-line `UserError`s. The configurables must be
    registered first (`selfstudy.build` imports `selfstudy.components`). `self_supervised`: the
    task names that are pretraining methods. Returns the settings whose value needs the images'
    side (2020's `augment.crop = True`), for `bind_at_resolution`."""
    translated = translate(trial_bindings(config), self_supervised)
    gin.clear_config()
    try:
        gin.parse_config([f"{key} = {gin_text(value)}" for key, value in translated.bindings.items()])
    except (ValueError, SyntaxError, TypeError) as err:
        names = config.get("gin_config") or [DEFAULT_GIN_CONFIG]
        raise UserError(f"gin config: {first_line(err).rstrip('.')}; check the binding names in "
                        f"{', '.join([names] if isinstance(names, str) else names)}, the Ray config's search space "
                        "and -p") from None
    return translated.by_resolution


def gin_text(value: Any) -> str:
    """A value read by `read_bindings` as gin text again (repr, but infinities as gin reads them)."""
    if isinstance(value, float) and math.isinf(value):
        return "1e999" if value > 0 else "-1e999"
    if isinstance(value, (list, tuple)):
        inner = ", ".join(gin_text(item) for item in value)
        return f"[{inner}]" if isinstance(value, list) else f"({inner}{',' if len(value) == 1 else ''})"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{gin_text(k)}: {gin_text(v)}" for k, v in value.items()) + "}"
    return repr(value)


def bind_at_resolution(pending: dict[str, Callable[[int], Any]], resolution: int) -> None:
    """Bind the settings `bind_trial` left for the images' side."""
    for key, value_at in pending.items():
        gin.bind_parameter(key, value_at(resolution))


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
