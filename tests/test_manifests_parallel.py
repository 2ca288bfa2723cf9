"""``plan --from-manifests`` loads many files on every core: the documents, their order
and the error reported are what one process would give."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from jobs.plan import manifests
from jobs.plan.manifests import ManifestError, read_documents
from probe import yamlfile

pytestmark = pytest.mark.skipif(
    len(os.sched_getaffinity(0)) < 2, reason="one core: the parallel path is never taken"
)


def _write(tmp_path: Path, bad: set[int], dates: bool = False) -> Path:
    for i in range(12):
        docs = [
            f"apiVersion: v1\nkind: Pod\nmetadata:\n  name: p{i}-{j}\n  namespace: ns-{i}\n"
            f"  labels: &l{j} {{app: a{j}, n: {j}}}\nspec: {{x: *l{j}, y: yes, z: 1.5, w: ~}}\n"
            for j in range(5 + i)
        ]
        if dates:  # marshal cannot carry these: the workers' results come back pickled
            docs.append("when: 2001-12-14\nraw: !!binary aGk=\n")
        text = "---\n".join(docs)
        if i in bad:
            text += "---\na: 1\na: 2\n"
        (tmp_path / f"f{i:02d}.yaml").write_text(text)
    return tmp_path


def _both(monkeypatch: pytest.MonkeyPatch, root: Path) -> tuple[object, object]:
    got: list[object] = []
    for threshold in (1 << 60, 0):  # one process, then forked workers
        monkeypatch.setattr(manifests, "PARALLEL_MIN_BYTES", threshold)
        try:
            got.append(read_documents([root]))
        except ManifestError as exc:
            got.append(str(exc))
    return got[0], got[1]


@pytest.fixture(params=["bounded", "fast"])
def road(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every file on the bounded loader, or every file offered to the fast YAML road
    (workers then hand back its JSON and this process builds it)."""
    if request.param == "fast":
        monkeypatch.setattr(yamlfile, "FAST_MIN_CHARS", 0)
    return str(request.param)


@pytest.mark.parametrize("dates", [False, True], ids=["marshal", "pickle"])
def test_parallel_load_gives_the_same_documents(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dates: bool, road: str
) -> None:
    seq, par = _both(monkeypatch, _write(tmp_path, set(), dates))
    assert isinstance(par, list) and par == seq
    assert len(par) == sum(5 + i for i in range(12)) + (12 if dates else 0)
    for _, doc in par:  # aliases stay one shared object
        assert isinstance(doc, dict)
        if "spec" in doc:
            assert doc["spec"]["x"] is doc["metadata"]["labels"]


@pytest.mark.parametrize("bad", [{0}, {11}, {3, 7}, {2, 5, 10}])
def test_parallel_load_reports_the_first_bad_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bad: set[int], road: str
) -> None:
    seq, par = _both(monkeypatch, _write(tmp_path, bad))
    assert isinstance(par, str) and par == seq
    assert f"f{min(bad):02d}.yaml" in par and "duplicate key" in par


def test_a_worker_that_dies_is_one_line_not_a_hang(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "in").mkdir()
    root = _write(tmp_path / "in", set())
    spools = tmp_path / "spool"
    spools.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spools))
    monkeypatch.setattr(manifests, "PARALLEL_MIN_BYTES", 0)

    def dies(loaded: object) -> bytes:
        os._exit(9)  # as the OOM killer would end it

    monkeypatch.setattr(manifests, "_pack", dies)  # forked workers inherit the patch
    with pytest.raises(ManifestError, match="ended unexpectedly"):
        read_documents([root])
    assert not list(spools.iterdir()), "the workers' spool files are removed"


def test_workers_json_is_built_here_with_the_bounded_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Plain files (no anchors) go the fast road in the workers; a key written twice only
    shows when the JSON is built here - that file is loaded again the bounded way."""
    for i in range(6):
        docs = [
            f"kind: Pod\nmetadata:\n  name: p{i}-{j}\n  labels: {{app: a{j}}}\n"
            f"spec:\n  ports: [{{containerPort: 8080}}]\n  x: true\n"
            for j in range(3)
        ]
        if i == 4:
            docs.append("spec:\n  portLevelMtls:\n    9090: {mode: STRICT}\n    9090: {}\n")
        (tmp_path / f"f{i}.yaml").write_text("---\n".join(docs))
    monkeypatch.setattr(yamlfile, "FAST_MIN_CHARS", 0)
    from_workers: list[object] = []
    built = manifests._built

    def spy(f: Path, got: object) -> object:
        from_workers.append(got)
        return built(f, got)  # type: ignore[arg-type]

    monkeypatch.setattr(manifests, "_built", spy)
    seq, par = _both(monkeypatch, tmp_path)
    assert any(isinstance(got, tuple) for got in from_workers), "workers sent JSON"
    assert par == seq and isinstance(par, str)
    assert "f4.yaml" in par and "duplicate key" in par
    (tmp_path / "f4.yaml").unlink()
    seq, par = _both(monkeypatch, tmp_path)
    assert par == seq and isinstance(par, list) and len(par) == 15
