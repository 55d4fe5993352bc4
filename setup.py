from setuptools import Extension, setup

# The lattice search (asrkd/latgen.c): plain C loaded with ctypes, no Python API. Where it was
# not built (a checkout on PYTHONPATH), asrkd.lattice compiles it on first use.
setup(ext_modules=[Extension("asrkd._latgen", ["asrkd/latgen.c"],
                             extra_compile_args=["-O2"], libraries=["m"])])
