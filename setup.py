"""Builds inception_fast._C: the CPU kernels always, the CUDA kernels when they can be built; and
inception_fast._onednn (optimize()'s CPU convolutions on kept oneDNN primitives: the CPU kernels of
two ops whose schemas _C declares, so it loads only with _C) when oneDNN's headers
and library are installed (the onednn-cpu-gomp and onednn-devel-cpu-gomp wheels, which put them in
<prefix>/include and <prefix>/lib; or DNNL_ROOT).

CUDA is built when torch has CUDA and a toolkit is found (CUDA_HOME / nvcc), or when
FORCE_CUDA=1 (then TORCH_CUDA_ARCH_LIST picks the targets; default "8.0;8.6;8.9;9.0").
FORCE_CUDA=0 builds the CPU kernels only. Build with `pip install --no-build-isolation -e .`
so the extension is compiled against the torch it will run with.
"""
import glob
import os
import sys

from setuptools import find_packages, setup

import torch
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCH_LIST = "8.0;8.6;8.9;9.0"
# Python's own CFLAGS carry -g: debug information for every libtorch template a source instantiates
# is half of its compile time (csrc/autograd/max_pool.cpp: 40 s with it, 22 s without; its object
# 11.6 MB, 0.34 MB). Left out unless INCEPTION_FAST_DEBUG_INFO=1.
NO_DEBUG_INFO = [] if os.environ.get("INCEPTION_FAST_DEBUG_INFO") == "1" else ["-g0"]


def _rel(paths):
    return sorted(os.path.relpath(p, ROOT) for p in paths)


def _toolkit_ok():
    # `which nvcc` can make torch guess a CUDA_HOME (e.g. /usr/local) that holds no CUDA headers.
    home = cpp_extension.CUDA_HOME
    return home is not None and os.path.exists(os.path.join(home, "include", "cuda_runtime.h"))


def _want_cuda():
    force = os.environ.get("FORCE_CUDA", "").strip()
    if force:
        return force == "1"
    if torch.version.cuda is None or cpp_extension.CUDA_HOME is None:
        return False
    if not _toolkit_ok():
        print(f"inception_fast: CUDA_HOME={cpp_extension.CUDA_HOME} has no include/cuda_runtime.h; building the "
              "CPU kernels only (set CUDA_HOME to the toolkit, e.g. /usr/local/cuda, to build the CUDA ones)",
              file=sys.stderr)
        return False
    return True


def _cuda_include_dirs():
    # torch's CUDA headers include cusparse.h etc.; pip-installed CUDA keeps them under
    # site-packages/nvidia/cu*/include rather than in the toolkit.
    dirs = []
    for site in {os.path.dirname(os.path.dirname(torch.__file__))}:
        dirs += sorted(glob.glob(os.path.join(site, "nvidia", "cu*", "include")))
        dirs += sorted(glob.glob(os.path.join(site, "nvidia", "*", "include")))
    return dirs


def _onednn_root():
    """The prefix that holds include/dnnl.hpp and lib/libdnnl.so.3, or None."""
    for root in (os.environ.get("DNNL_ROOT"), sys.prefix):
        if root and os.path.exists(os.path.join(root, "include", "dnnl.hpp")) \
                and os.path.exists(os.path.join(root, "lib", "libdnnl.so.3")):
            return root
    return None


def _onednn_extension():
    root = _onednn_root()
    if root is None:
        print("inception_fast: oneDNN (onednn-cpu-gomp + onednn-devel-cpu-gomp) not found: optimize() will run its "
              "CPU convolutions through ATen", file=sys.stderr)
        return []
    lib = os.path.join(root, "lib")
    return [cpp_extension.CppExtension(
        "inception_fast._onednn", _rel([os.path.join(ROOT, "csrc", "onednn", "onednn_conv.cpp")]),
        include_dirs=[os.path.join(root, "include")],
        extra_compile_args={"cxx": ["-O3", "-DTORCH_EXTENSION_NAME=_onednn"] + NO_DEBUG_INFO},
        # by soname; the rpath finds it in the environment it was built in (Python also preloads it)
        extra_link_args=[f"-L{lib}", "-l:libdnnl.so.3", f"-Wl,-rpath,{lib}"])]


def extensions():
    # csrc/ops.cpp (the schemas), one folder per backend (one file per op), runtime/ (memory pool, GEMM
    # choice, the Python module, replay) and testing/ (the CUDA kernels' CPU emulation the tests run).
    cpu_sources = _rel([os.path.join(ROOT, "csrc", "ops.cpp")]
                       + [p for d in ("cpu", "composite", "autograd", "runtime", "testing")
                          for p in glob.glob(os.path.join(ROOT, "csrc", d, "*.cpp"))])
    cuda_sources = _rel(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))
    cxx = ["-O3", "-fopenmp", "-fno-math-errno", "-DTORCH_EXTENSION_NAME=_C"] + NO_DEBUG_INFO
    link = ["-fopenmp"]
    if _want_cuda():
        if not _toolkit_ok():
            sys.exit(f"FORCE_CUDA=1 but no CUDA toolkit was found (CUDA_HOME={cpp_extension.CUDA_HOME}): "
                     "set CUDA_HOME, e.g. /usr/local/cuda")
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCH_LIST)
        nvcc = ["-O3", "--expt-relaxed-constexpr", "-lineinfo", "-DTORCH_EXTENSION_NAME=_C"]
        return _onednn_extension() + [cpp_extension.CUDAExtension(
            "inception_fast._C", cpu_sources + cuda_sources,
            include_dirs=[os.path.join(ROOT, "csrc")] + _cuda_include_dirs(),
            define_macros=[("WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx, "nvcc": nvcc}, extra_link_args=link)]
    return _onednn_extension() + [cpp_extension.CppExtension(
        "inception_fast._C", cpu_sources, include_dirs=[os.path.join(ROOT, "csrc")],
        extra_compile_args={"cxx": cxx}, extra_link_args=link)]


setup(
    packages=find_packages(include=["inception_fast", "inception_fast.*"]),
    ext_modules=extensions(),
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)
