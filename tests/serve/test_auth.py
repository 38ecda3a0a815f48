"""AdminAuth (serve/auth.py): where the token comes from and what each header gets."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resnetkit.errors import ConfigError, PermissionDenied, Unauthenticated
from resnetkit.serve.auth import MANAGEMENT_DISABLED, TOKEN_ENV_VAR, AdminAuth

TOKEN = "s3cret-Token_0123456789abcdef"
TOKENS = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=64
)


@pytest.fixture
def auth() -> AdminAuth:
    return AdminAuth.from_sources(environ={TOKEN_ENV_VAR: TOKEN})


def test_the_right_token_passes_whatever_the_case_of_the_scheme(auth: AdminAuth) -> None:
    assert auth.enabled
    for header in (f"Bearer {TOKEN}", f"bearer {TOKEN}", f"  BEARER   {TOKEN}  "):
        auth.check(header)


def test_without_a_token_management_is_off_and_every_call_is_refused() -> None:
    auth = AdminAuth.from_sources(environ={})
    assert not auth.enabled
    with pytest.raises(PermissionDenied) as info:
        auth.check(f"Bearer {TOKEN}")
    assert str(info.value) == MANAGEMENT_DISABLED
    assert (
        "RESNETKIT_ADMIN_TOKEN" in MANAGEMENT_DISABLED
        and "--admin-token-file" in MANAGEMENT_DISABLED
    )


def test_an_empty_environment_variable_counts_as_unset() -> None:
    assert not AdminAuth.from_sources(environ={TOKEN_ENV_VAR: "  "}).enabled


@pytest.mark.parametrize("header", [None, "", "   "])
def test_a_missing_header_is_unauthenticated(auth: AdminAuth, header: str | None) -> None:
    with pytest.raises(Unauthenticated, match="missing"):
        auth.check(header)


@pytest.mark.parametrize(
    "header",
    ["Bearer", "Bearer    ", f"Basic {TOKEN}", TOKEN, f"Token {TOKEN}", f"Bearer\t{TOKEN}"],
)
def test_a_malformed_header_is_unauthenticated(auth: AdminAuth, header: str) -> None:
    with pytest.raises(Unauthenticated, match="malformed") as info:
        auth.check(header)
    assert TOKEN not in str(info.value)


def test_a_wrong_token_is_permission_denied_and_never_echoed(auth: AdminAuth) -> None:
    wrong = "not-the-token"
    with pytest.raises(PermissionDenied, match="invalid admin token") as info:
        auth.check(f"Bearer {wrong}")
    assert wrong not in str(info.value) and TOKEN not in str(info.value)
    assert TOKEN not in repr(auth) and TOKEN not in str(vars(auth))


@settings(max_examples=200)
@given(
    candidate=st.one_of(
        st.text(max_size=80),
        TOKENS,
        st.sampled_from([TOKEN[:-1], TOKEN + "x", TOKEN.upper(), TOKEN[1:], "x" + TOKEN, ""]),
    )
)
def test_no_token_but_the_right_one_passes(candidate: str) -> None:
    auth = AdminAuth(TOKEN)
    if candidate.strip() == TOKEN:
        return  # the right token with surrounding spaces; passing it is correct
    with pytest.raises((Unauthenticated, PermissionDenied)):
        auth.check(f"Bearer {candidate}")


@given(token=TOKENS)
def test_any_header_safe_token_accepts_itself_and_refuses_a_near_miss(token: str) -> None:
    auth = AdminAuth(token)
    auth.check(f"Bearer {token}")
    with pytest.raises(PermissionDenied):
        auth.check(f"Bearer {token}x")


def test_the_token_file_is_stripped_and_wins_over_the_environment(tmp_path: Path) -> None:
    token_file = tmp_path / "admin.token"
    token_file.write_text(f"\n  {TOKEN}\n\n", encoding="utf-8")
    auth = AdminAuth.from_sources(token_file=token_file, environ={TOKEN_ENV_VAR: "other"})
    auth.check(f"Bearer {TOKEN}")
    with pytest.raises(PermissionDenied):
        auth.check("Bearer other")


@pytest.mark.parametrize(
    ("content", "match"), [(None, "cannot read"), ("", "is empty"), (" \n\t", "is empty")]
)
def test_an_unreadable_or_empty_token_file_is_a_config_error_naming_it(
    tmp_path: Path, content: str | None, match: str
) -> None:
    token_file = tmp_path / "admin.token"
    if content is not None:
        token_file.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError, match=match) as info:
        AdminAuth.from_sources(token_file=token_file)
    assert str(token_file) in str(info.value)


@pytest.mark.parametrize("token", ["two words", "tab\tinside", "naïve-token", "bell\x07"])
def test_a_token_no_header_could_carry_is_refused_without_echoing_it(token: str) -> None:
    with pytest.raises(ConfigError) as info:
        AdminAuth(token)
    assert token not in str(info.value)
