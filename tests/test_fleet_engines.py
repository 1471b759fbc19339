"""The Ansible engine passes the same fleet end-to-end tests as the built-in one.

Each test of tests/test_fleet.py that deploys through ``deploy_fleet`` (directly or through the CLI)
(and the digits sample's fleet end-to-end test of test_deploy_e2e.py) runs again here with
edgekit.fleet's default engine replaced by the Ansible engine: the very same
test bodies and assertions, against the same three real sshd servers plus a local device, with
ansible-core and ansible-runner doing the work through the edgekit.fleet collection. Left out:
``test_a_failed_batch_stops_later_batches_and_keeps_every_result`` injects a Python validator, which
only an in-process engine can call (its Ansible counterpart is in test_engine_ansible.py), and the
single-device CLI paths, which never use a fleet engine.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest
import test_deploy_e2e as E
import test_fleet as F
from ansible_support import require_ansible
from test_fleet import fleet_project  # noqa: F401 -- the same fixture

SAME_TESTS = [
    F.test_group_deploy_fans_out_and_redeploy_is_a_no_op,
    F.test_failed_canary_is_rolled_back_and_stops_the_rollout,
    F.test_failed_first_canary_leaves_no_current,
    F.test_canary_then_batches,
    F.test_missing_bundle_fails_before_any_device_is_touched,
    F.test_cli_fleet_failure_prints_every_device_and_exits_nonzero,
]


@pytest.fixture
def ansible_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """deploy_fleet's default engine becomes the Ansible engine for this test."""
    require_ansible()
    from edgekit.engine_ansible_fleet import AnsibleEngine

    monkeypatch.setattr("edgekit.fleet_engine.BuiltinEngine", lambda validate=None: AnsibleEngine())


@pytest.mark.parametrize("test", SAME_TESTS, ids=[t.__name__ for t in SAME_TESTS])
def test_ansible_engine_passes_the_fleet_test(test: Callable[[Path], Any], ansible_by_default: None,
                                              fleet_project: Path) -> None:  # noqa: F811
    test(fleet_project)


def test_ansible_engine_passes_the_digits_fleet_e2e(ansible_by_default: None, digits_project: Path, digits_bundle: Path,
                                                    tmp_path: Path, sshd_fleet: Any, ssh_device: Callable,
                                                    trust_hosts: Callable) -> None:
    E.test_digits_sample_to_a_fleet(digits_project, digits_bundle, tmp_path, sshd_fleet, ssh_device, trust_hosts)
