"""Helpers for the Ansible engine's tests: ansible-core and ansible-runner must be there under CI."""
from __future__ import annotations

import os

import pytest


def require_ansible() -> None:
    """Skip on a developer machine without ansible-core/ansible-runner; fail under CI, where the
    Ansible engine's end-to-end tests must run."""
    from edgekit.engine_ansible import missing

    reason = missing()
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must run the Ansible engine's tests (pip install 'edgekit[ansible]')", pytrace=False)
    pytest.skip(reason)
