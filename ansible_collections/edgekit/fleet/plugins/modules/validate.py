#!/usr/bin/python
# Copyright: edgekit contributors
# Apache License 2.0 (see edgekit's LICENSE); the device side of edgekit, standard library only.
"""Run the current release's runner.py on the device and return its result JSON as facts."""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: validate
short_description: Validate the current edgekit release on the device
description:
  - Runs C(runner.py validate) of the release that C(<path>/current) points to, exactly as
    C(edgekit validate) does, and returns the runner's result JSON as the fact C(edgekit_validation).
  - The result is bounded (O(max_result_bytes)) and must be a regular file; the runner's output is kept
    as its first and last O(output_limit) bytes only: a bundle's code is not trusted with the log.
  - Fails when nothing is deployed, when the runner fails, or (with O(fail_on_miss)) when the metric
    or a guard misses its threshold, so a canary's C(rescue) can roll it back.
options:
  path: {description: The device directory (holds releases/ and current)., type: str, required: true}
  duration: {description: Minimum seconds per timed window., type: float, default: 2.0}
  repeat: {description: Timed windows (the median is reported)., type: int, default: 1}
  threads: {description: Intra-op threads (default the target profile's)., type: int}
  warmup: {description: Warm-up iterations., type: int}
  runner_args: {description: Further runner flags (power sampling...)., type: list, elements: str, default: []}
  timeout: {description: Seconds before the runner is killed (default 600 + 3 x repeat x duration)., type: float}
  max_result_bytes: {description: Largest result JSON read., type: int, default: 33554432}
  output_limit: {description: Bytes kept of the head and of the tail of the runner's output., type: int, default: 65536}
  fail_on_miss: {description: Fail the task when the runner reports C(ok=false)., type: bool, default: true}
author: edgekit contributors
"""

EXAMPLES = r"""
- name: validate the canary on the device
  edgekit.fleet.validate:
    path: ~/edgekit
    duration: 0.5
  register: v
- ansible.builtin.debug:
    msg: "{{ ansible_facts.edgekit_validation.metric }}"
"""

RETURN = r"""
validation: {description: The runner's result JSON (also the fact C(edgekit_validation))., type: dict, returned: when the runner wrote one}
runner_exit: {description: The runner's exit status (3 = the metric missed)., type: int, returned: always}
passed: {description: Whether the release passed on the device., type: bool, returned: always}
"""

import json
import os
import stat
import subprocess
import sys
import tempfile
import uuid

from ansible.module_utils.basic import AnsibleModule

RUNNER_EXIT_METRIC = 3


def _bounded(f, limit):
    """The first and last ``limit`` bytes of an open file, as text."""
    size = f.seek(0, os.SEEK_END)
    f.seek(0)
    if size <= 2 * limit:
        data = f.read()
    else:
        head = f.read(limit)
        f.seek(size - limit)
        data = head + b"\n[... %d bytes cut on the device ...]\n" % (size - 2 * limit) + f.read()
    return data.decode("utf-8", "replace")


def _tail_line(text):
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return lines[-1][-300:] if lines else "(no output)"


def _read_result(out, limit):
    """The result file, refused unless it is a regular file within ``limit`` bytes holding a JSON object."""
    try:
        st = os.lstat(out)
    except OSError:
        return None, "the runner wrote no result"
    if not stat.S_ISREG(st.st_mode):
        return None, "the runner's result %s is not a regular file; not read" % out
    if st.st_size > limit:
        return None, "the runner's result is %.1f MB, over the %g MB limit; not read" % (st.st_size / 1e6, limit / 1e6)
    with open(out, "rb") as f:
        raw = f.read(limit + 1)
    try:
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):
        return None, "the runner's result is not JSON"
    if not isinstance(data, dict):
        return None, "the runner's result is not a JSON object"
    return data, None


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="str", required=True),
            duration=dict(type="float", default=2.0),
            repeat=dict(type="int", default=1),
            threads=dict(type="int"),
            warmup=dict(type="int"),
            runner_args=dict(type="list", elements="str", default=[]),
            timeout=dict(type="float"),
            max_result_bytes=dict(type="int", default=32 << 20),
            output_limit=dict(type="int", default=64 << 10),
            fail_on_miss=dict(type="bool", default=True),
        ),
        supports_check_mode=True,
    )
    p = module.params
    if p["duration"] <= 0 or p["repeat"] < 1:
        module.fail_json(msg="duration must be > 0 and repeat at least 1", kind="bad_argument")
    root = os.path.normpath(os.path.expanduser(p["path"]))
    current = os.path.join(root, "current")
    runner = os.path.join(current, "runner.py")
    if not os.path.isfile(runner):
        module.fail_json(msg="no release deployed on the device: %s holds no runner.py" % current,
                         kind="not_deployed", hint="deploy a release first", runner_exit=-1, passed=False)
    if module.check_mode:  # the runner measures, it changes nothing; a dry run has nothing to show
        module.exit_json(changed=False, skipped=True, msg="check mode: the runner was not run", runner_exit=-1,
                         passed=False)
    work = os.path.join(root, ".edgekit")
    if not os.path.isdir(work):
        os.makedirs(work)
    out = os.path.join(work, "validate-%s.json" % uuid.uuid4().hex[:12])
    argv = [sys.executable, runner, "validate", "--release", current, "--out", out,
            "--duration", repr(float(p["duration"])), "--repeat", str(int(p["repeat"]))]
    if p["threads"] is not None:
        argv += ["--threads", str(int(p["threads"]))]
    if p["warmup"] is not None:
        argv += ["--warmup", str(int(p["warmup"]))]
    argv += list(p["runner_args"])
    limit = p["timeout"] if p["timeout"] is not None else 600.0 + 3 * p["repeat"] * p["duration"]
    with tempfile.TemporaryFile() as so, tempfile.TemporaryFile() as se:
        try:
            # cwd "/": the release's code must not depend on where Ansible happens to run modules
            rc = subprocess.call(argv, stdout=so, stderr=se, stdin=subprocess.DEVNULL, cwd="/", timeout=limit)
        except subprocess.TimeoutExpired:
            rc = -9
        outputs = [_bounded(f, p["output_limit"]) for f in (so, se)]
    try:
        data, why = _read_result(out, p["max_result_bytes"])
    finally:
        try:
            os.unlink(out)
        except OSError:
            pass
    base = dict(changed=False, runner_exit=rc, stdout=outputs[0], stderr=outputs[1])
    if data is None:
        what = "the runner timed out after %g s" % limit if rc == -9 else "%s (exit %d): %s" % (
            why, rc, _tail_line(outputs[1] or outputs[0]))
        module.fail_json(msg=what, kind="runner_failed", passed=False,
                         hint="check the interpreter with: edgekit doctor", **base)
    passed = bool(data.get("ok")) and rc == 0
    result = dict(base, validation=data, passed=passed, ansible_facts=dict(edgekit_validation=data))
    error = data.get("error")
    if isinstance(error, dict) and error:
        module.fail_json(msg=str(error.get("message", "runner failed"))[:1000], kind="runner_failed",
                         hint=error.get("hint"), **result)
    if rc not in (0, RUNNER_EXIT_METRIC):
        module.fail_json(msg="runner exited %d: %s" % (rc, _tail_line(outputs[1])), kind="runner_failed", **result)
    if not passed and p["fail_on_miss"]:
        module.fail_json(msg="on-device validation failed: %s" % _metric_text(data), kind="validation_failed", **result)
    module.exit_json(**result)


def _metric_text(data):
    m = data.get("metric") if isinstance(data.get("metric"), dict) else {}
    if m:
        return "%s = %s vs threshold %s" % (m.get("name"), m.get("value"), m.get("threshold"))
    return "not ok"


if __name__ == "__main__":
    main()
