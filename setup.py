"""Build script for writewatch's Cython extension.

Metadata lives in pyproject.toml; this file only describes the extension,
because it needs the project's own kernel ABI header (kernel/) and numpy's.
"""
import os
import sys

from setuptools import Extension, setup

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

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={"language_level": "3"},
        include_path=[os.path.join(HERE, "writewatch")],
    ),
)
