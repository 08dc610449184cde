"""Say which kernels mmcv's ops run on this machine: mmcv's CUDA kernels, or mmimb's fallback.

mmcv built without CUDA kernels (the wheel in ``../shared/wheels``) cannot run its ops on CUDA
tensors; ``import mmimb`` then routes the ones our detectors use to torchvision (see
``mmimb/ops_fallback.py``). This prints what applies here, e.g.::

    torch 2.14.1 (CUDA 13.0)
    mmcv 2.1.0+cu130.sm90: CPU and CUDA 13.0 kernels
    GPUs seen by torch: NVIDIA H200
    in use on CUDA tensors: mmcv's own CUDA 13.0 kernels
"""

import argparse
import importlib.metadata

import mmcv._ext
import torch

import mmimb  # noqa: F401  (routes mmcv's ops to the fallback when their CUDA kernels are missing)
from mmimb.ops_fallback import FALLBACKS, RoutedKernel, mmcv_cuda_version
from mmimb.setup_plan import describe_kernels


def parse_args() -> argparse.Namespace:
    return argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()


def main() -> None:
    parse_args()
    available = torch.cuda.is_available()
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    print(f"torch {torch.__version__} (CUDA {torch.version.cuda})")
    print(describe_kernels(available, names, importlib.metadata.version("mmcv"),
                           mmcv_cuda_version(), isinstance(mmcv._ext.nms, RoutedKernel),
                           list(FALLBACKS)))


if __name__ == "__main__":
    main()
