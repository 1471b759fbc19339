"""The bundle: ``dist/<model>/<target>/`` holding the model, manifest.json, reference.npz, the
device package (``edgekit/device/``, launched through ``runner.py`` at the root) and the project's
plugin files (``plugins/``).

manifest.json lists the sha256 of every other file; the release id is the hash of the manifest
itself (those file hashes included, ``release_id`` left out), so it covers every deployed file, and
an unchanged bundle has an unchanged id that a redeploy can skip. What a build measures (timings,
its duration) is kept out of the manifest, in the build record (``build_record.py``).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

if TYPE_CHECKING:  # numpy loads only when a reference is written, so deploy starts fast
    import numpy as np

from . import __version__
from .errors import ConfigError, DeployError

MANIFEST = "manifest.json"
MANIFEST_LIMIT = 16 << 20
"""Bytes: a manifest lists file names and hashes; a bigger one is not a bundle's (host or device)."""
REFERENCE = "reference.npz"
RUNNER = "runner.py"
"""The launcher at the bundle's root (edgekit/device/__main__.py): what validate runs."""
DEVICE_PACKAGE = "edgekit/device"
"""Where the device package sits in a bundle: the same import name as on the host."""
PLUGINS = "plugins"
SCHEMA = 1
DEVICE_DIR = Path(__file__).resolve().parent / "device"
RELEASE_INIT = '"""edgekit as a release ships it: only the device package (edgekit.device)."""\n'


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


RELEASE_ID_LENGTH = 16


def release_id(manifest: Dict[str, Any]) -> str:
    """Content address of a bundle: the hash of its manifest (canonical JSON, ``release_id`` left
    out), which lists every other file's sha256. The same files and manifest give the same id."""
    body = {k: v for k, v in manifest.items() if k != "release_id"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:RELEASE_ID_LENGTH]


def check_file_name(name: str) -> str:
    """Refuse names that could escape the release directory on the device."""
    p = Path(name)
    if (not name or p.is_absolute() or ".." in p.parts or name.startswith("~") or "\\" in name
            or any(ord(c) < 32 or ord(c) == 127 for c in name)):
        raise DeployError(f"artifact file name {_shown(name)} is not allowed (absolute path, '..' or a control character)")
    return name


def reference_subset(feeds: Sequence[Dict[str, np.ndarray]], outputs: Sequence[Sequence[np.ndarray]],
                     max_samples: int, max_mb: float, starts: Optional[Sequence[bool]] = None) -> List[int]:
    """Which validation samples ship in reference.npz: at most ``max_samples`` and ``max_mb`` MB of
    inputs plus FP32 outputs, whichever is smaller, spread evenly over the set (whole streams when
    ``starts`` marks them). Deterministic: it depends only on the counts and sizes. At least one
    sample (a prefix of the first stream) ships even when it alone is over the size bound."""
    n = len(feeds)
    sizes = [sum(int(a.nbytes) for a in f.values()) + sum(int(o.nbytes) for o in out)
             for f, out in zip(feeds, outputs)]
    bound = max_mb * 1e6
    units: List[List[int]] = []
    for i in range(n):
        if not units or starts is None or starts[i]:
            units.append([i])
        else:
            units[-1].append(i)
    for m in range(min(len(units), max_samples), 0, -1):
        picks = sorted({int(round(x)) for x in _linspace(0, len(units) - 1, m)})
        chosen = [i for u in picks for i in units[u]]
        if len(chosen) <= max_samples and sum(sizes[i] for i in chosen) <= bound:
            return chosen
    prefix: List[int] = []
    for i in units[0] if units else []:
        if prefix and (len(prefix) >= max_samples or sum(sizes[j] for j in prefix) + sizes[i] > bound):
            break
        prefix.append(i)
    return prefix


def _linspace(a: float, b: float, m: int) -> List[float]:
    return [a] if m == 1 else [a + (b - a) * k / (m - 1) for k in range(m)]


def write_reference(path: Path, feeds: List[Dict[str, np.ndarray]], outputs: List[List[np.ndarray]],
                    output_names: List[str], labels: Optional[np.ndarray] = None,
                    starts: Optional[Sequence[bool]] = None) -> None:
    """Stack per-sample inputs and FP32 outputs (axis 0 = sample) as input/<name>, output/<name>;
    ``stream/start`` marks where each stream starts for stateful models. Entries are stored
    uncompressed so the runner can memory-map them."""
    import numpy as np

    arrays: Dict[str, np.ndarray] = {}
    for name in feeds[0]:
        arrays[f"input/{name}"] = np.stack([f[name] for f in feeds])
    for i, name in enumerate(output_names):
        arrays[f"output/{name}"] = np.stack([o[i] for o in outputs])
    if labels is not None:
        arrays["labels"] = np.asarray(labels)
    if starts is not None:
        arrays["stream/start"] = np.asarray(starts, dtype=np.uint8)
    # np.savez writes zip entries with a fixed timestamp, so equal arrays give equal bytes.
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def device_files() -> List[Tuple[Path, str]]:
    """(source, path inside a bundle) of every file of the device package, in a stable order: its
    Python modules, the launcher at the root, and a parent ``edgekit/__init__.py`` of its own."""
    pairs = [(p, f"{DEVICE_PACKAGE}/{p.relative_to(DEVICE_DIR).as_posix()}")
             for p in sorted(DEVICE_DIR.rglob("*.py")) if "__pycache__" not in p.parts]
    return pairs + [(DEVICE_DIR / "__main__.py", RUNNER)]


