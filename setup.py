"""Build gru_native._C: the CPU kernels always, the CUDA kernels when torch has CUDA and nvcc.

Install with the torch you will run it with already installed:

    pip install --no-build-isolation -e .

(An isolated build would resolve `torch` from the registry afresh: several GB of CUDA wheels, and a
binary built against a torch other than yours.)

Environment switches:
    GRU_NATIVE_CUDA=0|1     force the CUDA kernels off / on (default: on when torch has CUDA and
                            nvcc is found)
    GRU_NATIVE_PORTABLE=1   do not tune the CPU kernels for the build machine (no -march=native)
    DEBUG=1                 -O0 -g
    TORCH_CUDA_ARCH_LIST    CUDA architectures (default: torch's choice, i.e. the visible GPU)
    MAX_JOBS                parallel compile jobs (ninja)
"""

import glob
import os
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name):
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    if value not in ("0", "1"):
        raise ValueError(f"{name} must be 0 or 1, got {value!r}")
    return value == "1"


def _want_cuda():
    forced = _flag("GRU_NATIVE_CUDA")
    import torch
    from torch.utils.cpp_extension import CUDA_HOME

    available = torch.version.cuda is not None and CUDA_HOME is not None
    if forced is None:
        return available
    if forced and not available:
        raise RuntimeError(
            "GRU_NATIVE_CUDA=1 but this torch has no CUDA "
            f"(torch.version.cuda={torch.version.cuda}) or nvcc was not found (CUDA_HOME={CUDA_HOME})"
        )
    return forced


def _text_define(name, text):
    # Hex-encoded, so that the value is one preprocessor number: no shell or ninja quoting, and no
    # macro expansion of its words (build_info() decodes it).
    return f"-D{name}=0x{text.encode().hex()}"


def get_extensions():
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    debug = _flag("DEBUG") is True
    portable = _flag("GRU_NATIVE_PORTABLE") is True
    with_cuda = _want_cuda()

    opt = ["-O0", "-g"] if debug else ["-O3"]
    arch = [] if portable else ["-march=native"]
    # OpenMP: the CPU kernels run each layer in one parallel region. At run time this binds to
    # the libgomp torch has already loaded (same soname), so there is one thread pool.
    openmp = ["-fopenmp"] if sys.platform.startswith("linux") else []
    cxx = opt + arch + openmp + ["-fno-math-errno", "-Wall", "-Wno-unknown-pragmas"]
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    sources += sorted(glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    define_macros = [("GRU_NATIVE_PORTABLE", "1" if portable else "0")]

    if with_cuda:
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cpp")))
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
        define_macros.append(("GRU_NATIVE_WITH_CUDA", "1"))
        try:  # the -gencode flags torch will use (TORCH_CUDA_ARCH_LIST, or the visible GPU)
            from torch.utils.cpp_extension import _get_cuda_arch_flags
            arch_list = " ".join(_get_cuda_arch_flags())
        except Exception:  # private helper: fall back to what the user asked for
            arch_list = os.environ.get("TORCH_CUDA_ARCH_LIST", "") or "torch default"
        nvcc = opt[:1] + ["-lineinfo", "--expt-relaxed-constexpr"]
        info = [
            _text_define("GRU_NATIVE_CXX_FLAGS", " ".join(cxx)),
            _text_define("GRU_NATIVE_NVCC_FLAGS", " ".join(nvcc)),
            _text_define("GRU_NATIVE_CUDA_ARCH_LIST", arch_list),
        ]
        extra = {"cxx": cxx + info, "nvcc": nvcc}
        ext = CUDAExtension
    else:
        extra = {"cxx": cxx + [_text_define("GRU_NATIVE_CXX_FLAGS", " ".join(cxx))]}
        ext = CppExtension

    return [
        ext(
            name="gru_native._C",
            sources=sources,
            include_dirs=[os.path.join(ROOT, "csrc")],
            define_macros=define_macros,
            extra_compile_args=extra,
            extra_link_args=openmp,
        )
    ]


def main():
    from torch.utils.cpp_extension import BuildExtension

    setup(
        ext_modules=get_extensions(),
        cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    )


if __name__ == "__main__":
    main()
