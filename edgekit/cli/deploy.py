"""``edgekit deploy``, ``edgekit rollback`` and ``edgekit status``.

The bodies import the deploy machinery lazily (paramiko loads only when an SSH device is reached),
print the returned value as a table or ``--json``, and let EdgekitError map to the exit code. A fleet
failure still prints every device's outcome before exiting non-zero.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional, Tuple

import click

from .fleet_output import (LiveLines, accept_new_host_key_option, finish, host_options, is_single, read_limit,
                           run_fleet)
from .render import echo, echo_json, kv, table

_config = click.option("--config", "config_path", type=click.Path(path_type=Path), default=Path("edgekit.toml"),
                       show_default=True, help="The project file.")
_inventory = click.option("--inventory", "-i", type=click.Path(path_type=Path), multiple=True,
                          help="An Ansible inventory (file or directory; repeatable) adding devices [default: deploy.inventory].")
_accept = accept_new_host_key_option(
    help="Trust an SSH host key seen for the first time and record it (a changed key is always refused).")
_json = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
_lock = click.option("--lock-timeout", type=float, default=60.0, show_default=True,
                     help="Seconds to wait for another deploy to the same device to finish.")


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 10_000 else f"{n} B"


def _deploy_rows(r: Any) -> list:
    from ..fleet_engine import deploy_outcome

    what = {"unchanged": "unchanged (already current)", "switched": "switched",
            "repaired": "repaired (damaged files restored)"}[deploy_outcome(r)]
    return [("device", r.device), ("transport", r.transport), ("release", r.release_id), ("target", r.target),
            ("result", what), ("previous", r.previous or "-"),
            ("uploaded", f"{_mb(r.uploaded_bytes)} in {r.uploaded_files} file(s), {r.reused_files} reused"),
            ("pruned", ", ".join(r.pruned) or "-"), ("time", f"{r.seconds:.2f} s")]


def _engine(name: str) -> Any:
    """None (deploy_fleet's built-in default) or the Ansible engine."""
    if name == "ansible":
        from ..engine_ansible_fleet import AnsibleEngine

        return AnsibleEngine()
    return None


def _select(config: Any, action: str, devices: Tuple[str, ...], group: Optional[str], inventory: Any,
            limit: Optional[str], retry_failed: bool, connect_timeout: Optional[float]) -> List[Any]:
    from ..fleet import select_devices
    from ..fleet_engine import with_timeout

    names = read_limit(config, action, limit, retry_failed)
    chosen = select_devices(config, device=list(devices) or None, group=group, inventory=inventory, limit=names)
    return [with_timeout(d, connect_timeout) for d in chosen]


def register(main: click.Group) -> None:
    @main.command("deploy")
    @host_options
    @_config
    @_inventory
    @click.option("--target", "-t", default=None, help="Deploy this target's bundle instead of each device's own.")
    @click.option("--dist", type=click.Path(path_type=Path), default=None, help="Bundle directory [default: dist/ beside the config].")
    @click.option("--canary", default="0", show_default=True, metavar="N|NAMES",
                  help="Deploy to these devices first (a count: the first N; or comma-separated names) and validate "
                       "them on the device; a failure switches them back and stops the rollout.")
    @click.option("--batch-size", type=click.IntRange(min=1), default=None,
                  help="Devices per batch after the canaries; each batch gates the next [default: --max-parallel].")
    @click.option("--duration", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
                  help="Seconds of timed runs when validating canaries.")
    @click.option("--quick", is_flag=True, help="Validate canaries with one short timed window (see validate --quick).")
    @click.option("--engine", type=click.Choice(["builtin", "ansible"]), default="builtin", show_default=True,
                  help="Who does the work: edgekit's own threads over SSH, or Ansible (the edgekit.fleet "
                       "collection through ansible-runner; for big fleets).")
    @click.option("--tune-on-canary", is_flag=True,
                  help="Rebuild the target first with --tune-on the first canary, so the fleet gets what it measured "
                       "(costs a build; the tuning cache answers identical boards next time).")
    @_lock
    @_accept
    @_json
    def deploy_cmd(devices: Tuple[str, ...], group: Optional[str], limit: Optional[str], retry_failed: bool,
                   max_parallel: Optional[int], connect_timeout: Optional[float], config_path: Path, inventory: Any,
                   target: Optional[str], dist: Optional[Path], canary: str, batch_size: Optional[int], duration: float,
                   quick: bool, engine: str, lock_timeout: float, as_json: bool,
                   tune_on_canary: bool = False) -> None:
        """Push the bundle to devices as an atomic, verified release and make it current."""
        from ..config import load
        from ..errors import FleetError
        from ..fleet import deploy_device, deploy_fleet

        config = load(config_path)
        hosts = _select(config, "deploy", devices, group, inventory, limit, retry_failed, connect_timeout)
        if tune_on_canary:
            from ..tune_fleet import tune_on_canary as _tune

            built = _tune(config, hosts, canary, target=target, dist=dist,
                          say=lambda m: None if as_json else echo(m, err=True))
            if not as_json:
                echo(f"tuned on the canary: {built.reason}", err=True)
        if is_single(devices, group, limit, retry_failed) and canary.strip() in ("", "0") and engine == "builtin":
            res = deploy_device(config, hosts[0], dist=dist, target=target, lock_timeout=lock_timeout)
            echo_json(res) if as_json else kv(f"deploy to {res.device}", _deploy_rows(res))
            return
        live = LiveLines([h.name for h in hosts], quiet=as_json)
        try:
            run = deploy_fleet(config, hosts, dist=dist, target=target, canary=canary, max_parallel=max_parallel,
                               batch_size=batch_size, duration=duration, quick=quick, lock_timeout=lock_timeout,
                               on_result=live, engine=_engine(engine))
        except FleetError as exc:
            finish(exc.results, config, as_json, exc.exit_code)
            raise
        finish(run, config, as_json, 7)

    @main.command("rollback")
    @host_options
    @_config
    @_inventory
    @click.option("--to", "to_release", default=None, metavar="RELEASE", help="Switch to this release instead of the previous one.")
    @_lock
    @_accept
    @_json
    def rollback_cmd(devices: Tuple[str, ...], group: Optional[str], limit: Optional[str], retry_failed: bool,
                     max_parallel: Optional[int], connect_timeout: Optional[float], config_path: Path, inventory: Any,
                     to_release: Optional[str], lock_timeout: float, as_json: bool) -> None:
        """Switch devices' current release back to the previous one."""
        from ..config import load
        from ..fleet import rollback_device
        from ..fleet_engine import BuiltinEngine

        config = load(config_path)
        hosts = _select(config, "rollback", devices, group, inventory, limit, retry_failed, connect_timeout)
        if is_single(devices, group, limit, retry_failed):
            res = rollback_device(config, hosts[0], to=to_release, lock_timeout=lock_timeout)
            if as_json:
                echo_json(res)
            else:
                kv(f"rollback on {res.device}", [("from", res.from_release or "-"), ("to", res.to_release or "-"),
                                                 ("time", f"{res.seconds:.2f} s")])
            return
        results = BuiltinEngine().rollback(config, hosts, max_parallel=max_parallel or config.deploy.max_parallel,
                                           to=to_release, lock_timeout=lock_timeout)
        run_fleet("rollback", config, hosts, results, as_json, 7)

    @main.command("status")
    @host_options
    @_config
    @_inventory
    @_accept
    @_json
    def status_cmd(devices: Tuple[str, ...], group: Optional[str], limit: Optional[str], retry_failed: bool,
                   max_parallel: Optional[int], connect_timeout: Optional[float], config_path: Path, inventory: Any,
                   as_json: bool) -> None:
        """Show devices' current release, the previous ones and their targets."""
        from ..config import load
        from ..fleet import status_device
        from ..fleet_engine import BuiltinEngine

        config = load(config_path)
        hosts = _select(config, "status", devices, group, inventory, limit, retry_failed, connect_timeout)
        if not is_single(devices, group, limit, retry_failed):
            results = BuiltinEngine().status(config, hosts, max_parallel=max_parallel or config.deploy.max_parallel)
            run_fleet("status", config, hosts, results, as_json, 7)
            return
        st = status_device(config, hosts[0])
        if as_json:
            echo_json(st)
            return
        title = f"{st.device} ({st.transport}): current {st.current or 'none'}"
        if st.lock:
            title += f"; LOCKED by {st.lock.get('host', '?')} pid {st.lock.get('pid', '?')}"
        marks = lambda r: "current" if r.current else ("previous" if r.previous else "")  # noqa: E731
        table(title, ["release", "", "target", "model", "precision", "files"],
              [(r.id, marks(r), r.target or "-", r.model or "-", r.precision or "-", r.files) for r in st.releases])
        if st.partial:
            echo(f"unfinished uploads (resumed or removed by the next deploy): {', '.join(st.partial)}")
