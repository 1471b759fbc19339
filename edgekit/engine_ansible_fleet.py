"""The Ansible engine's fleet commands: ansible-runner events mapped back to edgekit's HostResults.

One playbook run per command (``edgekit.fleet.deploy`` or ``edgekit.fleet.validate``). Each host's
events are folded into its HostResult; the result is yielded when the host's last task has run,
so the live lines come as hosts finish, as with the built-in engine. Hosts the rollout never
reached (a failed canary or batch ends the play) are ``not attempted``.

Everything in an event that came from a device (messages, hints, the runner's JSON) is treated as
hostile: text is bounded here and cleaned where it is printed, and a validation result goes through
the same checks as the built-in engine's (report.schema.read_result) before it is stored in runs/.
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence

from .config import DeviceSpec, ProjectConfig
from .deploy import DeployResult
from .engine_ansible import END, SshPolicy, inventory, ssh_policy, stream_playbook
from .errors import EdgekitError
from .fleet_results import (FAILED, NOT_ATTEMPTED, OK, ROLLED_BACK, DeployOptions, HostError, HostResult,
                            ValidateOptions)

Event = Dict[str, Any]
RELEASE, VALIDATE = "edgekit.fleet.release", "edgekit.fleet.validate"
FINAL = ("ansible.builtin.fail", "fail")
"""The deploy playbook's last task: a host's result is complete once it has run (or been skipped)."""


def text(value: Any, limit: int = 1000) -> str:
    """A device-provided value as one bounded line."""
    s = value if isinstance(value, str) else ("" if value is None else str(value))
    return " ".join(s[: limit * 2].split())[:limit]


def _rid(value: Any) -> Optional[str]:
    from .artifact import is_release_id

    return value if is_release_id(value) else None


def unreachable(msg: str, host: str, policy: Optional[SshPolicy]) -> HostError:
    """What OpenSSH's refusal means, with the built-in engine's kinds and hints."""
    said = text(msg.replace("Task failed: ", "").replace("Failed to connect to the host via ssh: ", ""), 600)
    if "REMOTE HOST IDENTIFICATION HAS CHANGED" in msg or "Host key for" in msg and "has changed" in msg:
        return HostError("host_key_changed", f"device '{host}': HOST KEY CHANGED; refusing to connect (this can be an "
                         "attack)", "if the device was reinstalled, remove the old key with ssh-keygen -R and trust "
                         "the new one")
    if "Host key verification failed" in msg or "host key is known" in msg:
        return HostError("host_key_unknown", f"device '{host}': unknown host key; refusing to connect",
                         policy.trust_hint if policy else None)
    if "Permission denied" in msg:
        return HostError("auth", f"device '{host}': authentication failed: {said}",
                         "add your public key to the device's ~/.ssh/authorized_keys (ssh-copy-id), load it into "
                         "ssh-agent, or set identity_file for the device")
    kind = "timeout" if "timed out" in msg.lower() else "unreachable"
    return HostError(kind, f"device '{host}': cannot connect: {said}", policy.connect_hint if policy else None)


def playbook_failure(end: Event) -> HostError:
    """ansible-playbook itself failed (no host got a result): its last words, and what to do."""
    said = text(end.get("output"), 600) or "no output"
    hint = "run the same playbook with ansible-playbook -vvv to see why"
    if "could not be found" in said or "couldn't resolve module/action 'edgekit.fleet" in said:
        hint = ("install the collection (ansible-galaxy collection install, from ansible_collections/edgekit/fleet "
                "of edgekit's source), or set EDGEKIT_ANSIBLE_COLLECTIONS to the directory holding ansible_collections/")
    return HostError("ansible", f"ansible-playbook failed ({end.get('status')}, exit {end.get('rc')}): {said}", hint)


def task_failure(res: Dict[str, Any]) -> HostError:
    kind = res.get("kind") if isinstance(res.get("kind"), str) else "ansible"
    hint = text(res.get("hint"), 500) if res.get("hint") else None
    return HostError(text(kind, 40) or "ansible", text(res.get("msg") or "failed"), hint)


def deploy_result(host: str, raw: Any, sent: int = 0) -> Optional[DeployResult]:
    """The module's ``release`` dict as a DeployResult (types checked: it came from a device)."""
    if not isinstance(raw, dict) or _rid(raw.get("release_id")) is None:
        return None
    num = lambda k: int(raw[k]) if isinstance(raw.get(k), int) and not isinstance(raw.get(k), bool) else 0  # noqa: E731
    pruned = [p for p in raw.get("pruned") or [] if _rid(p)] if isinstance(raw.get("pruned"), list) else []
    secs = raw.get("seconds")
    return DeployResult(device=host, release_id=str(raw["release_id"]), target=text(raw.get("target"), 100),
                        previous=_rid(raw.get("previous")), uploaded_bytes=num("uploaded_bytes") or sent,
                        uploaded_files=num("uploaded_files"), reused_files=num("reused_files"),
                        skipped=raw.get("skipped") is True, switched=raw.get("switched") is True, pruned=pruned,
                        seconds=float(secs) if isinstance(secs, (int, float)) else 0.0, transport="ansible")


