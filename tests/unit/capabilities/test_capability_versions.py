"""Versions and version constraints (the PEP 440 subset used for framework requirements)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crankmesh.capabilities import CapabilitySpecError, Specifier, SpecifierSet, Version


@pytest.mark.parametrize(
    ("text", "normalised"),
    [
        ("2.13.0", "2.13.0"),
        ("2.13.0+cpu", "2.13.0+cpu"),
        ("2.1", "2.1"),
        ("1.26.4", "1.26.4"),
        ("2.0.0rc1", "2.0.0rc1"),
        ("v1.0", "1.0"),
        ("1.0-alpha.2", "1.0a2"),
        ("1.0.BETA1", "1.0b1"),
        ("1.0c1", "1.0rc1"),
        ("1.0pre", "1.0rc0"),
        ("1.0-1", "1.0.post1"),
        ("1.0.post2.dev3", "1.0.post2.dev3"),
        ("1!2.0", "1!2.0"),
        ("2.1.0a0+git_1A-b", "2.1.0a0+git.1a.b"),
        ("  3.11  ", "3.11"),
    ],
)
def test_parse_normalises(text: str, normalised: str) -> None:
    assert str(Version.parse(text)) == normalised


@pytest.mark.parametrize("text", ["", "latest", "2..1", "1.0+", "+cpu", "1.0 rc1 x", "1.0-", "a1"])
def test_parse_rejects_non_versions(text: str) -> None:
    with pytest.raises(CapabilitySpecError, match="is not a version"):
        Version.parse(text)


def test_parse_rejects_non_strings() -> None:
    with pytest.raises(ValueError, match="must be a string"):
        Version.parse(2.1)  # type: ignore[arg-type]


def test_pep440_ordering_chain() -> None:
    chain = [
        "1.0.dev1",
        "1.0a1.dev1",
        "1.0a1",
        "1.0b2",
        "1.0rc1",
        "1.0",
        "1.0+cpu",
        "1.0.post1.dev1",
        "1.0.post1",
        "1.1.dev1",
        "1.1",
        "1!0.1",
    ]
    versions = [Version.parse(v) for v in chain]
    assert versions == sorted(versions)
    for a, b in zip(versions, versions[1:], strict=False):
        assert a < b and b > a and a <= b and b >= a and a != b


def test_trailing_zeros_and_prerelease_lower() -> None:
    assert Version.parse("2.1") == Version.parse("2.1.0") == Version.parse("2.1.0.0")
    assert hash(Version.parse("2.1")) == hash(Version.parse("2.1.0"))
    assert Version.parse("2.0.0rc1") < Version.parse("2.0.0")
    assert Version.parse("2.0.0rc1").is_prerelease
    assert not Version.parse("2.0.0.post1").is_prerelease
    assert Version.parse("2.13.0+cpu").public == Version.parse("2.13.0")
    assert Version.parse("2.1rc1.post2+cpu").base == Version.parse("2.1")
    assert Version.parse("1.0") != "1.0"


@pytest.mark.parametrize(
    ("spec", "version", "expected"),
    [
        (">=2.1,<3", "2.1", True),
        (">=2.1,<3", "2.13.0+cpu", True),
        (">=2.1,<3", "1.13.1", False),
        (">=2.1,<3", "3.0", False),
        (">=2.1,<3", "3.0.0rc1", False),  # "<3" does not admit pre-releases of 3
        (">=2.1,<3", "2.2.0rc1", True),  # an installed pre-release of a newer version is fine
        (">=2.1", "2.1.0rc1", False),  # pre-releases compare lower
        ("<3.0rc2", "3.0rc1", True),
        (">2", "2.0.post1", False),  # ">2" does not admit post-releases of 2
        (">2", "2.0.1", True),
        (">2", "2.0+local", False),
        (">2.post1", "2.post2", True),
        ("<=2.1", "2.1+cpu", True),
        ("==2.1", "2.1.0", True),
        ("==2.1", "2.1.0+cpu", True),
        ("==2.1+cpu", "2.1+cu121", False),
        ("==2.1+cpu", "2.1.0+cpu", True),
        ("==2.*", "2.13.0", True),
        ("==2.*", "2.0rc1", True),
        ("==2.*", "3.0", False),
        ("==2.1.*", "2.1", True),
        ("==2.1.*", "2.10", False),
        ("!=2.0.1", "2.0.1", False),
        ("!=2.0.1", "2.0.2", True),
        ("!=2.*", "2.5", False),
        ("~=1.26", "1.26.4", True),
        ("~=1.26", "1.30", True),
        ("~=1.26", "2.0", False),
        ("~=1.26.2", "1.26.4", True),
        ("~=1.26.2", "1.27", False),
        ("~=1.26.2", "1.26.1", False),
        ("", "0.0.1", True),
        ("*", "99", True),
        (" >= 2.1 , < 3 ", "2.5", True),
    ],
)
def test_specifier_sets(spec: str, version: str, expected: bool) -> None:
    specs = SpecifierSet.parse(spec)
    assert specs.contains(version) is expected
    assert (Version.parse(version) in specs) is expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("2.1", "has no operator; write '==2.1', '>=2.1' or '==2.1.*'"),
        (">=2.1,", "empty clause"),
        ("=>2.1", "is not a version specifier"),
        (">=2.*", "'.*' only works with == and !="),
        ("==2.0rc1.*", "put '.*' after a plain release"),
        ("~=2", "~= needs at least two release segments"),
        (">=2.1+cpu", "local label"),
        (">=banana", "is not a version"),
    ],
)
def test_bad_specifiers_are_explained(spec: str, message: str) -> None:
    with pytest.raises(CapabilitySpecError, match=message.replace("*", r"\*").replace(".", r"\.")):
        SpecifierSet.parse(spec)


def test_specifier_set_string_form_is_normalised() -> None:
    assert str(SpecifierSet.parse(" >= 2.1.0 ,<3 ")) == ">=2.1.0,<3"
    assert str(SpecifierSet.parse("==2.*")) == "==2.*"
    assert str(SpecifierSet.parse("")) == ""
    assert not SpecifierSet.parse("*")
    assert Specifier.parse("~=1.26") == Specifier("~=", Version.parse("1.26"))


def test_non_string_specifiers_are_refused() -> None:
    with pytest.raises(CapabilitySpecError):
        SpecifierSet.parse(2)  # type: ignore[arg-type]
    with pytest.raises(CapabilitySpecError):
        Specifier.parse(None)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- properties

fast = settings(max_examples=40, deadline=None)

_releases = st.lists(st.integers(0, 12), min_size=1, max_size=4).map(tuple)
_versions = st.builds(
    Version,
    release=_releases,
    epoch=st.sampled_from([0, 0, 0, 1]),
    pre=st.none() | st.tuples(st.sampled_from(["a", "b", "rc"]), st.integers(0, 3)),
    post=st.none() | st.integers(0, 3),
    dev=st.none() | st.integers(0, 3),
    local=st.none() | st.sampled_from(["cpu", "cu121", "1", "abc.5"]),
)


@fast
@given(_versions)
def test_string_form_round_trips(v: Version) -> None:
    assert Version.parse(str(v)) == v
    assert str(Version.parse(str(v))) == str(v)


@fast
@given(_versions, _versions)
def test_ordering_is_total_and_antisymmetric(a: Version, b: Version) -> None:
    assert sum((a < b, a == b, a > b)) == 1
    assert (a <= b) == (not a > b)
    if a == b:
        assert hash(a) == hash(b)


@fast
@given(_versions, _versions, _versions)
def test_ordering_is_transitive(a: Version, b: Version, c: Version) -> None:
    x, y, z = sorted([a, b, c])
    assert x <= y <= z and x <= z


@fast
@given(_releases, st.integers(0, 3))
def test_prereleases_sort_below_release_and_posts_above(release: tuple[int, ...], n: int) -> None:
    final = Version(release)
    assert Version(release, pre=("rc", n)) < final < Version(release, post=n)
    assert Version(release, dev=n) < Version(release, pre=("a", 0))
    assert Version(release + (0,)) == final


# ``packaging`` does the work now; these keep crankmesh's wrapper honest (its
# pre-releases-allowed choice, wildcards, local labels) against packaging's own answers.


def _packaging_version(text: str) -> object:
    return pytest.importorskip("packaging.version").Version(text)


def _packaging_contains(spec: str, version: str) -> bool:
    specs = pytest.importorskip("packaging.specifiers").SpecifierSet(spec)
    return bool(specs.contains(version, prereleases=True))


@fast
@given(_versions, _versions)
def test_ordering_agrees_with_packaging(a: Version, b: Version) -> None:
    pa: Any = _packaging_version(str(a))
    pb: Any = _packaging_version(str(b))
    assert (a < b) == (pa < pb)
    assert (a == b) == (pa == pb)


_spec_versions = st.builds(
    Version,
    release=_releases,
    pre=st.none() | st.tuples(st.sampled_from(["a", "rc"]), st.integers(0, 2)),
    post=st.none() | st.integers(0, 2),
)


@fast
@given(st.sampled_from([">=", ">", "<=", "<", "==", "!=", "~="]), _spec_versions, _versions)
def test_specifiers_agree_with_packaging(op: str, spec_v: Version, candidate: Version) -> None:
    if op == "~=" and len(spec_v.release) < 2:
        spec_v = Version(spec_v.release + (0,), pre=spec_v.pre, post=spec_v.post)
    text = f"{op}{spec_v}"
    assert SpecifierSet.parse(text).contains(candidate) is _packaging_contains(text, str(candidate))


@fast
@given(st.sampled_from(["==", "!="]), _releases, _versions)
def test_wildcards_agree_with_packaging(
    op: str, prefix: tuple[int, ...], candidate: Version
) -> None:
    text = f"{op}{'.'.join(map(str, prefix))}.*"
    assert SpecifierSet.parse(text).contains(candidate) is _packaging_contains(text, str(candidate))


def test_versions_do_not_compare_with_other_types() -> None:
    with pytest.raises(TypeError):
        assert Version.parse("1.0") < "2.0"  # type: ignore[operator]
