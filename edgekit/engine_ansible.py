"""Ansible as the engine: ``edgekit deploy --engine ansible`` and ``edgekit validate --engine ansible``.

edgekit selects the devices and checks the bundles exactly as the built-in engine does, then hands
the rollout to the ``edgekit.fleet`` collection (``ansible_collections/edgekit/fleet``) through
ansible-runner, which runs ``ansible-playbook`` in a subprocess and streams its events back. The
device side is the same code for both engines (the collection's release module runs edgekit's
device release script), so both leave the same release layout and history lines.

Why these choices:

- **A generated inventory, not the user's file.** The devices come from edgekit.toml and the
  inventory together (one may add settings to the other), so edgekit writes the resolved devices as
  a private inventory: the hosts are exactly the ones ``-d``/``-g`` selected, in rollout order.
- **The same trust store.** Every host's ``ansible_ssh_args`` names the known_hosts files the built-in
  engine reads (``~/.ssh/config``'s UserKnownHostsFile or ``~/.ssh/known_hosts``, plus
  ``deploy.known_hosts``) with ``StrictHostKeyChecking=yes`` (``accept-new`` only with
  ``--accept-new-host-key``, recording where the built-in engine records). A host variable outranks
  ansible.cfg, so a user's ``host_key_checking = False`` cannot switch the check off.
- **GPL stays in its process.** ansible-runner (Apache-2.0) starts ansible-playbook; edgekit never
  imports ansible-core.
"""
from __future__ import annotations

import os
import queue
import shlex
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Sequence

from .config import DeviceSpec, ProjectConfig
from .errors import ConfigError, DeployError

COLLECTION = "edgekit.fleet"
COLLECTIONS_ENV = "EDGEKIT_ANSIBLE_COLLECTIONS"
Event = Dict[str, Any]


def collections_root() -> Optional[Path]:
    """The directory holding ``ansible_collections/edgekit/fleet``: ``$EDGEKIT_ANSIBLE_COLLECTIONS``,
    else the source tree edgekit runs from; None when neither has it (an installed edgekit): then
    Ansible's own collection paths must hold it (``ansible-galaxy collection install``)."""
    given = os.environ.get(COLLECTIONS_ENV)
    root = Path(given).expanduser() if given else Path(__file__).resolve().parent.parent
    if not (root / "ansible_collections" / "edgekit" / "fleet" / "galaxy.yml").is_file():
        if given:
            raise ConfigError(f"{COLLECTIONS_ENV}={given}: no ansible_collections/edgekit/fleet/galaxy.yml there",
                              hint=f"set {COLLECTIONS_ENV} to the directory that holds ansible_collections/")
        return None
    return root


def missing() -> Optional[str]:
    """Why the Ansible engine cannot run here, or None."""
    from .transport.inventory_ansible import ansible_executable

    try:
        import ansible_runner  # noqa: F401
    except ImportError:
        return "ansible-runner is not installed"
    if ansible_executable("ansible-playbook") is None:
        return "ansible-playbook (ansible-core) is not installed"
    return None


# ----------------------------------------------------------------------------------------------
# The inventory edgekit hands to Ansible
# ----------------------------------------------------------------------------------------------
def _quote_ssh(path: str) -> str:
    """A path as one token of an OpenSSH option value (it splits on blanks, honouring double quotes)."""
    if '"' in path or any(c in path for c in "\n\r"):
        raise ConfigError(f"known_hosts path {path!r}: a double quote or a line break cannot be passed to ssh")
    return f'"{path}"' if any(c.isspace() for c in path) else path


@dataclass
class SshPolicy:
    """What the built-in engine would do for one device: its trust store, timeout and hints."""

    args: str
    record_to: Path
    trust_hint: str
    connect_hint: str


def ssh_policy(config: Optional[ProjectConfig], device: DeviceSpec, accept_new_host_key: bool,
               connect_timeout: Optional[float] = None) -> SshPolicy:
    """OpenSSH options giving ``device`` the built-in engine's host-key policy, trust store and timeout."""
    from .transport.ssh_hosts import connect_hint, connect_timeout_for, load_ssh_config, resolve_endpoint, trust_hint

    cfg = Path("~/.ssh/config").expanduser()
    ep = resolve_endpoint(load_ssh_config(), device.host or device.name, port=device.port, user=device.user,
                          identity_file=device.identity_file)
    user_files = list(ep.known_hosts_files) or [str(Path("~/.ssh/known_hosts").expanduser())]
    project = [str(config.resolve(config.deploy.known_hosts))] if config and config.deploy.known_hosts else []
    # OpenSSH records an accepted key in the first file; the built-in engine records in the project's
    # known_hosts when there is one, else in the user's first.
    files = project + user_files
    timeout = connect_timeout_for(connect_timeout or getattr(device, "connect_timeout", None), ep)
    options = [
        "-o", "ControlMaster=auto", "-o", "ControlPersist=60s",
        # ssh itself reads the password database's home, not $HOME: name the files edgekit reads.
        "-F", str(cfg) if cfg.is_file() else "/dev/null",
        "-o", "UserKnownHostsFile=" + " ".join(_quote_ssh(f) for f in files),
        "-o", "StrictHostKeyChecking=" + ("accept-new" if accept_new_host_key else "yes"),
        "-o", "BatchMode=yes",  # never a password or passphrase prompt in the middle of a rollout
        "-o", f"ConnectTimeout={max(1, int(round(timeout)))}",
        "-o", "ServerAliveInterval=15",  # keepalives during long validates
    ]
    record_to = Path(files[0])
    return SshPolicy(shlex.join(options), record_to, trust_hint(ep, record_to), connect_hint(ep))


