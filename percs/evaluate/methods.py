"""The registry of methods `percs eval --method NAME` can score.

A method is built once per evaluation by its factory, `factory(args, dataset) -> Method`, from the parsed
command-line arguments (each method adds its own options with `add_arguments(parser)`) and the benchmark
(for methods that tune something on its val split). It then answers one query at a time:

    labels = method.segment(image, reference_image, reference_mask)

image: the query image as stored (`Dataset.read_image`: (H, W) or (H, W, C), uint8/uint16/float; the method
normalises it itself); reference_image likewise, reference_mask (H', W') bool with the reference cell.
Returns (H, W) int32 instances of the reference's type, 0 background. `method.name` is the honest name of the
variant that ran (written into metrics.json and the table, e.g. "filter (percs generic ViT-S/14 + DINOv2
ViT-S/14 similarity)"). Methods whose packages are optional register anyway and raise `MethodUnavailable`
from their factory with the install command.
"""

from __future__ import annotations

import argparse
import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Protocol

if TYPE_CHECKING:
    import numpy as np


class MethodUnavailable(RuntimeError):
    """A method whose optional dependency or required file is missing; the message says what to install/pass."""


class Method(Protocol):
    name: str

    def segment(self, image: np.ndarray, reference_image: np.ndarray, reference_mask: np.ndarray) -> np.ndarray:
        ...


@dataclass(frozen=True)
class MethodEntry:
    name: str
    help: str
    factory: Callable[[argparse.Namespace, object], Method]
    add_arguments: Callable[[argparse._ArgumentGroup], None] | None = None


METHODS: dict[str, MethodEntry] = {}

# Modules that register methods when imported (kept lazy: baselines pull optional packages only in their factory).
METHOD_MODULES = ("percs.evaluate.percs_method", "percs.baselines.persam_options", "percs.baselines.filter_options",
                  "percs.evaluate.instance_options")


def register_method(name: str, help: str, add_arguments=None):
    """Decorator for a factory `(args, dataset) -> Method`, registering it under `name`."""

    def decorate(factory):
        if name in METHODS and METHODS[name].factory is not factory:
            raise ValueError(f"method {name!r} is registered twice")
        METHODS[name] = MethodEntry(name, help, factory, add_arguments)
        return factory

    return decorate


def deferred(module: str, function: str) -> Callable[[argparse.Namespace, object], Method]:
    """A factory `(args, dataset) -> Method` that imports `module` (torch, the model) only when called."""

    def factory(args: argparse.Namespace, dataset: object) -> Method:
        return getattr(importlib.import_module(module), function)(args, dataset)

    factory.__qualname__ = f"{module}.{function}"
    return factory


def available_methods() -> dict[str, MethodEntry]:
    """Every registered method (importing the registering modules that exist)."""
    for module in METHOD_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as error:
            if error.name is None or not (module + ".").startswith(error.name + "."):
                raise  # a missing dependency inside an existing module is a real error
    return dict(sorted(METHODS.items()))


def get_method(name: str) -> MethodEntry:
    methods = available_methods()
    if name not in methods:
        raise ValueError(f"--method {name!r} is not one of {sorted(methods)}")
    return methods[name]
