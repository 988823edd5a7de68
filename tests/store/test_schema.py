"""The migration list: ordered, complete for both dialects, and applied once."""

from __future__ import annotations

import pytest

from service.store._schema import MIGRATIONS, Migration, _check_order, pending


def test_versions_start_at_one_and_increase_without_gaps() -> None:
    assert [m.version for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))


def test_every_migration_speaks_both_dialects() -> None:
    for migration in MIGRATIONS:
        assert migration.sqlite
        assert migration.postgres
        assert migration.description


def test_pending_skips_the_applied_versions_in_order() -> None:
    assert pending([]) == list(MIGRATIONS)
    assert pending([m.version for m in MIGRATIONS]) == []
    assert pending([999]) == list(MIGRATIONS)


@pytest.mark.parametrize("versions", [(2, 1), (1, 1), (0, 1)])
def test_a_misordered_list_is_refused(versions: tuple[int, ...]) -> None:
    bad = tuple(Migration(v, "x", ("SELECT 1",), ("SELECT 1",)) for v in versions)
    with pytest.raises(AssertionError, match="increasing"):
        _check_order(bad)
