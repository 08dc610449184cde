"""The set-up's mmcv plan (mmimb/setup_plan.py) on simulated machines: GPUs, toolkits, wheels.

No GPU is needed: every fact the plan reads is given here. The CUDA build itself is not run.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from packaging.version import Version

from mmimb.setup_plan import (
    MachineFacts,
    Toolkit,
    cuda_arch_list,
    describe_kernels,
    find_system_toolkit,
    gather_facts,
    local_tag,
    parse_capability,
    parse_nvcc_release,
    plan_mmcv,
    reusable_wheel,
    shell_assignments,
    tag_covers,
    wheel_candidates,
)

SITE = "/venv/lib/python3.11/site-packages"
CPU_WHEEL = "/shared/wheels/mmcv-2.1.0-cp311-cp311-linux_x86_64.whl"
CU130_SM90 = "/repo/.cache/wheels/cuda/mmcv-2.1.0+cu130.sm90-cp311-cp311-linux_x86_64.whl"
#: torch 2.14.1+cu130's torch.cuda.get_arch_list()
TORCH_ARCHES = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]
#: `nvcc --version` of the CUDA 13.0 toolkit.
NVCC_13_0 = """nvcc: NVIDIA (R) Cuda compiler driver
Copyright (c) 2005-2025 NVIDIA Corporation
Built on Wed_Aug_20_01:58:59_PM_PDT_2025
Cuda compilation tools, release 13.0, V13.0.88
Build cuda_13.0.r13.0/compiler.36424714_0
"""


def gpu_machine(**changes: object) -> MachineFacts:
    """One H200 (sm 9.0), torch 2.14.1+cu130, no toolkit, no wheels, nothing installed."""
    facts: dict[str, object] = dict(
        cuda_available=True, capabilities=[(9, 0)], device_names=["NVIDIA H200"],
        torch_cuda="13.0", torch_arches=TORCH_ARCHES, site_packages=SITE)
    facts.update(changes)
    return MachineFacts(**facts)  # type: ignore[arg-type]


def test_cpu_machine_keeps_todays_path() -> None:
    # torch 2.14.1+cu130 on a machine without a GPU, with the CPU wheel and even a CUDA wheel
    # around: the CPU path, and nothing of the CUDA path leaks into the shell variables.
    facts = MachineFacts(cuda_available=False, torch_cuda="13.0", torch_arches=TORCH_ARCHES,
                         site_packages=SITE, wheels=[CU130_SM90, CPU_WHEEL],
                         installed_mmcv="2.1.0")
    plan = plan_mmcv(facts)
    assert (plan.kind, plan.wheel, plan.build_env, plan.compiler_packages) == ("cpu", None, {}, ())
    shell = shell_assignments(plan)
    assert "MMCV_PLAN=cpu\n" in shell and "MMCV_BUILD_ENV=()\n" in shell
    # A GPU that torch cannot use (no CUDA build of torch) is a CPU machine too.
    assert plan_mmcv(gpu_machine(torch_cuda=None)).kind == "cpu"


def test_gpu_with_matching_system_nvcc_builds_with_it() -> None:
    plan = plan_mmcv(gpu_machine(system_toolkit=Toolkit("/usr/local/cuda", "13.0")))
    assert plan.kind == "cuda" and plan.compiler == "system"
    assert plan.build_env == {"FORCE_CUDA": "1", "MMCV_WITH_OPS": "1",
                              "TORCH_CUDA_ARCH_LIST": "9.0", "CUDA_HOME": "/usr/local/cuda"}
    assert plan.compiler_packages == () and plan.cudart == ""
    assert plan.local_tag == "cu130.sm90" and not plan.keep_installed and plan.wheel is None


def test_build_sees_the_cuda_library_headers_torch_was_installed_with() -> None:
    # A minimal toolkit (nvcc and the runtime) lacks cusparse.h, which torch's
    # ATen/cuda/CUDAContextLight.h includes: the headers of torch's NVIDIA packages go on CPATH.
    headers = [f"{SITE}/nvidia/cu13/include"]
    for toolkit in (Toolkit("/usr/local/cuda", "13.0"), None):
        plan = plan_mmcv(gpu_machine(system_toolkit=toolkit, torch_cuda_headers=headers))
        assert plan.build_env["CPATH"] == headers[0]
    plan = plan_mmcv(gpu_machine(torch_cuda_headers=[*headers, "/x/include"]))
    assert plan.build_env["CPATH"] == f"{headers[0]}:/x/include"


@pytest.mark.parametrize("toolkit", [None, Toolkit("/usr/local/cuda-12.4", "12.4"),
                                     Toolkit("/opt/cuda", "13.1")])
def test_gpu_without_matching_nvcc_takes_nvidias_packages(toolkit: Toolkit | None) -> None:
    # No toolkit, another major release, another minor release: nvcc of torch's release from
    # PyPI, and CUDA_HOME where those packages install (site-packages/nvidia/cu13).
    plan = plan_mmcv(gpu_machine(system_toolkit=toolkit))
    assert plan.compiler == "pip"
    assert plan.compiler_packages == (
        "nvidia-cuda-nvcc==13.0.*", "nvidia-cuda-crt==13.0.*", "nvidia-nvvm==13.0.*",
        "nvidia-cuda-runtime==13.0.*", "nvidia-cuda-cccl==13.0.*")
    assert plan.build_env["CUDA_HOME"] == f"{SITE}/nvidia/cu13"
    assert plan.build_env["FORCE_CUDA"] == "1"
    assert plan.cudart == f"{SITE}/nvidia/cu13/lib/libcudart.so.13"


def test_pip_packages_follow_torchs_cuda_release() -> None:
    plan = plan_mmcv(gpu_machine(torch_cuda="13.2", system_toolkit=Toolkit("/x", "13.0")))
    assert plan.compiler_packages[0] == "nvidia-cuda-nvcc==13.2.*"
    assert plan.local_tag == "cu132.sm90"
    # CUDA 12's packages have no toolkit layout: the plan says to install the toolkit.
    with pytest.raises(ValueError, match="CUDA 12.8 toolkit"):
        plan_mmcv(gpu_machine(torch_cuda="12.8"))
    # ... unless the toolkit is there.
    assert plan_mmcv(gpu_machine(torch_cuda="12.8",
                                 system_toolkit=Toolkit("/c", "12.8"))).compiler == "system"


def test_arch_list_from_several_gpus() -> None:
    # Deduplicated and sorted by number, not as text ('12.0' after '9.0').
    assert cuda_arch_list([(9, 0), (8, 0), (9, 0)]) == ["8.0", "9.0"]
    assert cuda_arch_list([(12, 0), (9, 0), (8, 6)], TORCH_ARCHES) == ["8.6", "9.0", "12.0"]
    # A GPU newer than torch's newest arch is built for that arch, as torch itself does.
    assert cuda_arch_list([(12, 1), (8, 0)], TORCH_ARCHES) == ["8.0", "12.0"]
    plan = plan_mmcv(gpu_machine(capabilities=[(9, 0), (8, 0), (9, 0)],
                                 system_toolkit=Toolkit("/usr/local/cuda", "13.0")))
    assert plan.build_env["TORCH_CUDA_ARCH_LIST"] == "8.0;9.0" == plan.arch_list
    assert plan.local_tag == "cu130.sm80.sm90"
    with pytest.raises(ValueError, match="capabilities"):
        cuda_arch_list([])


def test_local_tag_is_a_pep440_local_version() -> None:
    version = Version(f"2.1.0+{local_tag('13.0', ['8.0', '9.0', '12.0'])}")
    assert version.local == "cu130.sm80.sm90.sm120" and version.public == "2.1.0"


def test_cpu_only_wheel_or_install_is_never_reused_on_gpu() -> None:
    plan = plan_mmcv(gpu_machine(wheels=[CPU_WHEEL], installed_mmcv="2.1.0"))
    assert plan.wheel is None and not plan.keep_installed and plan.compiler == "pip"
    assert not tag_covers("2.1.0", "13.0", ["9.0"])


def test_cuda_wheel_for_this_machine_is_reused() -> None:
    plan = plan_mmcv(gpu_machine(wheels=[CPU_WHEEL, CU130_SM90]))
    assert plan.wheel == CU130_SM90 and plan.build_env == {} and plan.compiler_packages == ()
    assert f"MMCV_WHEEL={CU130_SM90}\n" in shell_assignments(plan)


@pytest.mark.parametrize(("name", "reused"), [
    ("mmcv-2.1.0+cu130.sm80.sm90-cp311-cp311-linux_x86_64.whl", True),   # covers sm 9.0
    ("mmcv-2.1.0+cu130.sm80-cp311-cp311-linux_x86_64.whl", False),       # no sm 9.0 kernels
    ("mmcv-2.1.0+cu130-cp311-cp311-linux_x86_64.whl", False),            # archs unknown
    ("mmcv-2.1.0+cu128.sm90-cp311-cp311-linux_x86_64.whl", False),       # another CUDA
    ("mmcv-2.1.0+cu130.sm90-cp312-cp312-linux_x86_64.whl", False),       # another Python
    ("mmcv-2.1.0+cu130.sm90-cp311-cp311-linux_aarch64.whl", False),      # another platform
    ("mmcv-2.2.0+cu130.sm90-cp311-cp311-linux_x86_64.whl", False),       # another mmcv
    ("mmcv-2.1.0+cu130.sm90-1-cp311-cp311-linux_x86_64.whl", True),      # with a build tag
    ("mmcv_lite-2.1.0+cu130.sm90-cp311-cp311-linux_x86_64.whl", False),  # no ops at all
])
def test_which_wheels_fit_an_sm90_machine(name: str, reused: bool) -> None:
    found = reusable_wheel([f"/w/{name}"], "13.0", ["9.0"], "cp311", "linux_x86_64")
    assert (found is not None) == reused


def test_installed_cuda_mmcv_is_kept_only_when_it_covers_the_gpus() -> None:
    assert plan_mmcv(gpu_machine(installed_mmcv="2.1.0+cu130.sm90")).keep_installed
    # A second GPU of another generation needs a new build.
    plan = plan_mmcv(gpu_machine(capabilities=[(9, 0), (8, 0)],
                                 installed_mmcv="2.1.0+cu130.sm90"))
    assert not plan.keep_installed and plan.arch_list == "8.0;9.0"


def test_shell_assignments_survive_bash(tmp_path: Path) -> None:
    # What setup_env.sh evals: paths with spaces, ';' in the arch list, arrays for env and pip.
    site = str(tmp_path / "my venv/site-packages")
    plan = plan_mmcv(gpu_machine(capabilities=[(8, 0), (9, 0)], site_packages=site))
    script = shell_assignments(plan) + (
        'printf "%s\\n" "$MMCV_PLAN" "$MMCV_ARCH_LIST" "$MMCV_CUDART" "$MMCV_KEEP_INSTALLED" '
        '"${#MMCV_BUILD_ENV[@]}" "${MMCV_BUILD_ENV[@]}" "${MMCV_COMPILER_PACKAGES[0]}"')
    out = subprocess.run(["bash", "-euc", script], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert out == ["cuda", "8.0;9.0", f"{site}/nvidia/cu13/lib/libcudart.so.13", "0", "4",
                   "FORCE_CUDA=1", "MMCV_WITH_OPS=1", "TORCH_CUDA_ARCH_LIST=8.0;9.0",
                   f"CUDA_HOME={site}/nvidia/cu13", "nvidia-cuda-nvcc==13.0.*"]


def test_nvcc_release_and_system_toolkit(tmp_path: Path) -> None:
    assert parse_nvcc_release(NVCC_13_0) == "13.0"
    assert parse_nvcc_release("command not found") is None
    # A fake toolkit: bin/nvcc prints the text above, include/cuda_runtime.h exists. A wrapper
    # nvcc on PATH whose parent has no headers (/usr/local/bin/nvcc) is not taken for one.
    home = tmp_path / "cuda-13.0"
    (home / "bin").mkdir(parents=True)
    (home / "include").mkdir()
    (home / "include/cuda_runtime.h").touch()
    (home / "bin/nvcc").write_text(f"#!/bin/sh\ncat <<'EOF'\n{NVCC_13_0}EOF\n")
    (home / "bin/nvcc").chmod(0o755)
    wrapper = tmp_path / "usr/bin"
    wrapper.mkdir(parents=True)
    (wrapper / "nvcc").write_text(f"#!/bin/sh\nexec {home}/bin/nvcc \"$@\"\n")
    (wrapper / "nvcc").chmod(0o755)
    assert find_system_toolkit({"PATH": str(wrapper), "CUDA_HOME": str(home)}) == \
        Toolkit(str(home), "13.0")
    assert find_system_toolkit({"PATH": f"{home}/bin"}) == Toolkit(str(home), "13.0")
    no_toolkit = find_system_toolkit({"PATH": str(wrapper)})
    assert no_toolkit is None or no_toolkit.home == "/usr/local/cuda"


def test_wheel_candidates_look_in_cuda_subfolders(tmp_path: Path) -> None:
    (tmp_path / "cuda").mkdir()
    for name in (Path(CU130_SM90).name, "other.whl"):
        (tmp_path / "cuda" / name).touch()
    (tmp_path / Path(CPU_WHEEL).name).touch()
    found = wheel_candidates(f"https://example.invalid/simple {tmp_path} /does/not/exist")
    assert [Path(p).relative_to(tmp_path).as_posix() for p in found] == [
        f"cuda/{Path(CU130_SM90).name}", Path(CPU_WHEEL).name]


@pytest.mark.parametrize(("available", "mmcv_cuda", "routed", "in_use"), [
    (False, "not available", False, "in use: mmcv's CPU kernels"),
    (True, "13.0", False, "in use on CUDA tensors: mmcv's own CUDA 13.0 kernels"),
    (True, "not available", True, "in use on CUDA tensors: mmimb's fallback"),
    (True, "not available", False, "in use on CUDA tensors: none"),
])
def test_describe_kernels(available: bool, mmcv_cuda: str, routed: bool, in_use: str) -> None:
    text = describe_kernels(available, ["NVIDIA H200"] if available else [], "2.1.0", mmcv_cuda,
                            routed, ["nms", "roi_align_forward"])
    assert text.splitlines()[-1].startswith(in_use)
    assert ("CPU kernels only" in text) == (mmcv_cuda == "not available")
    assert ("nms, roi_align_forward" in text) == (available and routed
                                                  and mmcv_cuda == "not available")


def test_cross_build_plans_for_target_gpus_without_one() -> None:
    # MMIMB_CUDA_TARGETS on a CPU machine: the plan a 9.0 + 8.0 machine would get, from this
    # machine's torch, and never "keep the installed mmcv" (here a CPU one).
    import torch

    facts = gather_facts("", [(9, 0), (8, 0)])
    assert facts.cuda_available and facts.installed_mmcv is None
    assert facts.torch_cuda == torch.version.cuda
    plan = plan_mmcv(facts)
    if torch.version.cuda is None:  # a CPU-only torch cannot build CUDA kernels
        assert plan.kind == "cpu"
        return
    assert (plan.kind, plan.arch_list, plan.keep_installed) == ("cuda", "8.0;9.0", False)
    assert plan.local_tag == local_tag(torch.version.cuda, ["8.0", "9.0"])
    assert plan.build_env["FORCE_CUDA"] == "1" and "none here" in plan.reason


@pytest.mark.parametrize("text", ["sm_90", "9", "9.0.1", "", "nine"])
def test_bad_target_capability_names_the_form(text: str) -> None:
    assert parse_capability(" 9.0 ") == (9, 0)
    with pytest.raises(ValueError, match=r"target must be a compute capability MAJOR\.MINOR"):
        parse_capability(text)