class AnsibleEngine:
    """The fleet engine that drives the edgekit.fleet collection (see edgekit/engine_ansible.py)."""

    name = "ansible"

    # ------------------------------------------------------------------------------------------
    # deploy
    # ------------------------------------------------------------------------------------------
    def deploy(self, config: ProjectConfig, hosts: Sequence[DeviceSpec], bundles: Mapping[str, Path],
               options: DeployOptions) -> Iterator[HostResult]:
        from .deploy import verified_files
        from .fleet_engine import _mb, deploy_outcome, validation_summary

        checked = {b: verified_files(b) for b in set(bundles.values())}  # refused here, before any host
        names = set(options.canary)
        ordered = [h for h in hosts if h.name in names] + [h for h in hosts if h.name not in names]
        policies = self._policies(config, ordered, options.accept_new_host_key, options.connect_timeout)
        rids = {h.name: str(checked[bundles[h.name]][0]["release_id"]) for h in ordered}
        extra = {h.name: {"edgekit_bundle": str(Path(bundles[h.name]).resolve())} for h in ordered}
        size = max(1, options.batch_size or options.max_parallel)
        duration, runner_args = self._runner_settings(config, options.duration, options.quick)
        extravars = {
            "edgekit_hosts": "edgekit", "edgekit_canary": len(names),
            # the built-in engine's stages: the canaries, then batches of --batch-size (Ansible
            # repeats a serial list's last entry); no canary: everyone at once
            "edgekit_serial": [len(names), size] if names else ["100%"],
            "edgekit_keep_releases": config.deploy.keep_releases, "edgekit_lock_timeout": options.lock_timeout,
            "edgekit_validate_duration": duration, "edgekit_runner_args": runner_args,
        }
        results: Dict[str, HostResult] = {}
        starts: Dict[str, float] = {}
        released: set = set()
        batch = 0
        done: List[str] = []

        def phase() -> Optional[str]:
            if not names:
                return None
            return "canary" if batch == 1 else f"batch {batch - 1}"

        def get(host: str) -> HostResult:
            if host not in results:
                results[host] = HostResult(host, "deploy", FAILED, False, phase=phase(), release=rids.get(host),
                                           engine=self.name)
                starts[host] = time.perf_counter()
            return results[host]

        end: Event = {}
        for ev in stream_playbook("deploy", inventory(config, ordered, policies, extra), extravars,
                                  forks=options.max_parallel):
            kind = ev.get("event")
            if kind == END:
                end = ev
                break
            if kind == "playbook_on_play_start":
                batch += 1
                continue
            data = ev.get("event_data") or {}
            host = data.get("host")
            if not kind or not str(kind).startswith("runner_on_") or host not in rids or kind == "runner_on_start":
                continue
            res = data.get("res") if isinstance(data.get("res"), dict) else {}
            action = data.get("resolved_action") or data.get("task_action")
            out = get(host)
            if kind == "runner_on_unreachable":
                out.error = unreachable(str(res.get("msg") or ""), host, policies.get(host))
                out.release = None
            elif action == RELEASE and host not in released and kind in ("runner_on_ok", "runner_on_failed"):
                released.add(host)  # the play's first release task; a later one is the canary's rollback
                out.deploy = deploy_result(host, res.get("release"))
                if kind == "runner_on_ok" and out.deploy is not None:
                    d = out.deploy
                    out.outcome, out.ok, out.previous = deploy_outcome(d), True, d.previous
                    out.summary = (f"sent {_mb(d.uploaded_bytes)}" if d.uploaded_files else "nothing sent") \
                        + (f", {d.reused_files} file(s) reused" if d.reused_files else "")
                else:
                    out.error = task_failure(res)
                    out.release = _rid(res.get("current"))
            elif action == RELEASE and isinstance(res.get("rollback"), dict) and kind == "runner_on_ok":
                to = _rid(res["rollback"].get("to"))
                out.outcome, out.release, out.ok = ROLLED_BACK, to, False
                out.summary = f"back on {to or 'no release (none before)'}" + (f"; {out.summary}" if out.summary else "")
            elif action == RELEASE and kind == "runner_on_failed":  # the rollback itself failed
                if out.error is not None:
                    out.error.message += f"; ROLLBACK FAILED: {text(res.get('msg'))}"
            elif action == VALIDATE and kind in ("runner_on_ok", "runner_on_failed"):
                self._canary_check(config, host, hosts, res, out)
                if out.validation is not None:
                    out.summary = ", ".join(p for p in (out.summary, validation_summary(out.validation)) if p)
            elif action in FINAL and kind in ("runner_on_ok", "runner_on_failed", "runner_on_skipped"):
                if host not in done:
                    done.append(host)
                    yield self._finish(out, starts)
        failed = end.get("status") not in ("successful", "failed") or (not results and end.get("rc") not in (0, None))
        why = self._stopped(results, names)
        for h in ordered:
            if h.name in done:
                continue
            if h.name in results:  # started but never reached the last task (ansible-playbook died)
                out = results[h.name]
                if out.ok is False and out.error is None:
                    out.error = HostError("ansible", f"ansible-playbook ended early ({end.get('status')}): "
                                          f"{text(end.get('output'), 300)}")
                yield self._finish(out, starts)
            elif failed or not results:
                yield HostResult(h.name, "deploy", FAILED, False, engine=self.name, release=rids.get(h.name),
                                 error=playbook_failure(end))
            else:
                yield HostResult(h.name, "deploy", NOT_ATTEMPTED, False, engine=self.name,
                                 phase="after canary" if why.startswith("canary") else f"after {why.split(' failed')[0]}",
                                 error=HostError("not_attempted", f"rollout stopped: {why}",
                                                 "fix the failure, then rerun with --retry-failed"))

    @staticmethod
    def _stopped(results: Dict[str, HostResult], canaries: set) -> str:
        bad = [r for r in results.values() if not r.ok]
        if not bad:
            return "ansible-playbook stopped"
        if any(r.phase == "canary" for r in bad):
            return "canary failed on " + ", ".join(r.host for r in bad if r.phase == "canary")
        return f"{bad[0].phase or 'batch'} failed"

    def _finish(self, out: HostResult, starts: Dict[str, float]) -> HostResult:
        out.seconds = round(time.perf_counter() - starts.get(out.host, time.perf_counter()), 3)
        if not out.ok and out.outcome != ROLLED_BACK:
            out.outcome = FAILED
            if out.error is None:
                out.error = HostError("ansible", "failed (no result from the collection's tasks)")
        return out

    def _canary_check(self, config: ProjectConfig, host: str, hosts: Sequence[DeviceSpec], res: Dict[str, Any],
                      out: HostResult) -> None:
        spec = next(h for h in hosts if h.name == host)
        try:
            v = self._store(config, spec, res, None, None)
        except EdgekitError as exc:
            out.ok, out.outcome = False, FAILED
            out.error = HostError(str(exc.details.get("kind") or "validation"), f"on-device validation failed: "
                                  f"{exc.message}", exc.hint)
            return
        out.validation = v
        if not v.ok:
            from .fleet_engine import _metric_text

            out.ok, out.outcome = False, FAILED
            out.error = HostError("metric", f"on-device validation failed: {_metric_text(v)}", f"details in {v.result_path}")

    # ------------------------------------------------------------------------------------------
    # validate
    # ------------------------------------------------------------------------------------------
    def validate(self, config: ProjectConfig, hosts: Sequence[DeviceSpec], options: ValidateOptions) -> Iterator[HostResult]:
        from .fleet_engine import _metric_text, validation_summary
        from .report.schema import max_result_bytes
        from .validate import power_settings

        power = options.power if options.power is not None else power_settings(config)
        duration, runner_args = self._runner_settings(config, options.duration, options.quick, power)
        repeat = 1 if options.quick else options.repeat
        extravars: Dict[str, Any] = {
            "edgekit_hosts": "edgekit", "edgekit_validate_duration": duration, "edgekit_validate_repeat": repeat,
            "edgekit_runner_args": runner_args, "edgekit_fail_on_miss": False,
            "edgekit_max_result_bytes": max_result_bytes(options.max_result_mb)}
        if options.threads is not None:
            extravars["edgekit_validate_threads"] = options.threads
        policies = self._policies(config, hosts, options.accept_new_host_key, options.connect_timeout)
        seen: Dict[str, HostResult] = {}
        end: Event = {}
        for ev in stream_playbook("validate", inventory(config, hosts, policies), extravars, forks=options.max_parallel):
            if ev.get("event") == END:
                end = ev
                break
            data = ev.get("event_data") or {}
            host, kind = data.get("host"), ev.get("event")
            if kind not in ("runner_on_ok", "runner_on_failed", "runner_on_unreachable") or host in seen:
                continue
            spec = next((h for h in hosts if h.name == host), None)
            if spec is None:
                continue
            res = data.get("res") if isinstance(data.get("res"), dict) else {}
            out = HostResult(host, "validate", FAILED, False, engine=self.name,
                             seconds=float(data.get("duration") or 0.0) if isinstance(data.get("duration"), (int, float)) else 0.0)
            if kind == "runner_on_unreachable":
                out.error = unreachable(str(res.get("msg") or ""), host, policies.get(host))
            else:
                try:
                    v = self._store(config, spec, res, options.runs_dir, options.max_result_mb)
                    out.validation, out.release, out.summary = v, v.release_id, validation_summary(v)
                    out.ok = bool(v.ok)
                    out.outcome = OK if v.ok else FAILED
                    if not v.ok:
                        out.error = HostError("metric", f"device '{host}': {_metric_text(v)}", f"details in {v.result_path}")
                except EdgekitError as exc:
                    out.error = HostError.from_exception(exc)
                    out.validation = exc.details.get("result")
            seen[host] = out
            yield out
        for h in hosts:
            if h.name not in seen:
                yield HostResult(h.name, "validate", FAILED, False, engine=self.name, error=playbook_failure(end))

    # ------------------------------------------------------------------------------------------
    # shared
    # ------------------------------------------------------------------------------------------
    @staticmethod
    def _policies(config: ProjectConfig, hosts: Sequence[DeviceSpec], accept_new: bool,
                  timeout: Optional[float]) -> Dict[str, SshPolicy]:
        return {h.name: ssh_policy(config, h, accept_new, timeout) for h in hosts if h.transport == "ssh"}

    @staticmethod
    def _runner_settings(config: ProjectConfig, duration: float, quick: bool, power: Any = None) -> tuple:
        """(duration, further runner flags) as validate_device computes them."""
        from .validate import QUICK_DURATION_S, QUICK_WARMUP, power_argv, power_settings

        settings = power if power is not None else power_settings(config)
        args: List[str] = []
        if quick:
            duration = min(duration, QUICK_DURATION_S)
            settings = settings.model_copy(update={"idle_s": 0.0})
            args += ["--warmup", str(QUICK_WARMUP)]
        return float(duration), args + power_argv(settings)

    @staticmethod
    def _store(config: ProjectConfig, spec: DeviceSpec, res: Dict[str, Any], runs_dir: Any,
               max_result_mb: Optional[float]) -> Any:
        """The runner's JSON from the module's result: checked as a fetched result file is, stored in
        runs/ exactly as the built-in engine stores it, returned as a ValidationResult."""
        from . import __version__
        from .errors import DeviceError
        from .report.schema import RunFileError, max_result_bytes, read_result
        from .validate import ValidationResult, _store_run, device_python, runs_directory

        raw = res.get("validation")
        if not isinstance(raw, dict):
            raise DeviceError(f"device '{spec.name}': {text(res.get('msg') or 'the runner wrote no result')}",
                              hint=text(res.get("hint"), 500) or None, kind="validation")
        limit = max_result_bytes(max_result_mb)
        with tempfile.TemporaryDirectory(prefix=".edgekit-fetch-") as tmp:
            local = Path(tmp) / "result.json"
            local.write_text(json.dumps(raw))
            try:
                data = read_result(local, limit)
            except RunFileError as exc:
                raise DeviceError(f"device '{spec.name}': the runner's result is not a valid result file: {exc}",
                                  hint="the release's runner.py is not the one edgekit ships; redeploy it") from None
        rc = res.get("runner_exit") if isinstance(res.get("runner_exit"), int) else -1
        data["host"] = {"device": spec.name, "device_target": spec.target, "transport": spec.transport,
                        "python": device_python(spec), "edgekit_version": __version__, "runner_exit": rc,
                        "engine": "ansible", "collected": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        stored = _store_run(runs_directory(config, runs_dir), spec.name, data)
        result = ValidationResult.from_run(spec.name, data, stored)
        if result.error:
            raise DeviceError(f"device '{spec.name}': {result.error.get('message', 'runner failed')}",
                              hint=result.error.get("hint"), result=result)
        if rc not in (0, 3):
            raise DeviceError(f"device '{spec.name}': runner exited {rc}: {text(res.get('msg'), 300)}", result=result)
        return result
