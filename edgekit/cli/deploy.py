"""``edgekit deploy``, ``edgekit rollback`` and ``edgekit status``.

The bodies import the deploy machinery lazily (paramiko loads only when an SSH device is reached),
print the returned value as a table or ``--json``, and let EdgekitError map to the exit code. A fleet
failure still prints every device's outcome before exiting non-zero.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import click

from .render import echo, echo_json, kv, table

_config = click.option("--config", "config_path", type=click.Path(path_type=Path), default=Path("edgekit.toml"),
                       show_default=True, help="The project file.")
_inventory = click.option("--inventory", "-i", type=click.Path(path_type=Path), multiple=True,
                          help="An Ansible inventory (file or directory; repeatable) adding devices [default: deploy.inventory].")
_accept = click.option("--accept-new-host-key", is_flag=True,
                       help="Trust an SSH host key seen for the first time and record it (a changed key is always refused).")
_json = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
_lock = click.option("--lock-timeout", type=float, default=60.0, show_default=True,
                     help="Seconds to wait for another deploy to the same device to finish.")


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 10_000 else f"{n} B"


def _deploy_rows(r: Any) -> list:
    what = "unchanged (already current)" if r.skipped else ("switched" if r.switched else "made current")
    return [("device", r.device), ("transport", r.transport), ("release", r.release_id), ("target", r.target),
            ("result", what), ("previous", r.previous or "-"),
            ("uploaded", f"{_mb(r.uploaded_bytes)} in {r.uploaded_files} file(s), {r.reused_files} reused"),
            ("pruned", ", ".join(r.pruned) or "-"), ("time", f"{r.seconds:.2f} s")]


def _fleet_table(res: Any) -> None:
    rows = []
    for name, o in res.results.items():
        d = o.deploy
        valid = "-" if o.validation_ok is None else ("pass" if o.validation_ok else "FAIL")
        rows.append((name, o.phase, o.state + (f" -> {o.rolled_back_to}" if o.rolled_back_to else ""),
                     res.release_ids.get(name, "-"), _mb(d.uploaded_bytes) if d else "-", valid,
                     f"{o.seconds:.2f} s", o.error or ""))
    title = f"deploy: {sum(o.ok for o in res.results.values())}/{len(res.results)} device(s) ok in {res.seconds:.2f} s"
    if res.stopped:
        title += f"; stopped: {res.stopped}"
    table(title, ["device", "phase", "state", "release", "sent", "validation", "time", "error"], rows)


def register(main: click.Group) -> None:
    @main.command("deploy")
    @click.option("--device", "-d", default=None, help="One device (edgekit.toml or inventory).")
    @click.option("--group", "-g", default=None, help="Every device of a group ('all' for every device).")
    @_config
    @_inventory
    @click.option("--target", "-t", default=None, help="Deploy this target's bundle instead of each device's own.")
    @click.option("--dist", type=click.Path(path_type=Path), default=None, help="Bundle directory [default: dist/ beside the config].")
    @click.option("--canary", type=int, default=0, show_default=True,
                  help="Deploy to N devices first and validate them on the device; a failure rolls them back and stops.")
    @click.option("--max-parallel", type=int, default=None, help="Devices at once [default: deploy.max_parallel].")
    @click.option("--duration", type=float, default=1.0, show_default=True, help="Seconds of timed runs when validating canaries.")
    @click.option("--tune-on-canary", is_flag=True,
                  help="Rebuild the target first with --tune-on the first canary, so the fleet gets what it measured "
                       "(costs a build; the tuning cache answers identical boards next time).")
    @_lock
    @_accept
    @_json
    def deploy_cmd(device: Optional[str], group: Optional[str], config_path: Path, inventory: Optional[Path],
                   target: Optional[str], dist: Optional[Path], canary: int, max_parallel: Optional[int],
                   duration: float, lock_timeout: float, accept_new_host_key: bool, as_json: bool,
                   tune_on_canary: bool = False) -> None:
        """Push the bundle to devices as an atomic, verified release and make it current."""
        from ..config import load
        from ..errors import FleetError
        from ..fleet import deploy_device, deploy_fleet, select_devices

        config = load(config_path)
        devices = select_devices(config, device=device, group=group, inventory=inventory)
        if tune_on_canary:
            from ..tune_fleet import tune_on_canary as _tune

            built = _tune(config, devices, canary, target=target, dist=dist,
                          say=lambda m: None if as_json else echo(m, err=True))
            if not as_json:
                echo(f"tuned on the canary: {built.reason}", err=True)
        if device is not None and not canary:
            res = deploy_device(config, devices[0], dist=dist, target=target,
                                accept_new_host_key=accept_new_host_key, lock_timeout=lock_timeout)
            echo_json(res) if as_json else kv(f"deploy to {res.device}", _deploy_rows(res))
            return
        try:
            fleet = deploy_fleet(config, devices, dist=dist, target=target, canary=canary, max_parallel=max_parallel,
                                 duration=duration, accept_new_host_key=accept_new_host_key, lock_timeout=lock_timeout)
        except FleetError as exc:
            echo_json(exc.results) if as_json else _fleet_table(exc.results)
            raise
        echo_json(fleet) if as_json else _fleet_table(fleet)

    @main.command("rollback")
    @click.option("--device", "-d", required=True, help="Device name (edgekit.toml or inventory).")
    @_config
    @_inventory
    @_lock
    @_accept
    @_json
    def rollback_cmd(device: str, config_path: Path, inventory: Optional[Path], lock_timeout: float,
                     accept_new_host_key: bool, as_json: bool) -> None:
        """Switch the device's current release back to the previous one."""
        from ..config import load
        from ..fleet import rollback_device, select_devices

        config = load(config_path)
        spec = select_devices(config, device=device, inventory=inventory)[0]
        res = rollback_device(config, spec, accept_new_host_key=accept_new_host_key, lock_timeout=lock_timeout)
        if as_json:
            echo_json(res)
        else:
            kv(f"rollback on {res.device}", [("from", res.from_release or "-"), ("to", res.to_release or "-"),
                                             ("time", f"{res.seconds:.2f} s")])

    @main.command("status")
    @click.option("--device", "-d", required=True, help="Device name (edgekit.toml or inventory).")
    @_config
    @_inventory
    @_accept
    @_json
    def status_cmd(device: str, config_path: Path, inventory: Optional[Path], accept_new_host_key: bool,
                   as_json: bool) -> None:
        """Show the device's current release, the previous ones and their targets."""
        from ..config import load
        from ..fleet import select_devices, status_device

        config = load(config_path)
        spec = select_devices(config, device=device, inventory=inventory)[0]
        st = status_device(config, spec, accept_new_host_key=accept_new_host_key)
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
