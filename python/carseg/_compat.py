"""Module names from before carseg's rooms, for configs and logdirs written with them.

Catalyst configs name their pieces by import path (`_target_: carseg.runner.SegmentationRunner`),
and every logdir keeps its resolved config. Those paths moved into carseg.train; this finder
makes each old name import as the module it now is (the same module object, not a copy, so
classes and isinstance checks agree). Nothing is imported until an old name is asked for.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import ModuleType

MOVED = {
    "carseg.runner": "carseg.train.runner",
    "carseg.callbacks": "carseg.train.callbacks",
    "carseg.engines": "carseg.train.engines",
    "carseg.models": "carseg.train.models",
    "carseg.data": "carseg.train.dataset",
    "carseg.transforms": "carseg.train.transforms",
    "carseg.losses": "carseg.train.losses",
    "carseg.optim": "carseg.train.optim",
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self) -> None:
        self._specs: dict[str, importlib.machinery.ModuleSpec | None] = {}

    def find_spec(self, fullname: str, path: object = None, target: object = None
                  ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(MOVED[spec.name])
        self._specs[spec.name] = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        # The import system stamped the old name's spec on the module: give it back its own.
        old = module.__spec__.name if module.__spec__ is not None else ""
        module.__spec__ = self._specs.pop(old, module.__spec__)


def install() -> None:
    if not any(isinstance(f, _MovedModules) for f in sys.meta_path):
        sys.meta_path.append(_MovedModules())
