"""Builds the compiled backends of dc_kernels.

* ``dc_kernels._cpu``  (csrc/cpu):  C++17 + OpenMP, always built; a compile error fails the
  install. Portable x86-64 code: AVX-512/AVX2 paths are chosen at run time, never -march=native.
* ``dc_kernels._cuda`` (csrc/cuda): CUDA kernels + a pybind11 binding, built when nvcc is found
  (CUDA_HOME, then PATH). ``DC_SKIP_CUDA_BUILD=1`` skips it; ``DC_CUDA_ARCHS`` (default
  ``80;90``) picks the SASS targets, and PTX of the highest is embedded for newer cards.

Neither extension includes torch headers: kernels take raw pointers, sizes and a stream.
"""

import os
import shutil
import subprocess
import sys
import sysconfig
import warnings
from pathlib import Path

from pybind11.setup_helpers import Pybind11Extension
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).parent.resolve()


def _sources(folder: str, *patterns: str) -> list[str]:
    files = []
    for pattern in patterns:
        files += sorted(str(p.relative_to(ROOT)) for p in (ROOT / folder).glob(pattern))
    return files


def find_nvcc() -> str | None:
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if cuda_home and (Path(cuda_home) / "bin" / "nvcc").exists():
        return str(Path(cuda_home) / "bin" / "nvcc")
    return shutil.which("nvcc")


def cuda_root(nvcc: str) -> Path:
    """The CUDA toolkit folder (with include/cuda_runtime.h) that ``nvcc`` belongs to.

    nvcc may be a wrapper script outside the toolkit (e.g. /usr/local/bin/nvcc), so its own
    parent is only one candidate.
    """
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"),
                  str(Path(nvcc).resolve().parent.parent), "/usr/local/cuda"]
    for folder in filter(None, candidates):
        if (Path(folder) / "include" / "cuda_runtime.h").exists():
            return Path(folder)
    raise RuntimeError(f"cannot find the CUDA toolkit of {nvcc} (set CUDA_HOME)")


def cuda_archs() -> list[str]:
    archs = os.environ.get("DC_CUDA_ARCHS", "80;90").replace(",", ";")
    return [a.strip() for a in archs.split(";") if a.strip()]


class CudaExtension(Extension):
    """An extension whose .cu sources go through nvcc; the rest through the C++ compiler."""


class BuildExt(build_ext):
    def build_extension(self, ext: Extension) -> None:
        if isinstance(ext, CudaExtension):
            self._build_cuda(ext)
        else:
            super().build_extension(ext)

    def _build_cuda(self, ext: CudaExtension) -> None:
        nvcc = find_nvcc()
        cuda_home = cuda_root(nvcc)
        build_temp = Path(self.build_temp) / "cuda"
        build_temp.mkdir(parents=True, exist_ok=True)
        gencode = []
        archs = cuda_archs()
        for arch in archs:
            gencode += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
        gencode += ["-gencode", f"arch=compute_{archs[-1]},code=compute_{archs[-1]}"]
        objects = []
        for src in ext.sources:
            if not src.endswith(".cu"):
                continue
            obj = build_temp / (Path(src).stem + ".o")
            cmd = [nvcc, "-c", src, "-o", str(obj), "-O3", "-std=c++17", "-Xcompiler", "-fPIC",
                   "--expt-relaxed-constexpr", "-lineinfo", *gencode,
                   *(f"-I{folder}" for folder in ext.include_dirs)]
            print(" ".join(cmd))
            subprocess.check_call(cmd, cwd=ROOT)
            objects.append(str(obj))
        # The binding is plain C++ (pybind11 + cuda_runtime.h); link against static cudart so the
        # module needs no CUDA runtime library on the loader path.
        ext.sources = [s for s in ext.sources if not s.endswith(".cu")]
        ext.extra_objects = objects
        ext.include_dirs = [*ext.include_dirs, str(cuda_home / "include")]
        lib_dirs = [cuda_home / "lib64", cuda_home / "lib", cuda_home / "targets/x86_64-linux/lib"]
        ext.library_dirs = [*ext.library_dirs, *(str(p) for p in lib_dirs if p.exists())]
        ext.libraries = [*ext.libraries, "cudart_static", "dl", "rt", "pthread"]
        super().build_extension(ext)


def extensions() -> list[Extension]:
    openmp = ["-fopenmp"] if sys.platform != "darwin" else []
    cpu = Pybind11Extension(
        "dc_kernels._cpu",
        _sources("csrc/cpu", "*.cpp"),
        include_dirs=["csrc/cpu", "csrc/common"],
        cxx_std=17,
        extra_compile_args=["-O3", "-fno-math-errno", *openmp],
        extra_link_args=openmp,
    )
    exts = [cpu]
    cuda_sources = _sources("csrc/cuda", "*.cu", "*.cpp")
    if os.environ.get("DC_SKIP_CUDA_BUILD", "0") == "1":
        print("DC_SKIP_CUDA_BUILD=1: skipping the CUDA extension")
    elif not cuda_sources:
        pass
    elif find_nvcc() is None:
        warnings.warn("nvcc not found (set CUDA_HOME): building without the CUDA backend",
                      stacklevel=1)
    else:
        import pybind11

        exts.append(CudaExtension(
            "dc_kernels._cuda",
            cuda_sources,
            include_dirs=["csrc/cuda", "csrc/common", pybind11.get_include(),
                          sysconfig.get_paths()["include"]],
            language="c++",
            extra_compile_args=["-O3", "-std=c++17", "-fvisibility=hidden"],
        ))
    return exts


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExt})
