"""The XFCC grammar: Envoy's shapes parse; nothing crashes the parser; what we
write parses back to the same elements."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from probe.xfcc import (
    MAX_ELEMENTS,
    XfccElement,
    XfccError,
    format_xfcc,
    identity_problems,
    parse_xfcc,
    trusted_element,
)

REAL = (
    'By=spiffe://cluster.local/ns/ns-a/sa/echo;Hash=c94dad0948b5;Subject="";'
    "URI=spiffe://cluster.local/ns/probe/sa/meshprobe"
)


def test_envoy_element() -> None:
    (el,) = parse_xfcc(REAL)
    assert el.by == ("spiffe://cluster.local/ns/ns-a/sa/echo",)
    assert el.uri == ("spiffe://cluster.local/ns/probe/sa/meshprobe",)
    assert el.subject == "" and el.hash == "c94dad0948b5"


def test_last_element_is_trusted_and_keys_case_insensitive() -> None:
    forged = "by=spiffe://x/ns/a/sa/b;uri=spiffe://x/ns/evil/sa/evil"
    el = trusted_element([forged + "," + REAL])
    assert el is not None and el.uri == ("spiffe://cluster.local/ns/probe/sa/meshprobe",)
    assert parse_xfcc(forged)[0].uri == ("spiffe://x/ns/evil/sa/evil",)


def test_quoted_values_with_separators_and_repeats() -> None:
    header = (
        'By=spiffe://a/b;By=spiffe://a/c;Subject="CN=a, O=\\"x;y\\"";'
        "URI=spiffe://c/d;DNS=a.b;DNS=c.d"
    )
    (el,) = parse_xfcc(header)
    assert el.subject == 'CN=a, O="x;y"'
    assert el.by == ("spiffe://a/b", "spiffe://a/c")
    assert el.dns == ("a.b", "c.d")


def test_rfc2253_escapes_in_subject_are_kept() -> None:
    # Envoy inserts the RFC 2253 subject as is; its own escapes must survive.
    (el,) = parse_xfcc('Subject="CN=a\\,b,O=c";URI=spiffe://x/y')
    assert el.subject == "CN=a\\,b,O=c"


def test_cert_and_chain_only_as_fingerprints_in_summary() -> None:
    from urllib.parse import quote

    from cryptography.hazmat.primitives import hashes

    from probe.pki import CertificateAuthority

    ca = CertificateAuthority.create_root("cluster.local", key_type="ec")
    leaf = ca.issue_workload("spiffe://cluster.local/ns/a/sa/b", key_type="ec")
    cert, chain = quote(leaf.cert_pem().decode()), quote(leaf.chain_pem(include_root=True).decode())
    (el,) = parse_xfcc(f'By=spiffe://a/b;Cert="{cert}";Chain="{chain}";URI=spiffe://c/d')
    summary = el.summary()
    fp = "sha256:" + leaf.cert.fingerprint(hashes.SHA256()).hex()
    assert summary["Cert"] == [fp] and summary["Chain"][0] == fp  # type: ignore[index]
    assert len(summary["Chain"]) == 2  # type: ignore[arg-type]
    assert "BEGIN" not in str(summary)
    (bad,) = parse_xfcc('Cert="-----BEGIN%20junk";URI=spiffe://c/d')
    assert "not a PEM" in str(bad.summary()) and "BEGIN" not in str(bad.summary())


def test_multiple_header_values_join_in_order() -> None:
    el = trusted_element(["By=spiffe://a/1;URI=spiffe://a/2", "By=spiffe://b/1;URI=spiffe://b/2"])
    assert el is not None and el.by == ("spiffe://b/1",)


def test_absent_is_none() -> None:
    assert trusted_element([]) is None
    assert trusted_element("") is None


@pytest.mark.parametrize(
    "bad",
    [
        " ",
        "By",
        'Subject="unterminated',
        "=x",
        'a=b"c',
        'Subject="a"b',
        "Hash=a;Hash=b",
        "By x=1",
        "x" * 70000,
        ",".join(["By=a"] * (MAX_ELEMENTS + 1)),
        "\udcff" * 40000,
    ],
)
def test_malformed_raises_xfcc_error(bad: str) -> None:
    with pytest.raises(XfccError):
        parse_xfcc(bad)


def test_malformed_present_header_raises_in_trusted_element() -> None:
    with pytest.raises(XfccError):
        trusted_element(['By=a;Subject="x'])


def test_huge_input_is_bounded() -> None:
    t = time.perf_counter()
    for text in ("a" * 5_000_000, ";" * 60_000, '"' + "\\x" * 30_000 + '"'):
        with pytest.raises(XfccError):
            parse_xfcc(text)
    assert time.perf_counter() - t < 1.0


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=400) | st.text(alphabet=',;="\\ Byuri', max_size=400))
def test_no_input_crashes(text: str) -> None:
    try:
        els = parse_xfcc(text)
    except XfccError:
        return
    assert 1 <= len(els) <= MAX_ELEMENTS


_any = st.text(st.characters(exclude_categories=["Cs"]), max_size=24)
_ident = st.text(st.characters(codec="ascii", categories=("L", "N", "P")), min_size=1, max_size=24)
_element = st.builds(
    XfccElement,
    by=st.lists(_ident, max_size=2).map(tuple),
    hash=st.none() | st.text("0123456789abcdef", min_size=1, max_size=64),
    subject=st.none() | _any,
    uri=st.lists(_any, min_size=1, max_size=2).map(tuple),
    dns=st.lists(_ident, max_size=2).map(tuple),
    cert=st.none() | _any,
    chain=st.none() | _any,
    extra=st.lists(
        st.tuples(st.sampled_from(["x-a", "foo", "k9"]), _any.map(lambda s: s[:200])),
        max_size=2,
    ).map(tuple),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(_element, min_size=1, max_size=6))
def test_round_trip(elements: list[XfccElement]) -> None:
    assert parse_xfcc(format_xfcc(elements)) == elements


# --- rule: the trusted element names exactly one server and one client identity -----------

SERVER = "spiffe://cluster.local/ns/ns-a/sa/echo"
CLIENT = "spiffe://cluster.local/ns/mtlsprobe/sa/mtlsprobe"


def test_exactly_one_by_and_uri_equal_to_expected() -> None:
    (el,) = parse_xfcc(f"By={SERVER};Hash=ab;URI={CLIENT}")
    assert identity_problems(el, SERVER, CLIENT) == []
    assert identity_problems(el, None, None) == []


@pytest.mark.parametrize(
    ("header", "words"),
    [
        (f"By={SERVER};By=spiffe://cluster.local/ns/x/sa/y;URI={CLIENT}", "By= appears 2 times"),
        (f"By={SERVER};URI={CLIENT};URI=spiffe://cluster.local/ns/x/sa/y", "URI= appears 2 times"),
        (f"By={SERVER};URI={CLIENT};uri={CLIENT}", "URI= appears 2 times"),  # even the same one
        (f"by={SERVER};BY={SERVER};URI={CLIENT}", "By= appears 2 times"),
        (f"URI={CLIENT}", "By= appears 0 times"),
        (f"By={SERVER}", "URI= appears 0 times"),
        (f"By=spiffe://cluster.local/ns/ns-a/sa/other;URI={CLIENT}", "expected " + SERVER),
        (f"By={SERVER};URI=spiffe://cluster.local/ns/x/sa/y", "expected " + CLIENT),
        (f"By={SERVER.upper()};URI={CLIENT}", "expected " + SERVER),
    ],
)
def test_ambiguous_or_wrong_identities_are_problems(header: str, words: str) -> None:
    (el,) = parse_xfcc(header)
    problems = identity_problems(el, SERVER, CLIENT)
    assert problems and words in "; ".join(problems)
    if "appears" in words:
        # the count matters even when nothing is compared
        assert identity_problems(el, None, None)


_key_case = st.sampled_from(["By", "by", "BY", "bY"]), st.sampled_from(["URI", "uri", "Uri"])
_ids = st.sampled_from([SERVER, CLIENT, "spiffe://cluster.local/ns/x/sa/y", "spiffe://evil/a"])


@settings(max_examples=300, deadline=None)
@given(
    bys=st.lists(st.tuples(_key_case[0], _ids), max_size=3),
    uris=st.lists(st.tuples(_key_case[1], _ids), max_size=3),
    order=st.randoms(use_true_random=False),
)
def test_property_only_one_exact_pair_is_clean(
    bys: list[tuple[str, str]], uris: list[tuple[str, str]], order: object
) -> None:
    pairs = [f"{k}={v}" for k, v in bys + uris] + ["Hash=ab"]
    order.shuffle(pairs)  # type: ignore[attr-defined]
    (el,) = parse_xfcc(";".join(pairs))
    clean = identity_problems(el, SERVER, CLIENT) == []
    exact = [v for _, v in bys] == [SERVER] and [v for _, v in uris] == [CLIENT]
    assert clean == exact
