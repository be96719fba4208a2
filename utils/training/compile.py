"""torch.compile from the config: the ``compile`` key, a check that it can work here, plain state dicts.

``compile`` is false (off), true (``torch.compile(model)``) or one of torch.compile's modes. Inductor,
torch.compile's default backend, writes C++ on the CPU (so it needs a C++ compiler, found the way
torch finds it) and Triton kernels on CUDA (so it needs the ``triton`` package). Without them the
first forward pass would fail deep inside torch, minutes into a run; ``compile_model`` says so in
one line before anything starts.

A compiled module keeps the original under ``_orig_mod``, so its state dict names every tensor
``_orig_mod.<name>``; checkpoints use ``plain_state_dict`` so they load with or without compile.
"""

from __future__ import annotations

import os
import shutil
import sys
from typing import Any

import torch
from torch import nn

from utils.config import Key, did_you_mean
from utils.errors import UserError

# torch.compile's documented modes (torch._inductor.list_mode_options(); importing it costs seconds)
MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def compile_key(default: bool | str = False, doc: str = "") -> Key:
    """The config Key: false, true, or one of torch.compile's mode strings."""

    def check(value: bool | str, where: str, source: str) -> None:
        if isinstance(value, str) and value not in MODES:
            modes = ", ".join(repr(m) for m in MODES)
            raise UserError(
                f"{source}: key '{where}': expected false, true or one of {modes}, got {value!r}"
                f"{did_you_mean(value, MODES)}"
            )

    doc = doc or "torch.compile the models: false, true or a mode (" + ", ".join(MODES) + ")"
    return Key(default, (bool, str), doc, check=check)


def compile_model(model: nn.Module, setting: bool | str, device: torch.device) -> nn.Module:
    """``model`` compiled as ``setting`` says (unchanged when false), after checking that it can work."""
    if setting is False:
        return model
    problem = compile_problem(device)
    if problem:
        raise UserError(f"config: key 'compile': torch.compile needs {problem}; set compile=false")
    return torch.compile(model) if setting is True else torch.compile(model, mode=setting)


def compile_problem(device: torch.device) -> str | None:
    """What torch.compile's default backend lacks on this machine for ``device``, or None."""
    if device.type == "cuda":
        from torch.utils._triton import has_triton, has_triton_package

        if not has_triton_package():
            return "Triton on CUDA devices (pip install triton)"
        if not has_triton():
            return f"a GPU that Triton supports ({torch.cuda.get_device_name(device)} is not one)"
        return None
    if device.type == "cpu":
        tried = _cpp_compilers()
        if not any(shutil.which(cxx) for cxx in tried):
            names = ", ".join(tried)
            return f"a C++ compiler on the CPU, and none was found on this machine (tried {names}; set CXX to one)"
    return None


def _cpp_compilers() -> list[str]:
    """The compilers inductor would try, in order (torch._inductor.cpp_builder.get_cpp_compiler)."""
    if sys.platform == "win32":
        return [os.environ.get("CXX", "cl")]
    from torch._inductor import config

    search = config.cpp.cxx if isinstance(config.cpp.cxx, (list, tuple)) else (config.cpp.cxx,)
    names = [cxx for cxx in search if cxx is not None]
    if None in search and os.getenv("TORCH_INDUCTOR_INSTALL_GXX"):
        names.append("conda")  # None: torch installs g++ with conda, when this variable asks it to
    return names


def unwrap_compiled(module: nn.Module) -> nn.Module:
    """The plain module inside torch.compile wrappers (``module`` itself when not compiled)."""
    # A module can be compiled only once torch._dynamo is imported; checking first saves its import.
    if "torch._dynamo" in sys.modules:
        from torch._dynamo.eval_frame import OptimizedModule

        while isinstance(module, OptimizedModule):
            module = module._orig_mod
    return module


def plain_state_dict(module: nn.Module) -> dict[str, Any]:
    """``module``'s state dict with the names it has uncompiled (no ``_orig_mod.`` prefix)."""
    return unwrap_compiled(module).state_dict()
