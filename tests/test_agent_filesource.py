"""The agent's targets file source parses again only when the file changed, and a
file that turned bad is an error every round, never the last good parse."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from jobs.agent.sources import FileSource, SourceError

GOOD = """\
trustDomain: cluster.local
targets:
  - name: {name}
    host: a.default.svc.cluster.local
    port: 8080
    expect: STRICT
    endpoints: ["127.0.0.1:1"]
"""


def test_unchanged_file_is_not_parsed_again(tmp_path: Path) -> None:
    path = tmp_path / "targets.yaml"
    path.write_text(GOOD.format(name="default/a"), encoding="utf-8")
    source = FileSource(path)
    first = source.load()
    assert source.load() is first


def test_edit_shows_up_next_round(tmp_path: Path) -> None:
    path = tmp_path / "targets.yaml"
    path.write_text(GOOD.format(name="default/a"), encoding="utf-8")
    source = FileSource(path)
    assert source.load().targets[0].name == "default/a"
    # Same size and, forced, the same mtime: the inode/ctime still differ (a
    # ConfigMap update swaps a symlink to a new file the same way).
    st = path.stat()
    new = tmp_path / "new.yaml"
    new.write_text(GOOD.format(name="default/b"), encoding="utf-8")
    os.utime(new, ns=(st.st_atime_ns, st.st_mtime_ns))
    new.replace(path)
    assert source.load().targets[0].name == "default/b"


def test_file_turned_bad_is_an_error_every_time(tmp_path: Path) -> None:
    path = tmp_path / "targets.yaml"
    path.write_text(GOOD.format(name="default/a"), encoding="utf-8")
    source = FileSource(path)
    source.load()
    path.write_text("targets: [", encoding="utf-8")
    for _ in range(2):
        with pytest.raises(SourceError):
            source.load()
    path.unlink()
    with pytest.raises(SourceError):
        source.load()
