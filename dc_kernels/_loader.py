"""Import the compiled extensions once and remember why one is missing."""

import importlib
from types import ModuleType

_modules: dict[str, ModuleType | None] = {}
_errors: dict[str, str] = {}

_HOW_TO_BUILD = {
    "_cpu": "reinstall with `pip install -e .` (needs a C++17 compiler with OpenMP)",
    "_cuda": "reinstall with nvcc on PATH or CUDA_HOME set, and DC_SKIP_CUDA_BUILD unset",
}


def load(name: str) -> ModuleType | None:
    """Return ``dc_kernels.<name>`` or None; the reason for None is kept for ``why``."""
    if name not in _modules:
        try:
            _modules[name] = importlib.import_module(f"dc_kernels.{name}")
        except ImportError as exc:
            _modules[name] = None
            _errors[name] = f"{exc}; {_HOW_TO_BUILD.get(name, 'rebuild the package')}"
    return _modules[name]


def why(name: str) -> str:
    """Why ``load(name)`` returned None ('' when it loaded)."""
    load(name)
    return _errors.get(name, "")
