"""Builds the one compiled part of tailgate: the fixed-order matmul (pipeline/engines/fixedmm.cpp,
fixedmm4.cpp).

Everything else is in pyproject.toml. The extension is compiled against the torch that is
installed, so it needs that torch at build time: `make install` installs torch first and then
this package with `--no-build-isolation`. Without torch (an isolated build) the package installs
without the extension and the engine says so (pipeline/engines/fixedmm.py).
"""

from setuptools import setup

try:
    from torch.utils.cpp_extension import BuildExtension, CppExtension
except ImportError:  # an isolated build: no torch to compile against
    setup()
else:
    setup(
        ext_modules=[CppExtension(
            "pipeline.engines._fixedmm", ["pipeline/engines/fixedmm.cpp", "pipeline/engines/fixedmm4.cpp"],
            depends=["pipeline/engines/fixedmm.h"],
            # -ffp-contract=off: no multiply-add the source does not write (the order is the arithmetic)
            extra_compile_args=["-O3", "-fopenmp", "-ffp-contract=off"], extra_link_args=["-fopenmp"])],
        cmdclass={"build_ext": BuildExtension.with_options(use_ninja=False)},
    )
