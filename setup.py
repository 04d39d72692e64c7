"""The C converter of finished spans (otel_workflow/_spanrows.c); the rest is in pyproject.toml.

`optional=True`: where no C compiler is found the package installs without it and
`otel_workflow.rows` converts spans in Python (the same rows, several times the CPU time).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "otel_workflow._spanrows",
            sources=["otel_workflow/_spanrows.c"],
            extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra", "-Wno-unused-parameter"],
            optional=True,
        )
    ]
)
