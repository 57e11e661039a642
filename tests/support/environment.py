"""What a test does when a program or file it needs is not there.

The quickstart's test command installs everything the suite uses, and
.ci/run sets CI: there a missing part is a defect of the set-up and the
test fails; on a developer's machine it is skipped with the reason.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def unavailable(reason: str) -> NoReturn:
    """Skip the calling test for `reason`, or fail it when CI is set."""
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(f"{reason} (with CI set, as .ci/run sets it, this fails)")
