"""The attention backends, by name, with what each one needs: one list that every part reads.

Why a registry: the model's image self-attention (logits soft-capped, grouped key/value heads) has several
implementations, and which of them can run depends on the device, the dtype and optional packages (Triton,
FlexAttention). The settings (ONEDIFFUSION_ATTENTION), the dispatcher (`model/attention.py`), the worker's
start-up check (`worker/fast_path.py`) and the benchmarks all take the names, the candidates and the
functions from here, so a new backend is a module with its function and one `register_attention_backend`
call; nothing else lists backends.

No torch here: the gateway validates ONEDIFFUSION_ATTENTION with this module, so a backend's function may
be given as "module:function", imported the first time the backend runs (or is pinned).

Which backend a call uses is decided in one place, `model.attention.backend_for` (see its docstring).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

AUTO = "auto"  # the setting's value that lets the selection policy choose
FALLBACK = "math"  # the reference, which runs everywhere: the last resort of the selection policy
Kernel = Callable[..., Any]  # (q, k, v, cap) -> out; q (B, H, L, D), k and v (B, Hkv, L, D), cap a float or None


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing
        return False


@dataclass
class AttentionBackend:
    """One attention implementation and its constraints.

    `devices`: torch device types it is a candidate on (None: any). `interpreted`: also a candidate on the CPU
    when Triton's interpreter is on (TRITON_INTERPRET=1: tests, CPU proofs of a GPU kernel). `dtypes`: dtype
    names it takes ("bfloat16", ...; None: any). `requires`: modules that must be importable (optional
    packages). `softcap`: it computes the logit soft-cap the model needs (a backend without it is never a
    candidate, and refuses a call with a cap). `grouped_kv`: it takes fewer key/value heads than query heads
    itself (else the dispatcher repeats them)."""

    name: str
    fn: Union[Kernel, str]  # the function, or "module:function" imported on first use
    devices: Optional[tuple[str, ...]] = None
    dtypes: Optional[tuple[str, ...]] = None
    requires: tuple[str, ...] = ()
    softcap: bool = True
    grouped_kv: bool = True
    interpreted: bool = False
    description: str = ""

    def function(self) -> Kernel:
        """The backend's function; imported here the first time when it was registered by name. A module
        already imported is taken from sys.modules, which torch.compile traces (an import breaks its graph)."""
        if isinstance(self.fn, str):
            module, _, attr = self.fn.partition(":")
            loaded = sys.modules.get(module)
            self.fn = getattr(loaded if loaded is not None else importlib.import_module(module), attr)
        return self.fn

    def unavailable(self, device_type: str, dtype: Optional[str] = None, needs_softcap: bool = True) -> Optional[str]:
        """None when the backend is a candidate for this device type and dtype name; else why not."""
        if needs_softcap and not self.softcap:
            return "it has no logit soft-cap, which the model's attention needs"
        interpreted = self.interpreted and device_type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"
        if self.devices is not None and device_type not in self.devices and not interpreted:
            return f"it runs on {', '.join(self.devices)}, not {device_type}"
        if dtype is not None and self.dtypes is not None and dtype not in self.dtypes:
            return f"it takes {', '.join(self.dtypes)}, not {dtype}"
        missing = [module for module in self.requires if not _importable(module)]
        if missing:
            return f"{', '.join(missing)} is not installed"
        return None

    def __call__(self, q, k, v, cap: Optional[float]):
        if cap is not None and not self.softcap:
            raise ValueError(f"attention backend {self.name!r} has no logit soft-cap (the model's attention needs one)")
        if not self.grouped_kv and k.shape[1] != q.shape[1]:
            rep = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        return self.function()(q, k, v, cap)


_BACKENDS: dict[str, AttentionBackend] = {}  # registration order is the order of preference


def register_attention_backend(name: str, fn: Union[Kernel, str, None] = None, **constraints) -> Any:
    """Register a backend under `name` (its function, or "module:function"); with no function, a decorator.
    Constraints are `AttentionBackend`'s fields. Registering a name again replaces that backend."""
    if not name or name == AUTO:
        raise ValueError(f"an attention backend cannot be called {name!r}")

    def register(function: Union[Kernel, str]):
        _BACKENDS[name] = AttentionBackend(name, function, **constraints)
        return function

    return register if fn is None else register(fn)


def unregister_attention_backend(name: str) -> None:
    """Remove a backend (tests register toy ones); the fallback stays."""
    if name == FALLBACK:
        raise ValueError(f"the fallback attention backend {FALLBACK!r} cannot be removed")
    _BACKENDS.pop(name, None)


def backend_names() -> tuple[str, ...]:
    return tuple(_BACKENDS)


def get_attention_backend(name: str) -> AttentionBackend:
    """The backend called `name`; ValueError listing the registered names when there is none."""
    backend = _BACKENDS.get(name)
    if backend is None:
        raise ValueError(f"unknown attention backend {name!r}; registered: {', '.join(_BACKENDS)}")
    return backend


def check_setting(value: str) -> str:
    """The attention setting (ONEDIFFUSION_ATTENTION) when it is `auto` or a registered backend; else a
    ValueError that lists the registered backends."""
    if value != AUTO and value not in _BACKENDS:
        raise ValueError(f"unknown attention backend {value!r}; use {AUTO} or one of: {', '.join(_BACKENDS)}")
    return value


def candidates(device: Any, dtype: Any = None, interpreted: bool = True) -> list[str]:
    """The backends worth trying on `device` (a torch.device or its type), in order of preference, the
    fallback last. `interpreted=False` leaves out those that run here only in Triton's interpreter."""
    device_type = getattr(device, "type", device)
    dtype_name = None if dtype is None else str(dtype).removeprefix("torch.")
    names = []
    for backend in _BACKENDS.values():
        if backend.name == FALLBACK or backend.unavailable(device_type, dtype_name) is not None:
            continue
        if not interpreted and backend.devices is not None and device_type not in backend.devices:
            continue
        names.append(backend.name)
    return [*names, FALLBACK]


# ---- the backends ------------------------------------------------------------------------------------
# The reference formula: CPU, float32, tests, and the fallback everywhere.
register_attention_backend(FALLBACK, "model.attention:attention_math", description="reference formula, query rows in blocks")
# Our fused Triton kernel (model/triton_attention.py): hardware tanh (PTX, so CUDA only), then exp2 tanh.
register_attention_backend(
    "triton-fast", "model.triton_attention:attention_triton_fast", devices=("cuda",), requires=("triton",),
    dtypes=("bfloat16", "float16", "float32"), description="fused Triton kernel, hardware tanh.approx",
)
register_attention_backend(
    "triton", "model.triton_attention:attention_triton_exp2", devices=("cuda",), requires=("triton",),
    dtypes=("bfloat16", "float16", "float32"), interpreted=True, description="fused Triton kernel, tanh from exp2",
)
# FlexAttention with the cap as a score modifier, compiled once per process.
register_attention_backend(
    "flex", "model.attention:attention_flex", devices=("cuda",), requires=("torch.nn.attention.flex_attention",),
    dtypes=("bfloat16", "float16", "float32"), description="torch FlexAttention, cap as a score modifier",
)
