"""The one thing pyproject.toml cannot say: the optional C speedups (resolver/_batchio.c).

Built when a compiler and the Python headers are there; `optional=True` makes a
failed build a warning, not a failed install, and resolver/batchio.py then uses
its pure-Python recvfrom/sendto loop (issue 17).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("resolver._batchio", sources=["resolver/_batchio.c"], optional=True),
    ]
)
