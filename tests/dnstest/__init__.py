"""Real-DNS test harness: the test zone, an authoritative server, Debian daemons, the sinkhole."""

from __future__ import annotations

import os
import shutil

import pytest

#: Debian puts the daemons in sbin, which a non-login CI shell may lack on PATH.
EXTRA_TOOL_DIRS = ("/usr/sbin", "/sbin", "/usr/local/sbin")


def find_tool(name: str) -> str | None:
    """The full path of the executable NAME, searching PATH and the sbin folders."""
    found = shutil.which(name)
    if found:
        return found
    return shutil.which(name, path=os.pathsep.join(EXTRA_TOOL_DIRS))


def require_tool(name: str) -> str:
    """The path of tool NAME; skip the test when missing, or fail it when CI == "true"."""
    path = find_tool(name)
    if path is not None:
        return path
    message = f"required tool {name!r} is not installed (Debian package needed)"
    if os.environ.get("CI") == "true":
        # In CI a missing tool means the CI script is broken, never a reason to skip.
        pytest.fail(message, pytrace=False)
    pytest.skip(message)
