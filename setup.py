"""The C parts (the rest is in pyproject.toml): the converter of finished spans
(otel_workflow/_native/spanrows.c) and the span processor's per-span hooks
(otel_workflow/_native/spanstart.c), both applying the recognition rules through
otel_workflow/_native/conventions.h, with the keys Python gives them (otel_workflow/_native/rules.py);
and the collector's protobuf parser (otel_workflow/_native/otlpwire.c).

`optional=True`: where no C compiler is found the package installs without them and
`otel_workflow.ingest.convert`, `otel_workflow.sdk.processor` and `otel_workflow.otlp.decode` do the
same work in Python (the same rows, attributes and spans, several times the CPU time).
"""

from setuptools import Extension, setup


def _c_module(name: str) -> Extension:
    return Extension(
        f"otel_workflow._native.{name}",
        sources=[f"otel_workflow/_native/{name}.c"],
        depends=["otel_workflow/_native/conventions.h"],
        extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra", "-Wno-unused-parameter"],
        optional=True,
    )


setup(ext_modules=[_c_module("spanrows"), _c_module("spanstart"), _c_module("otlpwire")])
