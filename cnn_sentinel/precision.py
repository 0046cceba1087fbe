"""Precision: the scripts' auto|off|bf16|fp16 as a Keras dtype policy, and the CPU
facts (bfloat16 instructions, AMX) that decide "auto". Keras and TensorFlow are
imported inside the functions that need them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from cnn_sentinel.errors import InputError

# The scripts' --mixed-precision choices (see precision_policy).
PRECISION_MODES = ("auto", "off", "bf16", "fp16")


def cpu_model(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """The CPU's model name ("unknown" where /proc/cpuinfo does not say), for benchmarks."""
    try:
        for line in Path(cpuinfo).read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return "unknown"


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where it cannot be read)."""
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return flags


def cpu_has_bfloat16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether the CPU has bfloat16 instructions (AMX-BF16 or AVX512-BF16)."""
    return bool(cpu_flags(cpuinfo) & {"amx_bf16", "avx512_bf16"})


def cpu_has_amx(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether the CPU has AMX bfloat16 tile units, the ones that make bfloat16 fast:
    with AVX512-BF16 alone, training measured 0.6x float32 (benchmarks/README.md)."""
    return "amx_bf16" in cpu_flags(cpuinfo)


def precision_policy(mode: str) -> str:
    """Keras dtype policy for `mode` auto|off|bf16|fp16.

    auto: mixed_bfloat16 on GPUs of compute capability >= 8 and on CPUs with AMX
    (when no GPU is visible), float32 otherwise (AVX512-BF16 without AMX is slower
    than float32).
    """
    policies = {"off": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}
    if mode in policies:
        return policies[mode]
    if mode != "auto":
        raise InputError(
            f"mixed precision must be one of {', '.join(PRECISION_MODES)}, not {mode}."
        )
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        capabilities = [
            tf.config.experimental.get_device_details(gpu).get("compute_capability", (0, 0))
            for gpu in gpus
        ]
        return "mixed_bfloat16" if min(capabilities) >= (8, 0) else "float32"
    return "mixed_bfloat16" if cpu_has_amx() else "float32"


def set_mixed_precision(mode: str) -> str:
    """Set Keras' global dtype policy for `mode` (see precision_policy); returns its name."""
    import keras

    policy = precision_policy(mode)
    keras.mixed_precision.set_global_policy(policy)
    return policy


@contextlib.contextmanager
def dtype_policy(policy: str) -> Iterator[str]:
    """Use Keras' global dtype `policy` inside the block, restore the previous one after."""
    import keras

    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(policy)
    try:
        yield policy
    finally:
        keras.mixed_precision.set_global_policy(previous)
