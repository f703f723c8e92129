"""Build of the compiled extension ``ctrlaug._C`` (C++ CPU always, CUDA when available).

One build, two front ends: this file and CMakeLists.txt both compile exactly the sources that
``csrc_sources()`` lists (csrc/*.cpp and csrc/cpu/*.cpp, plus csrc/cuda/*.cpp and csrc/cuda/*.cu for CUDA). CMake
reads the same globs; see README "Building".

Environment switches:
  CTRLAUG_SKIP_CUDA=1      build the CPU extension only, even when torch has CUDA and nvcc exists
  CTRLAUG_SKIP_EXT=1       build no extension at all (pure-Python install, reference/Triton only)
  TORCH_CUDA_ARCH_LIST     honoured by torch's CUDAExtension (e.g. "8.0;9.0")
  MAX_JOBS                 parallel compile jobs (ninja)
"""

import glob
import os
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def csrc_sources(with_cuda: bool) -> list[str]:
    src = sorted(glob.glob("csrc/*.cpp")) + sorted(glob.glob("csrc/cpu/*.cpp"))
    if with_cuda:
        src += sorted(glob.glob("csrc/cuda/*.cpp")) + sorted(glob.glob("csrc/cuda/*.cu"))
    return src


def ext_modules():
    if os.environ.get("CTRLAUG_SKIP_EXT", "0") == "1":
        return [], {}
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    with_cuda = (
        torch.version.cuda is not None
        and CUDA_HOME is not None
        and os.environ.get("CTRLAUG_SKIP_CUDA", "0") != "1"
    )
    # No C++ standard flag: torch's BuildExtension picks the one its headers need (C++20 for
    # current torch, C++17 before); forcing one breaks the other. CMakeLists.txt takes the same
    # standard from torch's CMake target, and names the same flags (tests/test_build.py).
    cxx = ["-O3", "-fopenmp", "-DNDEBUG"]
    link = ["-fopenmp"]
    include_dirs = [os.path.join(ROOT, "csrc")]
    if with_cuda:
        # CUDA 13 wheels keep cusparse.h and friends under site-packages/nvidia/cu13/include.
        for sp in sys.path:
            inc = os.path.join(sp, "nvidia", "cu13", "include")
            if os.path.isdir(inc):
                include_dirs.append(inc)
        nvcc = ["-O3", "-DNDEBUG", "--use_fast_math", "-lineinfo", "--threads", "4"]
        ext = CUDAExtension(
            "ctrlaug._C",
            csrc_sources(True),
            include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx + ["-DCTRLAUG_WITH_CUDA"], "nvcc": nvcc},
            extra_link_args=link,
        )
    else:
        ext = CppExtension(
            "ctrlaug._C",
            csrc_sources(False),
            include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx},
            extra_link_args=link,
        )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext, cmdclass = ext_modules()

setup(
    packages=find_packages(include=["ctrlaug", "ctrlaug.*"]) + ["ctrlaug.kernels"],
    package_dir={"ctrlaug.kernels": "kernels"},
    ext_modules=ext,
    cmdclass=cmdclass,
)
