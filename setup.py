"""Build of the one C extension; everything else about the package is in pyproject.toml.

``router._fastfeat`` (router/_fastfeat.c) is the learned router's featuriser in C. It is optional: where
no C compiler is available the install still succeeds and router/native.py reports it missing, so
router/features.py uses its pure-Python path (same features, slower).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "router._fastfeat",
            sources=["router/_fastfeat.c"],
            depends=[f"router/_ff_{part}.c" for part in ("common", "terms", "chars", "trees", "dense")],
            # no fused multiply-adds: every float result must equal numpy's, bit for bit
            extra_compile_args=["-O2", "-ffp-contract=off"],
            optional=True,
        )
    ]
)