def host_vars(config: ProjectConfig, device: DeviceSpec, policy: Optional[SshPolicy]) -> Dict[str, Any]:
    from .validate import device_python

    hv: Dict[str, Any] = {"ansible_python_interpreter": device_python(device), "edgekit_device": device.name,
                          "ansible_pipelining": True}
    if device.transport == "local" or policy is None:
        root = Path(device.path).expanduser()
        hv.update(ansible_connection="local", edgekit_path=str(root if root.is_absolute() else config.root / root))
        return hv
    # A host variable outranks ansible.cfg and ANSIBLE_SSH_ARGS: a user's host_key_checking = False
    # or ssh_args cannot loosen the policy, and OpenSSH takes the first value of each option.
    hv.update(ansible_connection="ssh", ansible_host=device.host or device.name, edgekit_path=device.path,
              ansible_ssh_args=policy.args, ansible_ssh_host_key_checking=True)
    if device.port is not None:
        hv["ansible_port"] = device.port
    if device.user:
        hv["ansible_user"] = device.user
    if device.identity_file:
        hv["ansible_ssh_private_key_file"] = str(Path(device.identity_file).expanduser())
    return hv


def inventory(config: ProjectConfig, devices: Sequence[DeviceSpec], policies: Dict[str, SshPolicy],
              extra: Optional[Dict[str, Dict[str, Any]]] = None) -> Dict[str, Any]:
    """One group, ``edgekit``, holding the devices in rollout order (dicts keep insertion order, and
    Ansible keeps a group's hosts in the order its source lists them)."""
    hosts = {}
    for d in devices:
        if any(c in d.name for c in ":[],"):  # Ansible reads 'a:22' as a port and 'a[1:3]' as a range
            raise ConfigError(f"device '{d.name}': the Ansible engine cannot use this name as an inventory host "
                              "(':', '[', ']' or ',' in it)", hint="rename the device, or use --engine builtin")
        hv = host_vars(config, d, policies.get(d.name))
        hv.update((extra or {}).get(d.name, {}))
        hosts[d.name] = hv
    return {"all": {"children": {"edgekit": {"hosts": hosts}}}}


# ----------------------------------------------------------------------------------------------
# Running a playbook
# ----------------------------------------------------------------------------------------------
END = "edgekit_playbook_end"
"""The last event :func:`stream_playbook` yields: ``{"event": END, "status", "rc", "output"}``."""


def stream_playbook(name: str, inv: Dict[str, Any], extravars: Dict[str, Any], *, forks: int) -> Iterator[Event]:
    """Run the collection's playbook ``name`` through ansible-runner and yield its events as they
    arrive, then one END event. ansible-playbook runs in a subprocess; its callback hands each event
    over as it happens, so every host's line shows as soon as that host is done."""
    reason = missing()
    if reason:
        raise DeployError(f"--engine ansible: {reason}", hint="pip install 'edgekit[ansible]'", kind="ansible_missing")
    import ansible_runner

    from .transport.inventory_ansible import ansible_executable

    exe = str(ansible_executable("ansible-playbook"))
    root = collections_root()
    own = [str(root)] if root is not None else []
    events: "queue.Queue[Event]" = queue.Queue()

    def handler(event: Event) -> bool:
        events.put(event)
        return False  # kept here only, not also written to the artifacts directory

    with tempfile.TemporaryDirectory(prefix="edgekit-ansible-") as private:
        # Ansible's own defaults stay on the path after ours (an installed collection is found there).
        given = os.environ.get("ANSIBLE_COLLECTIONS_PATH", "~/.ansible/collections:/usr/share/ansible/collections")
        env = {
            "PATH": os.pathsep.join([str(Path(exe).parent), os.environ.get("PATH", "")]),
            "ANSIBLE_COLLECTIONS_PATH": os.pathsep.join(own + [p for p in given.split(os.pathsep) if p]),
            "ANSIBLE_HOST_KEY_CHECKING": "True",
            "ANSIBLE_RETRY_FILES_ENABLED": "False",
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_LOCAL_TEMP": str(Path(private) / "tmp"),
            "ANSIBLE_DEPRECATION_WARNINGS": "False",
            "ANSIBLE_SSH_RETRIES": "0",  # a timeout is not retried (the built-in engine does not either)
            "ANSIBLE_TIMEOUT": "30",
        }
        stop = threading.Event()
        thread, runner = ansible_runner.run_async(
            private_data_dir=private, playbook=f"{COLLECTION}.{name}", inventory=inv, extravars=extravars,
            forks=max(1, forks), quiet=True, event_handler=handler, envvars=env, cancel_callback=stop.is_set,
            settings={"suppress_ansible_output": True})
        try:
            while thread.is_alive() or not events.empty():
                try:
                    yield events.get(timeout=0.1)
                except queue.Empty:
                    continue
        finally:
            # The caller stopped early (Ctrl-C, an error): ansible-playbook is stopped, not left running
            # against the fleet with its private directory about to be removed.
            stop.set()
            thread.join()
        output = ""
        if runner.status != "successful":
            try:
                output = (Path(private) / "artifacts" / str(runner.config.ident) / "stdout").read_text(errors="replace")
            except (OSError, AttributeError):
                output = ""
        yield {"event": END, "status": str(runner.status), "rc": runner.rc, "output": output[-4000:]}
