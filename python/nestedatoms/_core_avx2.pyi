"""The avx2 build of the core: the same functions as ``_core``."""

from ._core import *  # noqa: F401,F403