def copy_device_files(bundle: Path, plugins: Sequence[Path] = ()) -> None:
    """The device package into ``bundle``, and each plugin file into ``bundle/plugins/`` (by its
    name, which must be unique: the runner imports them all from there)."""
    for src, rel in device_files():
        dst = bundle / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    (bundle / "edgekit" / "__init__.py").write_text(RELEASE_INIT)
    seen: Dict[str, Path] = {}
    for src in plugins:
        name = Path(src).name
        if name in seen:
            raise ConfigError(f"plugins {seen[name]} and {src} have the same file name; a release holds them "
                              f"side by side in {PLUGINS}/, so rename one")
        seen[name] = Path(src)
        (bundle / PLUGINS).mkdir(exist_ok=True)
        shutil.copyfile(src, bundle / PLUGINS / name)


def write_manifest(bundle: Path, fields: Dict[str, Any]) -> Dict[str, Any]:
    """Hash every file in the bundle (but the manifest) and write manifest.json deterministically."""
    files = {}
    for p in sorted(bundle.rglob("*")):
        rel = p.relative_to(bundle).as_posix()
        if p.is_file() and rel != MANIFEST:
            files[check_file_name(rel)] = sha256_file(p)
    manifest: Dict[str, Any] = {"schema": SCHEMA, "edgekit_version": __version__, **fields, "files": files}
    manifest["release_id"] = release_id(json.loads(json.dumps(manifest)))  # as it reads back from the file
    (bundle / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


ID_LEN = RELEASE_ID_LENGTH
_HEX = frozenset("0123456789abcdef")
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def _shown(value: Any) -> str:
    """A bundle's value in an error line: repr escapes control characters; bounded in length."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def is_release_id(value: Any) -> bool:
    """A release id is a content address: exactly ID_LEN lowercase hex digits, so it is always one
    plain path component on the device ('..', '/', '~' and control characters cannot occur)."""
    return isinstance(value, str) and len(value) == ID_LEN and set(value) <= _HEX


def check_release_id(value: Any, where: str = "release id") -> str:
    if not is_release_id(value):
        raise DeployError(f"{where}: {_shown(value)} is not a release id (expected {ID_LEN} lowercase hex digits)")
    return str(value)


def expected_release_id(manifest: Dict[str, Any]) -> str:
    """The id the manifest's contents give (what ``write_manifest`` stored when the bundle was built):
    the hash of the whole manifest but its ``release_id``, so no field can change under the same id."""
    try:
        return release_id(manifest)
    except (ValueError, TypeError, RecursionError):  # NaN/Infinity, which canonical JSON refuses
        raise DeployError(f"{MANIFEST}: holds a value with no canonical JSON form (NaN or Infinity); "
                          "rebuild the bundle with 'edgekit build'") from None


def read_manifest(bundle: Path) -> Dict[str, Any]:
    """Read and validate manifest.json: every field deploy relies on is checked here, and the release
    id is recomputed from the manifest (file hashes included), so a bundle can neither name a path
    nor claim another release's id."""
    path = Path(bundle) / MANIFEST
    try:
        with open(path, "rb") as f:
            raw = f.read(MANIFEST_LIMIT + 1)
        if len(raw) > MANIFEST_LIMIT:
            raise DeployError(f"{path}: larger than {MANIFEST_LIMIT >> 20} MB; not a manifest edgekit wrote")
        manifest = json.loads(raw.decode("utf-8"))
    except FileNotFoundError:
        raise DeployError(f"{path}: no manifest; run 'edgekit build' first") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise DeployError(f"{path}: not a readable JSON manifest ({type(exc).__name__}: {str(exc)[:120]})") from None
    if not isinstance(manifest, dict):
        raise DeployError(f"{path}: expected a JSON object, got {type(manifest).__name__}")
    for key in ("files", "release_id", "target", "artifact"):
        if key not in manifest:
            raise DeployError(f"{path}: field '{key}' missing; rebuild with this edgekit version")
    files = manifest["files"]
    if not isinstance(files, dict) or not files:
        raise DeployError(f"{path}: field 'files' must be a non-empty object of file name -> sha256")
    for name, digest in files.items():
        check_file_name(name)
        if name == MANIFEST or not (isinstance(digest, str) and len(digest) == 64 and set(digest) <= _HEX):
            raise DeployError(f"{path}: field 'files' entry {_shown(name)}: expected a sha256 (64 lowercase hex "
                              f"digits) for a file other than {MANIFEST}, got {_shown(digest)}")
    target = manifest["target"]
    if not (isinstance(target, str) and target and set(target) <= _NAME_CHARS):
        raise DeployError(f"{path}: field 'target' is {_shown(target)}: expected a target profile name")
    if not isinstance(manifest["artifact"], str) or manifest["artifact"] not in files:
        raise DeployError(f"{path}: field 'artifact' is {_shown(manifest['artifact'])}: expected a file that "
                          "'files' lists")
    rid = check_release_id(manifest["release_id"], f"{path}: field 'release_id'")
    computed = expected_release_id(manifest)
    if rid != computed:
        raise DeployError(f"{path}: field 'release_id' is {rid} but the manifest's contents give {computed}: "
                          "the manifest was altered after the build, or an older edgekit built it",
                          hint="rebuild the bundle with 'edgekit build'")
    return manifest


def verify_bundle(bundle: Path, manifest: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    manifest = manifest or read_manifest(bundle)
    for name, digest in manifest["files"].items():
        p = Path(bundle) / name
        if not p.is_file():
            raise DeployError(f"{bundle}: file '{name}' listed in the manifest is missing")
        if sha256_file(p) != digest:
            raise DeployError(f"{bundle}: file '{name}' does not match its sha256 in the manifest")
    return manifest


def bundle_dir(out: Path, model: str, target: str) -> Path:
    return Path(out) / model / target


def clean_dir(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)
    os.makedirs(path, exist_ok=True)
