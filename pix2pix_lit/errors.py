"""User-facing errors: the CLI prints these as one line and exits non-zero."""

from __future__ import annotations

import re


class Pix2PixLitError(Exception):
    """An error the user can fix; its message names the file or option and the fix."""

    exit_code = 2


class ConfigError(Pix2PixLitError, ValueError):
    """An option has a value that cannot work (unknown name, crop larger than load size, ...)."""


class DataError(Pix2PixLitError):
    """The data on disk cannot be used (missing folder, unreadable image, size mismatch, ...)."""


class CheckpointError(Pix2PixLitError):
    """A checkpoint is missing, unreadable or made for another architecture."""


class InceptionWeightsError(Pix2PixLitError):
    """The FID Inception weights cannot be found offline."""


class NonFiniteLossError(Pix2PixLitError, RuntimeError):
    """Training kept producing NaN/Inf losses."""


def find_in_chain(err: BaseException, kind: type) -> "BaseException | None":
    """The first exception of type ``kind`` in ``err``'s chain (itself, what it was raised from or while
    handling), e.g. ours behind jsonargparse's wrapping, or the OSError behind torch's RuntimeError."""
    seen = set()
    stack = [err]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, kind):
            return e
        stack += [e.__cause__, e.__context__]
    return None


def find_class(path: str, modules: list[str]) -> "type | None":
    """The class a config names: ``path`` a full import path, or a class name looked up in ``modules`` in order;
    None where there is none (the caller says what it wanted in its ConfigError)."""
    import importlib

    module, _, name = path.rpartition(".")
    for where in [module] if module else modules:
        try:
            found = getattr(importlib.import_module(where), name)
        except (ImportError, AttributeError, ValueError):
            continue
        if isinstance(found, type):
            return found
    return None


def check_choice(option: str, value: str, choices) -> str:
    """Return ``value`` if it is one of ``choices``; otherwise raise a ConfigError listing them."""
    choices = list(choices)
    if value not in choices:
        raise ConfigError(f"{option}={value!r} is not known; choose one of: {', '.join(map(str, choices))}")
    return value



_RULE = re.compile(r"^(?:(>=|>)(-?[\d.]+)|([\[(])(-?[\d.]+),(-?[\d.]+)([\])]))$")


def check_numbers(values: dict, rules: dict[str, str], prefix: str = "model.") -> None:
    """Every numeric option in ``rules`` that ``values`` holds (and is not None) in its range, else a ConfigError
    naming the first that is not: ``">=1"``, ``">0"``, ``"[0,1)"`` (NaN is in no range). One table per class, so
    a bad number stops the run before anything is built or written."""
    for name, rule in rules.items():
        value = values.get(name)
        if value is None or isinstance(value, bool):
            continue
        m = _RULE.match(rule.replace(" ", ""))
        if m is None:
            raise ValueError(f"bad range rule {rule!r} for {name}")
        if m[1]:
            ok = value >= float(m[2]) if m[1] == ">=" else value > float(m[2])
            wanted = f"{m[1]} {m[2]}"
        else:
            low, high = float(m[4]), float(m[5])
            ok = (value >= low if m[3] == "[" else value > low) and (value <= high if m[6] == "]" else value < high)
            wanted = f"in {m[3]}{m[4]}, {m[5]}{m[6]}"
        if not ok:  # also NaN: every comparison with it is False
            raise ConfigError(f"{prefix}{name}={value} must be {wanted}")
