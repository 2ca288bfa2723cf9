"""``echoPath`` in the targets contract: optional, validated at load, round-trips."""

from __future__ import annotations

import pytest

from probe.model import DEFAULT_ECHO_PATH, TargetsFileError, parse_targets


def doc(**extra: object) -> dict[str, object]:
    target = {"name": "ns-a/echo", "host": "echo.ns-a", "port": 8080, "expect": "STRICT"}
    target.update(extra)
    return {"trustDomain": "cluster.local", "targets": [target]}


def test_old_files_default_to_headers() -> None:
    (t,) = parse_targets(doc(echo=True), "t.yaml").targets
    assert t.echo and t.echo_path is None and DEFAULT_ECHO_PATH == "/headers"
    assert "echoPath" not in parse_targets(doc(echo=True), "t.yaml").to_dict()["targets"][0]


def test_echo_path_loads_and_round_trips() -> None:
    tf = parse_targets(doc(echo=True, echoPath="/anything/headers?x=1"), "t.yaml")
    assert tf.targets[0].echo_path == "/anything/headers?x=1"
    again = parse_targets(tf.to_dict(), "again")
    assert again == tf


@pytest.mark.parametrize(
    "bad",
    ["headers", "", "//evil.example/headers", "/a b", "/a#b", "/\x00", "/é", 3, "/" * 1025],
)
def test_bad_echo_path_is_one_line_naming_the_field(bad: object) -> None:
    with pytest.raises(TargetsFileError) as exc:
        parse_targets(doc(echoPath=bad), "t.yaml")
    msg = str(exc.value)
    assert ".echoPath" in msg and "\n" not in msg
