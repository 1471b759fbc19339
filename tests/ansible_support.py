"""Helpers for the Ansible engine's tests: ansible-core and ansible-runner must be there under CI."""
from __future__ import annotations

from sshd_fixtures import skip_or_fail_in_ci


def require_ansible() -> None:
    """Skip on a developer machine without ansible-core/ansible-runner; fail under CI, where the
    Ansible engine's end-to-end tests must run."""
    from edgekit.engine_ansible import missing

    skip_or_fail_in_ci(missing(), "CI must run the Ansible engine's tests (pip install 'edgekit[ansible]')")
