"""How ``tools/setup_env.sh`` installs mmcv: with CPU kernels, or built with CUDA kernels.

mmcv 2.1.0 has no wheels for torch 2.14, so the set-up builds it from the PyPI source. That
build compiles CUDA kernels only when told to (``FORCE_CUDA=1``) and given a CUDA compiler of
torch's CUDA release; the prebuilt wheel in ``../shared/wheels`` has CPU kernels only. This
module decides what to do from facts about the machine, so that the decision can be tested with
GPUs and toolkits simulated:

- **CPU path** (torch sees no CUDA device): exactly what the set-up did before it knew about
  GPUs: a wheel found by pip, otherwise a CPU build. :func:`plan_mmcv` returns
  ``kind='cpu'`` and the shell script runs its old commands.
- **CUDA path** (``torch.cuda.is_available()`` and a CUDA build of torch): an mmcv whose name
  says which CUDA kernels it has. Its version carries a local label,
  ``2.1.0+cu130.sm80.sm90`` = CUDA 13.0 kernels for compute capabilities 8.0 and 9.0
  (:func:`local_tag`), so a wheel file or an installed mmcv is reused only when its label
  covers this machine (:func:`tag_covers`); a CPU-only wheel (plain ``2.1.0``) never is. With
  nothing to reuse, the plan builds one: ``FORCE_CUDA=1``, ``MMCV_WITH_OPS=1``,
  ``TORCH_CUDA_ARCH_LIST`` from the visible GPUs (:func:`cuda_arch_list`) and a compiler of
  torch's CUDA release: the system's toolkit when its nvcc has that release, otherwise NVIDIA's
  packages from PyPI (:func:`pip_compiler_packages`).

CUDA wheels live in a ``cuda/`` folder under a wheel folder (``.cache/wheels/cuda``), which
pip's ``--find-links`` does not search: on the CPU path ``pip install mmcv==2.1.0`` would
otherwise prefer ``2.1.0+cu130...`` to ``2.1.0`` (a higher version) and change today's install.

The script runs this file by path with ``python -P`` before mmcv or mmimb are installed, so it
imports the standard library only (torch inside :func:`gather_facts`) and nothing from mmimb.

Commands::

    python -P mmimb/setup_plan.py plan --find-links "$PIP_FIND_LINKS"   # shell assignments
    python -P mmimb/setup_plan.py verify                                 # mmcv's CUDA kernels run
    python -P mmimb/setup_plan.py plan --target 9.0 --find-links ...     # for GPUs elsewhere

``--target`` plans a CUDA build for GPUs that are not on this machine (a CPU login node
building the wheel for GPU nodes, or checking that the build works): the plan is the one a
machine with those GPUs would get, except that an installed mmcv is never kept.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

#: The mmcv release the project pins (``pyproject.toml``).
MMCV_VERSION = "2.1.0"

#: The folder, under each wheel folder, that holds CUDA wheels (out of pip's sight, see above).
CUDA_WHEEL_SUBDIR = "cuda"

#: NVIDIA's PyPI packages that make a CUDA toolkit for building torch extensions, for CUDA 13
#: and later (named without a ``-cuXX`` suffix, versioned by CUDA release; nvcc needs crt, nvvm
#: and the runtime; cccl has thrust/cub). All install under ``site-packages/nvidia/cuMAJOR``,
#: next to the cuBLAS, cuSPARSE and cuSOLVER headers that torch's own dependencies put there.
PIP_COMPILER_PACKAGES = ("nvidia-cuda-nvcc", "nvidia-cuda-crt", "nvidia-nvvm",
                         "nvidia-cuda-runtime", "nvidia-cuda-cccl")

_RELEASE = re.compile(r"^(\d+)\.(\d+)")
_NVCC_RELEASE = re.compile(r"release (\d+\.\d+)")
_SM = re.compile(r"^sm_(\d+)")


@dataclass(frozen=True)
class Toolkit:
    """A CUDA toolkit on the machine.

    Args:
        home: its root (``bin/nvcc``, ``include/cuda_runtime.h``), what ``CUDA_HOME`` names.
        version: the release its nvcc reports, e.g. ``'13.0'``.
    """

    home: str
    version: str


@dataclass(frozen=True)
class MachineFacts:
    """What the plan depends on, as :func:`gather_facts` reads it (tests make it up).

    Args:
        cuda_available: ``torch.cuda.is_available()``.
        capabilities: ``torch.cuda.get_device_capability(i)`` of each visible GPU.
        device_names: ``torch.cuda.get_device_name(i)`` of each visible GPU, for the log.
        torch_cuda: ``torch.version.cuda``, e.g. ``'13.0'``; ``None`` for CPU or ROCm builds.
        torch_arches: ``torch.cuda.get_arch_list()``, e.g. ``['sm_80', 'sm_90', 'sm_120']``.
        system_toolkit: the CUDA toolkit found on the machine, or ``None``.
        site_packages: the venv's ``site-packages`` (where NVIDIA's packages install).
        torch_cuda_headers: include folders of the NVIDIA library packages torch was installed
            with (``site-packages/nvidia/cu13/include``: cuBLAS, cuSPARSE, cuSOLVER ...), which
            torch's CUDA headers include and a minimal toolkit lacks.
        wheels: paths of candidate mmcv wheels (any name; the plan filters them).
        python_tag: this interpreter's wheel tag, e.g. ``'cp311'``.
        platform_tag: this platform's wheel tag, e.g. ``'linux_x86_64'``.
        installed_mmcv: the installed mmcv's version (``'2.1.0'``, ``'2.1.0+cu130.sm90'``)
            when ``import mmcv.ops`` works, else ``None``.
    """

    cuda_available: bool
    capabilities: Sequence[tuple[int, int]] = ()
    device_names: Sequence[str] = ()
    torch_cuda: str | None = None
    torch_arches: Sequence[str] = ()
    system_toolkit: Toolkit | None = None
    site_packages: str = ""
    torch_cuda_headers: Sequence[str] = ()
    wheels: Sequence[str] = ()
    python_tag: str = "cp311"
    platform_tag: str = "linux_x86_64"
    installed_mmcv: str | None = None


@dataclass(frozen=True)
class MmcvPlan:
    """How to get mmcv; the shell script reads it through :func:`shell_assignments`.

    Args:
        kind: ``'cpu'`` (today's path, nothing else applies) or ``'cuda'``.
        reason: one line for the log: what torch sees and what follows.
        local_tag: the local version label the CUDA wheel carries, e.g. ``'cu130.sm90'``.
        arch_list: ``TORCH_CUDA_ARCH_LIST``, e.g. ``'8.0;9.0'``.
        keep_installed: the installed mmcv already has the CUDA kernels this machine needs.
        wheel: a CUDA wheel to install instead of building, or ``None``.
        compiler: ``'system'`` or ``'pip'``: where nvcc comes from when building.
        compiler_packages: requirements to ``pip install`` first (compiler ``'pip'``).
        cudart: for compiler ``'pip'``, the versioned ``libcudart.so.N`` to expose as
            ``libcudart.so`` for the linker (NVIDIA's runtime package ships no unversioned name,
            and torch links extensions with ``-lcudart``).
        build_env: environment of the ``pip wheel`` that builds mmcv.
    """

    kind: str
    reason: str
    local_tag: str = ""
    arch_list: str = ""
    keep_installed: bool = False
    wheel: str | None = None
    compiler: str = ""
    compiler_packages: tuple[str, ...] = ()
    cudart: str = ""
    build_env: dict[str, str] = field(default_factory=dict)


# --- pure functions of the facts ----------------------------------------------------------------

def cuda_release(version: str) -> tuple[int, int]:
    """``(major, minor)`` of a CUDA version such as ``'13.0'`` or ``'12.8.1'``.

    Raises:
        ValueError: when ``version`` does not start with ``MAJOR.MINOR``.
    """
    match = _RELEASE.match(version.strip())
    if match is None:
        raise ValueError(f"CUDA version must look like '13.0', got {version!r}")
    return int(match[1]), int(match[2])


def cuda_tag(torch_cuda: str) -> str:
    """The ``cuXY`` label of a CUDA release, as PyTorch names builds: ``'13.0'`` -> ``'cu130'``."""
    major, minor = cuda_release(torch_cuda)
    return f"cu{major}{minor}"


def parse_nvcc_release(nvcc_output: str) -> str | None:
    """The release in ``nvcc --version``'s output: ``'release 13.0, V13.0.88'`` -> ``'13.0'``."""
    match = _NVCC_RELEASE.search(nvcc_output)
    return match[1] if match else None


def cuda_arch_list(capabilities: Iterable[tuple[int, int]],
                   torch_arches: Sequence[str] = ()) -> list[str]:
    """``TORCH_CUDA_ARCH_LIST`` entries for the visible GPUs: deduplicated, numerically sorted.

    As torch's own default (``torch.utils.cpp_extension._get_cuda_arch_flags``), a capability
    above the newest one torch was built for is lowered to it: nvcc of torch's CUDA release may
    not know the newer one.

    Args:
        capabilities: ``(major, minor)`` of each GPU, e.g. ``[(9, 0), (8, 0), (9, 0)]``.
        torch_arches: ``torch.cuda.get_arch_list()``; empty for no clamping.

    Returns:
        e.g. ``['8.0', '9.0']``.

    Raises:
        ValueError: when ``capabilities`` is empty.
    """
    caps = sorted(set(capabilities))
    if not caps:
        raise ValueError("capabilities must name at least one GPU, got none")
    supported = [(int(m[1]) // 10, int(m[1]) % 10)
                 for m in (_SM.match(arch) for arch in torch_arches) if m]
    if supported:
        newest = max(supported)
        caps = sorted({min(cap, newest) for cap in caps})
    return [f"{major}.{minor}" for major, minor in caps]


def local_tag(torch_cuda: str, arch_list: Sequence[str]) -> str:
    """The local version label of a CUDA build: ``'13.0', ['8.0', '9.0']`` -> ``'cu130.sm80.sm90'``.
    """
    return ".".join([cuda_tag(torch_cuda), *(f"sm{arch.replace('.', '')}" for arch in arch_list)])


def tag_covers(version: str, torch_cuda: str, arch_list: Sequence[str]) -> bool:
    """Whether an mmcv ``version`` has CUDA kernels of ``torch_cuda`` for every arch needed.

    ``'2.1.0+cu130.sm80.sm90'`` covers CUDA 13.0 on sm 8.0 and/or 9.0. A version without a local
    label (``'2.1.0'``, the CPU-only wheels) covers nothing; nor does a label without the
    architectures (``'2.1.0+cu130'``): nothing says its kernels run on these GPUs, and a wrong
    guess fails only at the first kernel launch ("no kernel image is available").
    """
    public, _, label = version.partition("+")
    if public != MMCV_VERSION or not label:
        return False
    segments = label.split(".")
    if segments[0] != cuda_tag(torch_cuda):
        return False
    needed = {f"sm{arch.replace('.', '')}" for arch in arch_list}
    return needed <= set(segments[1:])


def reusable_wheel(wheels: Iterable[str], torch_cuda: str, arch_list: Sequence[str],
                   python_tag: str, platform_tag: str) -> str | None:
    """The first wheel in ``wheels`` that :func:`tag_covers` this machine, else ``None``.

    Only wheel file names are read: ``mmcv-VERSION-PYTHON-ABI-PLATFORM.whl`` (an optional build
    tag before ``PYTHON`` is allowed).
    """
    for wheel in wheels:
        name = Path(wheel).name
        parts = name.removesuffix(".whl").split("-")
        if not name.endswith(".whl") or len(parts) not in (5, 6) or parts[0] != "mmcv":
            continue
        if parts[-3] != python_tag or parts[-1] != platform_tag:
            continue
        if tag_covers(parts[1], torch_cuda, arch_list):
            return wheel
    return None


def pip_compiler_packages(torch_cuda: str) -> tuple[str, ...]:
    """Requirements for NVIDIA's nvcc and headers of ``torch_cuda``'s release, from PyPI.

    Raises:
        ValueError: for CUDA before 13, whose packages (``nvidia-cuda-nvcc-cu12`` ...) install
            in separate folders without the layout of a toolkit; install that toolkit instead.
    """
    major, minor = cuda_release(torch_cuda)
    if major < 13:
        raise ValueError(
            f"torch is built with CUDA {torch_cuda}: the set-up takes nvcc from PyPI only for "
            f"CUDA 13 and later. Install the CUDA {major}.{minor} toolkit and set CUDA_HOME to it")
    return tuple(f"{name}=={major}.{minor}.*" for name in PIP_COMPILER_PACKAGES)


def plan_mmcv(facts: MachineFacts) -> MmcvPlan:
    """Decide how to install mmcv on the machine ``facts`` describes.

    Args:
        facts: see :class:`MachineFacts`.

    Returns:
        The plan; ``kind='cpu'`` unless torch sees a CUDA device and is a CUDA build.

    Raises:
        ValueError: when the compiler would have to come from PyPI for a CUDA release that
            :func:`pip_compiler_packages` does not serve.
    """
    if not facts.cuda_available or not facts.capabilities:
        return MmcvPlan("cpu", "torch sees no CUDA device: mmcv with CPU kernels")
    if facts.torch_cuda is None:
        return MmcvPlan("cpu", "torch sees a GPU but is not a CUDA build (torch.version.cuda is "
                               "None): mmcv with CPU kernels")
    archs = cuda_arch_list(facts.capabilities, facts.torch_arches)
    gpus = ", ".join(facts.device_names) or f"{len(facts.capabilities)} GPU(s)"
    seen = f"torch (CUDA {facts.torch_cuda}) sees {gpus}, compute capability {';'.join(archs)}"
    plan = MmcvPlan("cuda", seen, local_tag=local_tag(facts.torch_cuda, archs),
                    arch_list=";".join(archs))
    if facts.installed_mmcv and tag_covers(facts.installed_mmcv, facts.torch_cuda, archs):
        return replace(plan, keep_installed=True,
                        reason=f"{seen}: installed mmcv {facts.installed_mmcv} has its kernels")
    wheel = reusable_wheel(facts.wheels, facts.torch_cuda, archs, facts.python_tag,
                           facts.platform_tag)
    if wheel is not None:
        return replace(plan, wheel=wheel, reason=f"{seen}: reusing {Path(wheel).name}")
    return _with_compiler(plan, facts, facts.torch_cuda)


def _with_compiler(plan: MmcvPlan, facts: MachineFacts, torch_cuda: str) -> MmcvPlan:
    env = {"FORCE_CUDA": "1", "MMCV_WITH_OPS": "1", "TORCH_CUDA_ARCH_LIST": plan.arch_list}
    if facts.torch_cuda_headers:  # torch's ATen/cuda headers include cusparse.h, cublas_v2.h ...
        env["CPATH"] = ":".join(facts.torch_cuda_headers)
    toolkit = facts.system_toolkit
    if toolkit is not None and cuda_release(toolkit.version) == cuda_release(torch_cuda):
        return replace(plan, compiler="system", build_env={**env, "CUDA_HOME": toolkit.home},
                        reason=f"{plan.reason}: building with CUDA kernels, nvcc "
                               f"{toolkit.version} of {toolkit.home}")
    major, _ = cuda_release(torch_cuda)
    home = f"{facts.site_packages}/nvidia/cu{major}"
    found = f"nvcc {toolkit.version} of {toolkit.home}" if toolkit else "no nvcc"
    return replace(plan, compiler="pip", compiler_packages=pip_compiler_packages(torch_cuda),
                    cudart=f"{home}/lib/libcudart.so.{major}",
                    build_env={**env, "CUDA_HOME": home},
                    reason=f"{plan.reason}: building with CUDA kernels, nvcc {torch_cuda} from "
                           f"PyPI ({found} on the machine)")


def shell_assignments(plan: MmcvPlan) -> str:
    """The plan as bash assignments for ``eval``; every variable is set, arrays as arrays.

    ``MMCV_PLAN MMCV_REASON MMCV_LOCAL_TAG MMCV_ARCH_LIST MMCV_KEEP_INSTALLED MMCV_WHEEL
    MMCV_COMPILER MMCV_CUDART`` (strings, ``MMCV_KEEP_INSTALLED`` 0 or 1),
    ``MMCV_COMPILER_PACKAGES`` (requirements) and ``MMCV_BUILD_ENV`` (``NAME=value`` for ``env``).
    """
    scalars = {
        "MMCV_PLAN": plan.kind, "MMCV_REASON": plan.reason, "MMCV_LOCAL_TAG": plan.local_tag,
        "MMCV_ARCH_LIST": plan.arch_list, "MMCV_KEEP_INSTALLED": str(int(plan.keep_installed)),
        "MMCV_WHEEL": plan.wheel or "", "MMCV_COMPILER": plan.compiler,
        "MMCV_CUDART": plan.cudart,
    }
    arrays = {
        "MMCV_COMPILER_PACKAGES": list(plan.compiler_packages),
        "MMCV_BUILD_ENV": [f"{key}={value}" for key, value in plan.build_env.items()],
    }
    lines = [f"{name}={shlex.quote(value)}" for name, value in scalars.items()]
    lines += [f"{name}=({' '.join(shlex.quote(v) for v in values)})"
              for name, values in arrays.items()]
    return "\n".join(lines) + "\n"


def describe_kernels(cuda_available: bool, device_names: Sequence[str], mmcv_version: str,
                     mmcv_cuda: str, routed: bool, fallback_kernels: Sequence[str]) -> str:
    """Say which kernels mmcv's ops run on this machine, for ``tools/check_ops.py``.

    Args:
        cuda_available: ``torch.cuda.is_available()``.
        device_names: the visible GPUs.
        mmcv_version: the installed mmcv's version (its local label names its CUDA build).
        mmcv_cuda: ``mmcv.ops.get_compiling_cuda_version()`` (``'not available'`` without CUDA).
        routed: whether ``mmimb.ops_fallback`` has wrapped ``mmcv._ext``.
        fallback_kernels: the kernels the fallback serves (``mmimb.ops_fallback.FALLBACKS``).

    Returns:
        A few lines of text; the last one says what runs on CUDA tensors.
    """
    built = mmcv_cuda.strip()
    has_cuda = built != "not available"
    compiled = f"CPU and CUDA {built} kernels" if has_cuda else "CPU kernels only"
    lines = [f"mmcv {mmcv_version}: {compiled}",
             f"GPUs seen by torch: {', '.join(device_names) if cuda_available else 'none'}"]
    if not cuda_available:
        lines.append("in use: mmcv's CPU kernels (no CUDA tensors on this machine)")
    elif has_cuda:
        lines.append(f"in use on CUDA tensors: mmcv's own CUDA {built} kernels")
    elif routed:
        lines.append(f"in use on CUDA tensors: mmimb's fallback (torchvision / torch) for "
                     f"{', '.join(fallback_kernels)}; any other mmcv op raises. For mmcv's own "
                     "CUDA kernels run bash tools/setup_env.sh on this machine")
    else:
        lines.append("in use on CUDA tensors: none; mmcv's ops fail on them and mmimb's "
                     "fallback is not active (it starts with `import mmimb`)")
    return "\n".join(lines)


# --- reading the facts (the only part that looks at the machine) --------------------------------

def find_system_toolkit(environ: dict[str, str] | None = None) -> Toolkit | None:
    """The first CUDA toolkit among ``$CUDA_HOME``, ``$CUDA_PATH``, nvcc's on ``PATH`` and
    ``/usr/local/cuda`` that has ``bin/nvcc`` and ``include/cuda_runtime.h``, with its release.

    ``nvcc`` on ``PATH`` may be a wrapper script (``/usr/local/bin/nvcc``) whose parent is no
    toolkit; the header check skips it.
    """
    env = os.environ if environ is None else environ
    nvcc = shutil.which("nvcc", path=env.get("PATH"))
    homes = [env.get("CUDA_HOME"), env.get("CUDA_PATH"),
             str(Path(nvcc).parent.parent) if nvcc else None, "/usr/local/cuda"]
    for home in filter(None, homes):
        root = Path(home)
        if not ((root / "bin/nvcc").is_file() and (root / "include/cuda_runtime.h").is_file()):
            continue
        try:
            out = subprocess.run([str(root / "bin/nvcc"), "--version"], capture_output=True,
                                 text=True, timeout=60, check=False).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        release = parse_nvcc_release(out)
        if release is not None:
            return Toolkit(str(root), release)
    return None


def wheel_candidates(find_links: str) -> list[str]:
    """mmcv wheels in each folder of ``find_links`` (space-separated) and its ``cuda/`` folder."""
    wheels: list[str] = []
    for entry in find_links.split():
        folder = Path(entry)
        if folder.is_dir():
            for where in (folder / CUDA_WHEEL_SUBDIR, folder):
                wheels += sorted(str(p) for p in where.glob("mmcv-*.whl"))
    return wheels


def _installed_mmcv() -> str | None:
    try:
        import mmcv.ops  # noqa: F401  (the set-up's own test that mmcv works)
    except Exception:  # any failure means "not usable": not installed, or built for another torch
        return None
    return importlib.metadata.version("mmcv")


def parse_capability(text: str) -> tuple[int, int]:
    """``'9.0'`` -> ``(9, 0)``.

    Raises:
        ValueError: for anything but ``MAJOR.MINOR`` (e.g. ``'sm_90'`` or ``'9'``).
    """
    match = re.fullmatch(r"(\d+)\.(\d)", text.strip())
    if match is None:
        raise ValueError(f"target must be a compute capability MAJOR.MINOR such as 9.0 (H100, "
                         f"H200) or 8.0 (A100), got {text!r}")
    return int(match[1]), int(match[2])


def gather_facts(find_links: str = "",
                 targets: Sequence[tuple[int, int]] = ()) -> MachineFacts:
    """Read :class:`MachineFacts` from this machine and this Python (imports torch).

    Args:
        find_links: see :func:`wheel_candidates`.
        targets: compute capabilities of GPUs elsewhere to build for instead of this
            machine's (a cross-build: no GPU needed, an installed mmcv is never kept).
    """
    import torch

    site_packages = sysconfig.get_paths()["purelib"]
    headers = sorted(str(p) for p in Path(site_packages).glob("nvidia/*/include")
                     if (p / "cusparse.h").is_file() or (p / "cublas_v2.h").is_file())
    common = dict(torch_cuda=torch.version.cuda, torch_arches=torch.cuda.get_arch_list(),
                  site_packages=site_packages, torch_cuda_headers=headers,
                  wheels=wheel_candidates(find_links),
                  python_tag=f"cp{sys.version_info.major}{sys.version_info.minor}",
                  platform_tag=re.sub(r"[-.]", "_", sysconfig.get_platform()))
    if targets:
        return MachineFacts(cuda_available=True, capabilities=list(targets),
                            device_names=["target GPUs elsewhere (none here)"],
                            system_toolkit=find_system_toolkit(), **common)  # type: ignore[arg-type]
    available = torch.cuda.is_available()
    count = torch.cuda.device_count() if available else 0
    return MachineFacts(
        cuda_available=available,
        capabilities=[torch.cuda.get_device_capability(i) for i in range(count)],
        device_names=[torch.cuda.get_device_name(i) for i in range(count)],
        system_toolkit=find_system_toolkit() if available else None,
        installed_mmcv=_installed_mmcv() if available else None,
        **common,  # type: ignore[arg-type]
    )


def verify_cuda_kernels() -> str:
    """Check that the installed mmcv runs its own CUDA kernel on GPU 0; say what was checked.

    Raises:
        RuntimeError: when mmcv was compiled without CUDA or with another release than torch,
            or when its kernel does not run on this GPU (e.g. built for other architectures).
    """
    import mmcv.ops
    import torch

    built = str(mmcv.ops.get_compiling_cuda_version()).strip()
    if torch.version.cuda is None or built == "not available" or \
            cuda_release(built) != cuda_release(torch.version.cuda):
        raise RuntimeError(f"mmcv {importlib.metadata.version('mmcv')} has CUDA kernels "
                           f"{built!r}, torch has CUDA {torch.version.cuda}")
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0]], device="cuda")
    _, keep = mmcv.ops.nms(boxes, torch.tensor([0.9, 0.8], device="cuda"), 0.5)
    if keep.tolist() != [0]:
        raise RuntimeError(f"mmcv.ops.nms on CUDA kept {keep.tolist()}, expected [0]")
    return (f"mmcv {importlib.metadata.version('mmcv')}: CUDA {built} kernels run on "
            f"{torch.cuda.get_device_name(0)}")


def main(argv: Sequence[str] | None = None) -> int:
    """``plan``: print :func:`shell_assignments` of this machine's plan; ``verify``: see
    :func:`verify_cuda_kernels`. Returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    plan_parser = sub.add_parser("plan", help="print the plan as bash assignments")
    plan_parser.add_argument("--find-links", default="",
                             help="wheel folders, space-separated (pip's PIP_FIND_LINKS)")
    plan_parser.add_argument("--target", action="append", default=[], metavar="MAJOR.MINOR",
                             help="plan a CUDA build for GPUs of this compute capability "
                                  "elsewhere (repeatable; no GPU needed here)")
    sub.add_parser("verify", help="check that mmcv's CUDA kernels run on this GPU")
    args = parser.parse_args(argv)
    try:
        if args.command == "plan":
            targets = [parse_capability(text) for text in args.target]
            print(shell_assignments(plan_mmcv(gather_facts(args.find_links, targets))), end="")
        else:
            print(f"[setup] {verify_cuda_kernels()}")
    except (ValueError, RuntimeError) as err:
        print(f"[setup] {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
