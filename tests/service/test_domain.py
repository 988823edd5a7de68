"""Domain rules: validation accepts exactly the valid inputs; ids and page tokens."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.domain import (
    MAX_AGE,
    MAX_BATCH,
    MAX_NAME,
    ROLES,
    NewUser,
    decode_page_token,
    encode_page_token,
    new_user_id,
    resolve_page_size,
    validate_new_user,
    validate_new_users,
    validate_user_id,
)
from service.errors import InvalidArgument

#: Any text but NUL, which no stored string may hold.
no_nul = st.characters(exclude_categories=["Cs"], exclude_characters="\x00")
names = st.text(no_nul, min_size=1, max_size=MAX_NAME).filter(lambda s: s.strip() != "")
local = st.text(alphabet=string.ascii_letters + string.digits + "._+-", min_size=1, max_size=20)
label = st.text(alphabet=string.ascii_lowercase + string.digits, min_size=1, max_size=10)
emails = st.builds(
    lambda lp, d, tld: f"{lp}@{d}.{tld}",
    local,
    label,
    st.text(alphabet=string.ascii_lowercase, min_size=2, max_size=6),
)
ages = st.integers(0, MAX_AGE)
roles = st.lists(st.sampled_from(sorted(ROLES)), min_size=1, max_size=3, unique=True).map(tuple)
valid_users = st.builds(NewUser, name=names, email=emails, age=ages, roles=roles)


@given(valid_users)
def test_valid_users_are_accepted(user: NewUser) -> None:
    assert validate_new_user(user) is user


@given(valid_users, st.one_of(st.integers(max_value=-1), st.integers(min_value=MAX_AGE + 1)))
def test_any_age_out_of_range_is_refused(user: NewUser, age: int) -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_new_user(NewUser(user.name, user.email, age, user.roles))
    assert [v.field for v in caught.value.violations] == ["age"]


@given(
    valid_users,
    st.one_of(
        st.just(""),
        st.text(min_size=MAX_NAME + 1, max_size=300),
        st.text(alphabet=" \t\n", min_size=1, max_size=5),
    ),
)
def test_empty_blank_or_long_names_are_refused(user: NewUser, name: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_new_user(NewUser(name, user.email, user.age, user.roles))
    assert [v.field for v in caught.value.violations] == ["name"]


@given(valid_users, st.text(max_size=60).filter(lambda s: "@" not in s or " " in s))
def test_strings_that_are_not_addresses_are_refused(user: NewUser, email: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_new_user(NewUser(user.name, email, user.age, user.roles))
    assert [v.field for v in caught.value.violations] == ["email"]


@given(valid_users, st.text(min_size=1, max_size=12).filter(lambda r: r not in ROLES))
def test_unknown_roles_are_refused(user: NewUser, role: str) -> None:
    with pytest.raises(InvalidArgument):
        validate_new_user(NewUser(user.name, user.email, user.age, (*user.roles, role)))


def test_repeated_or_missing_roles_are_refused() -> None:
    for bad in [("user", "user"), ()]:
        with pytest.raises(InvalidArgument):
            validate_new_user(NewUser("A", "a@b.co", 1, bad))


def test_every_violation_is_reported_together() -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_new_user(NewUser("", "x", 999, ("root",), request_id="r" * 129))
    assert {v.field for v in caught.value.violations} == {
        "name",
        "email",
        "age",
        "roles",
        "request_id",
    }


def test_batch_names_items_by_index_and_catches_repeats() -> None:
    good = NewUser("A", "a@b.co", 1)
    with pytest.raises(InvalidArgument) as caught:
        validate_new_users([good, NewUser("B", "bad", 1), NewUser("C", "A@B.CO", 2)])
    assert {v.field for v in caught.value.violations} == {"users[1].email", "users[2].email"}


def test_batch_size_is_bounded() -> None:
    with pytest.raises(InvalidArgument):
        validate_new_users([])
    with pytest.raises(InvalidArgument):
        validate_new_users([NewUser("A", f"a{i}@b.co", 1) for i in range(MAX_BATCH + 1)])


@given(st.integers(0, 2**48 - 1), st.integers(0, 2**48 - 1))
def test_ids_sort_by_time(a: int, b: int) -> None:
    first, second = new_user_id(a), new_user_id(b)
    assert len(first) == 26
    if a < b:
        assert first < second


@given(st.text(no_nul, min_size=1, max_size=100))
def test_page_tokens_round_trip(last_id: str) -> None:
    assert decode_page_token(encode_page_token(last_id)) == last_id


@given(valid_users, st.sampled_from(["name", "request_id"]))
def test_a_nul_character_is_refused(user: NewUser, field: str) -> None:
    values = {"name": user.name, "request_id": "", field: "a\x00b"}
    with pytest.raises(InvalidArgument) as caught:
        validate_new_user(
            NewUser(values["name"], user.email, user.age, user.roles, values["request_id"])
        )
    assert [v.field for v in caught.value.violations] == [field]
    with pytest.raises(InvalidArgument):
        validate_user_id("a\x00b")
    with pytest.raises(InvalidArgument):
        decode_page_token(encode_page_token("a\x00b"))


@given(st.text(max_size=80))
def test_arbitrary_tokens_decode_or_fail_with_invalid_argument(token: str) -> None:
    try:
        decode_page_token(token)
    except InvalidArgument as exc:
        fields = [v.field for v in exc.violations]
    else:
        fields = ["page_token"]
    assert fields == ["page_token"]


def test_page_size_rules() -> None:
    assert resolve_page_size(0) == 100
    assert resolve_page_size(7) == 7
    assert resolve_page_size(10**6) == 1000
    with pytest.raises(InvalidArgument):
        resolve_page_size(-1)
