"""The Store contract, run against every backend (see conftest: sqlite and postgres)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone

import grpc
import pytest

from service.domain import User
from service.errors import AlreadyExists, FieldViolation, InvalidArgument
from service.store import Store, StoreUnavailable
from tests.store._users import collect, new_user
from tests.store.conftest import Backend


def _fixed_clock(moment: datetime) -> Callable[[], datetime]:
    return lambda: moment


async def test_store_satisfies_protocol(store: Store) -> None:
    assert isinstance(store, Store)


async def test_create_then_get_round_trip(backend: Backend) -> None:
    moment = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=timezone(timedelta(hours=2)))
    store = backend.store(clock=_fixed_clock(moment))
    await store.open()
    try:
        made = await store.create_user(
            new_user(1, name="Ada Lovelace", email="Ada@Example.com", roles=("admin", "user"))
        )
        got = await store.get_user(made.id)
    finally:
        await store.close()
    assert got == made
    assert got == User(
        id=made.id,
        name="Ada Lovelace",
        email="Ada@Example.com",  # as given, not case-folded
        age=21,
        roles=("admin", "user"),
        created_at=moment,
    )
    assert got.created_at.tzinfo == UTC
    assert got.created_at.microsecond == 123456
    assert len(made.id) == 26


async def test_get_missing_user_is_none(store: Store) -> None:
    assert await store.get_user("01ARZ3NDEKTSV4RRFFQ69G5FAV") is None


async def test_duplicate_email_differing_in_case_already_exists(
    store: Store, backend: Backend
) -> None:
    await store.create_user(new_user(1, email="ada@example.com"))
    with pytest.raises(AlreadyExists) as caught:
        await store.create_user(new_user(2, email="ADA@Example.COM"))
    assert caught.value.code == grpc.StatusCode.ALREADY_EXISTS
    assert caught.value.message == "a user with email ADA@Example.COM already exists"
    assert backend.count_users() == 1


async def test_same_request_id_and_fields_returns_the_first_user(
    store: Store, backend: Backend
) -> None:
    first = await store.create_user(new_user(1, request_id="key-1"))
    # The email's case is not part of the fingerprint: still a replay.
    again = await store.create_user(new_user(1, request_id="key-1", email="USER1@example.com"))
    assert again == first
    assert backend.count_users() == 1


async def test_request_id_reused_with_other_fields_is_invalid(
    store: Store, backend: Backend
) -> None:
    await store.create_user(new_user(1, request_id="key-1"))
    with pytest.raises(InvalidArgument) as caught:
        await store.create_user(new_user(1, request_id="key-1", age=99))
    assert caught.value.violations == (
        FieldViolation("request_id", "reused with different fields"),
    )
    assert backend.count_users() == 1


async def test_empty_request_ids_never_collide(store: Store, backend: Backend) -> None:
    a = await store.create_user(new_user(1))
    b = await store.create_user(new_user(2))
    assert a.id != b.id
    assert backend.count_users() == 2


async def test_concurrent_creates_with_one_request_id_store_one_user(backend: Backend) -> None:
    # Two stores play two replicas; each sends five copies of the same request.
    replicas = [backend.store(), backend.store()]
    for replica in replicas:
        await replica.open()
    try:
        calls = [r.create_user(new_user(7, request_id="same")) for r in replicas for _ in range(5)]
        results = await asyncio.gather(*calls)
    finally:
        for replica in replicas:
            await replica.close()
    assert len({u.id for u in results}) == 1
    assert backend.count_users() == 1


async def test_concurrent_creates_of_distinct_users_all_land(
    store: Store, backend: Backend
) -> None:
    results = await asyncio.gather(*(store.create_user(new_user(n)) for n in range(20)))
    assert len({u.id for u in results}) == 20
    assert backend.count_users() == 20


async def test_batch_returns_users_in_input_order_with_ascending_ids(store: Store) -> None:
    news = [new_user(n) for n in (5, 3, 9, 1)]
    made = await store.create_users(news)
    assert [u.email for u in made] == [n.email for n in news]
    assert [u.id for u in made] == sorted(u.id for u in made)
    assert [await store.get_user(u.id) for u in made] == made


async def test_batch_with_a_taken_email_stores_nothing(store: Store, backend: Backend) -> None:
    await store.create_user(new_user(0, email="taken@example.com"))
    batch = [new_user(1), new_user(2), new_user(3), new_user(4, email="Taken@Example.com")]
    with pytest.raises(AlreadyExists) as caught:
        await store.create_users(batch)
    assert caught.value.message.startswith("users[3].email: ")
    assert backend.count_users() == 1  # users 1..3 were rolled back


async def test_batch_reusing_a_request_id_with_other_fields_stores_nothing(
    store: Store, backend: Backend
) -> None:
    await store.create_user(new_user(0, request_id="k"))
    batch = [new_user(1), new_user(2), new_user(3, request_id="k")]
    with pytest.raises(InvalidArgument) as caught:
        await store.create_users(batch)
    assert caught.value.violations == (
        FieldViolation("users[2].request_id", "reused with different fields"),
    )
    assert backend.count_users() == 1


async def test_replayed_batch_returns_the_same_users(store: Store, backend: Backend) -> None:
    batch = [new_user(n, request_id=f"k{n}") for n in range(3)]
    first = await store.create_users(batch)
    assert await store.create_users(batch) == first
    # A batch that mixes a replayed item and a new one stores only the new one.
    mixed = await store.create_users([batch[1], new_user(9, request_id="k9")])
    assert mixed[0] == first[1]
    assert backend.count_users() == 4


async def test_batch_repeating_an_item_stores_it_once(store: Store, backend: Backend) -> None:
    # The domain rejects such batches first; the store still keeps its invariants.
    twice = await store.create_users([new_user(1, request_id="k"), new_user(1, request_id="k")])
    assert twice[0] == twice[1]
    with pytest.raises(AlreadyExists, match=r"^users\[1\]\.email: "):
        await store.create_users([new_user(2), new_user(3, email="USER2@example.com")])
    assert backend.count_users() == 1


async def test_empty_batch_stores_nothing(store: Store, backend: Backend) -> None:
    assert await store.create_users([]) == []
    assert backend.count_users() == 0


async def test_iter_users_pages_through_250_users(store: Store) -> None:
    made = await store.create_users([new_user(n) for n in range(250)])
    ids = sorted(u.id for u in made)

    everything = await collect(store.iter_users(None, 1000))
    assert [u.id for u in everything] == ids
    assert everything == sorted(made, key=lambda u: u.id)

    pages: list[str] = []
    after: str | None = None
    while True:
        page = [u.id for u in await collect(store.iter_users(after, 100))]
        pages.extend(page)
        if len(page) < 100:
            break
        after = page[-1]
    assert pages == ids
    assert [u.id for u in await collect(store.iter_users(ids[99], 101))] == ids[100:201]
    assert await collect(store.iter_users(ids[-1], 10)) == []
    assert await collect(store.iter_users(None, 0)) == []


async def test_iter_users_orders_ids_byte_by_byte(store: Store, backend: Backend) -> None:
    # Ids from other writers (or a future id scheme) must page consistently
    # whatever the database's locale: listing order is Python's str order.
    odd_ids = ["b", "B", "a", "_", "Z9", "z", "0", "\u00e4", "a-b", "aB"]
    roles = '["user"]' if backend.name == "sqlite" else "{user}"
    created = 0 if backend.name == "sqlite" else datetime(2024, 1, 1, tzinfo=UTC)
    for n, user_id in enumerate(odd_ids):
        backend.query(
            "INSERT INTO users (id, name, email, email_key, age, roles, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (user_id, "x", f"{n}@x.io", f"{n}@x.io", 1, roles, created),
        )
    listed = [u.id for u in await collect(store.iter_users(None, 100))]
    assert listed == sorted(odd_ids)
    after_a = [i for i in sorted(odd_ids) if i > "a"]
    assert [u.id for u in await collect(store.iter_users("a", 100))] == after_a


async def test_iter_users_across_chunk_boundaries(backend: Backend) -> None:
    store = backend.store(chunk_size=3)
    await store.open()
    try:
        made = await store.create_users([new_user(n) for n in range(7)])
        ids = sorted(u.id for u in made)
        after = ids[1] + "0"  # not an id itself: keyset needs only an ordering
        for limit in range(9):  # below, at and across the chunks of 3
            assert [u.id for u in await collect(store.iter_users(None, limit))] == ids[:limit]
            listed = [u.id for u in await collect(store.iter_users(after, limit))]
            assert listed == ids[2:][:limit]
    finally:
        await store.close()


async def test_a_paused_stream_holds_no_connection(backend: Backend) -> None:
    options = {"pool_max": 1, "pool_timeout": 2.0} if backend.name == "postgres" else {}
    store = backend.store(chunk_size=2, **options)
    await store.open()
    try:
        made = await store.create_users([new_user(n) for n in range(5)])
        stream = store.iter_users(None, 5)
        first = await anext(stream)
        # Mid-stream, the only pooled connection (postgres) is free for other calls.
        assert await store.get_user(made[-1].id) == made[-1]
        await store.create_user(new_user(10))
        rest = await collect(stream)
        assert [first, *rest] == sorted(made, key=lambda u: u.id)  # user 10 sorts last
    finally:
        await store.close()


async def test_a_stream_closed_early_leaves_the_store_usable(store: Store) -> None:
    await store.create_users([new_user(n) for n in range(5)])
    stream = store.iter_users(None, 5)
    await anext(stream)
    await stream.aclose()  # type: ignore[attr-defined]
    assert len(await collect(store.iter_users(None, 10))) == 5


async def test_two_stores_on_one_database_see_each_others_writes(backend: Backend) -> None:
    a, b = backend.store(), backend.store()
    await a.open()
    await b.open()
    try:
        made = await a.create_user(new_user(1))
        assert await b.get_user(made.id) == made
        more = await b.create_user(new_user(2))
        assert [u.id for u in await collect(a.iter_users(None, 10))] == sorted([made.id, more.id])
        with pytest.raises(AlreadyExists):
            await a.create_user(new_user(3, email="user2@example.com"))
    finally:
        await a.close()
        await b.close()


async def test_schema_is_created_once_by_concurrent_opens(backend: Backend) -> None:
    stores = [backend.store() for _ in range(4)]
    try:
        await asyncio.gather(*(s.open() for s in stores))
        await stores[0].create_user(new_user(1))
    finally:
        for s in stores:
            await s.close()
    assert backend.query("SELECT version FROM schema_migrations") == [(1,)]


async def test_reopening_a_migrated_database_keeps_its_data(backend: Backend) -> None:
    first = backend.store()
    await first.open()
    made = await first.create_user(new_user(1))
    await first.close()
    second = backend.store()
    await second.open()
    try:
        assert await second.get_user(made.id) == made
    finally:
        await second.close()
    assert backend.query("SELECT version FROM schema_migrations") == [(1,)]


async def test_ping_answers_while_open(store: Store) -> None:
    await store.ping()


async def test_a_closed_store_is_unavailable_and_close_is_idempotent(backend: Backend) -> None:
    store = backend.store()
    await store.open()
    await store.close()
    await store.close()
    with pytest.raises(StoreUnavailable):
        await store.ping()
    with pytest.raises(StoreUnavailable):
        await store.get_user("x")
    with pytest.raises(StoreUnavailable):
        await store.create_user(new_user(1))
    with pytest.raises(StoreUnavailable):
        await collect(store.iter_users(None, 1))
    with pytest.raises(StoreUnavailable):
        await store.open()


async def test_a_store_not_yet_opened_is_unavailable(backend: Backend) -> None:
    store = backend.store()
    try:
        with pytest.raises(StoreUnavailable, match="not open"):
            await store.ping()
        with pytest.raises(StoreUnavailable, match="not open"):
            await store.create_users([new_user(1)])
    finally:
        await store.close()


async def test_repr_names_backend_and_state(backend: Backend) -> None:
    store = backend.store()
    assert "not connected" in repr(store)
    await store.open()
    assert "open" in repr(store)
    await store.close()
    assert "closed" in repr(store)
