"""``plan --from-manifests`` loads many files on every core: the documents, their order
and the error reported are what one process would give."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from jobs.plan import manifests
from jobs.plan.manifests import ManifestError, read_documents

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


@pytest.mark.parametrize("dates", [False, True], ids=["marshal", "pickle"])
def test_parallel_load_gives_the_same_documents(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dates: bool
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
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bad: set[int]
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
