"""Build script for writewatch's Cython extension.

Metadata lives in pyproject.toml; this file only describes the extension,
because it needs the project's own kernel ABI header (kernel/) and numpy's.
"""
import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

if not sys.platform.startswith("linux"):
    sys.exit(
        "writewatch needs Linux: it is built on userfaultfd and the "
        "PAGEMAP_SCAN ioctl of /proc/self/pagemap (platform here: %s)" % sys.platform
    )

from Cython.Build import cythonize  # noqa: E402  (after the platform check)
import numpy  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))

extensions = [
    Extension(
        "writewatch._core",
        sources=["writewatch/_core.pyx"],
        include_dirs=[
            os.path.join(HERE, "kernel"),
            os.path.join(HERE, "writewatch", "includes"),
            numpy.get_include(),
        ],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION"), ("_GNU_SOURCE", "1")],
        extra_compile_args=["-O2", "-Wno-unused-function"],
        libraries=["pthread"],
    )
]

# Small C programs built from the same ABI header and shipped inside the
# package (writewatch/_bin/), so that `writewatch bench` and
# `writewatch doctor --selftest` need no compiler at run time.
PROGRAMS = {
    # "name": ["kernel/dir/source.c", ...],
    "ww-floor": ["kernel/floor/floor.c"],
    "ww-selftest": ["kernel/selftests/pagemap_contract.c"],
}

# Shared libraries loaded with ctypes: the C floor's scale patterns, for the
# pytest-benchmark suite (bench/), which times them in-process beside the
# backends.  name: (sources, macros)
LIBRARIES = {
    "libwwfloor.so": (["kernel/floor/floor.c"], [("WW_FLOOR_LIBRARY", "1")]),
}


class build_ext_and_programs(build_ext):
    def run(self):
        super().run()
        for name, sources in PROGRAMS.items():
            self._build_program(name, sources)
        for name, (sources, macros) in LIBRARIES.items():
            self._build_library(name, sources, macros)

    def _out_dir(self):
        if self.inplace:
            out_dir = os.path.join(HERE, "writewatch", "_bin")
        else:
            out_dir = os.path.join(self.build_lib, "writewatch", "_bin")
        os.makedirs(out_dir, exist_ok=True)
        return out_dir

    def _compile(self, sources, subdir, macros=(), extra=()):
        return self.compiler.compile(
            [os.path.join(HERE, s) for s in sources],
            output_dir=os.path.join(self.build_temp, subdir),
            include_dirs=[os.path.join(HERE, "kernel")],
            macros=[("_GNU_SOURCE", "1")] + list(macros),
            extra_postargs=["-O2", "-Wall"] + list(extra),
        )

    def _build_program(self, name, sources):
        objects = self._compile(sources, "programs")
        self.compiler.link_executable(
            objects, name, output_dir=self._out_dir(), libraries=["pthread"])

    def _build_library(self, name, sources, macros):
        # Objects of their own: the same source is compiled differently.
        objects = self._compile(sources, "lib-" + name, macros, ["-fPIC"])
        self.compiler.link_shared_object(
            objects, name, output_dir=self._out_dir(), libraries=["pthread"])


setup(
    cmdclass={"build_ext": build_ext_and_programs},
    ext_modules=cythonize(
        extensions,
        compiler_directives={"language_level": "3"},
        include_path=[os.path.join(HERE, "writewatch")],
    ),
)
