"""Adversarial tests of the catalog index: len's count against the rows queries see, over random
operation sequences with row groups small enough that ids straddle them; the reader protocol
(log listed first, then the newest manifest) against writers, a deleter and compactors in real
processes; and ipcguard's quick schema walk against its full walk on generated schemas.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import workers
from modelrows import Catalog, ModelRowsError, RowNotFoundError
from modelrows._catalog import _index
from workers import StressRowV1, stress_row

# -- len against index_table over random operation sequences ---------------------------------------


def _check_counts(root: Path, catalog: Catalog, live: set[str], where: str) -> None:
    table_ids = catalog.index_table().column("row_id").to_pylist()
    assert sorted(table_ids) == sorted(live), where
    fresh = Catalog.open(root)
    assert len(fresh) == len(live), where  # a fresh reader: nothing cached
    assert len(catalog) == len(live), where  # this one: segments cached by index_table
    assert len(fresh.index_table()) == len(live), where


@pytest.mark.parametrize("seed", range(6))
def test_len_matches_the_rows_queries_see_over_random_operations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    """len(catalog) (the manifest's count adjusted by the log's ids, looked up through row-group
    statistics) equals the rows index_table() holds and the rows a model of the catalog holds,
    after every step of a random sequence of appends, batches, deletes of segment rows and of
    log rows, deletes recorded again for ids already deleted (or never appended), incremental
    and full compactions, auto-compactions inside appends, and rebuilds, with row groups of 4
    rows so that the looked-up ids straddle row groups and segments."""
    monkeypatch.setattr(_index, "_ROW_GROUP", 4)
    monkeypatch.setattr(_index, "COMPACT_AT", 5)
    monkeypatch.setattr(_index, "CHECK_EVERY", 3)
    monkeypatch.setattr(_index, "MAX_SEGMENTS", 3)
    rng = random.Random(seed)
    root = tmp_path / "catalog"
    catalog = Catalog.create(root, StressRowV1, partition_by=["run"])
    live: set[str] = set()
    deleted: list[str] = []
    epoch = 0
    ops = ["append", "many", "delete", "delete_many", "again", "unknown", "inc", "full", "reindex"]
    weights = [6, 3, 3, 1, 2, 1, 2, 1, 1]
    for step in range(70):
        op = rng.choices(ops, weights)[0]
        if op == "append":
            live.add(catalog.append(stress_row(seed, epoch, numel=4, run="a"), fsync=False))
            epoch += 1
        elif op == "many":
            batch = [
                stress_row(seed, epoch + k, numel=4, run=rng.choice("ab"))
                for k in range(rng.randint(1, 9))
            ]
            epoch += len(batch)
            live.update(catalog.append_many(batch, fsync=False))
        elif op in ("delete", "delete_many") and live:
            # the newest ids are in the log, older ones in segments: pick from both ends
            ordered = sorted(live)
            k = 1 if op == "delete" else rng.randint(2, 5)
            targets = {
                rng.choice(ordered[-3:] if rng.random() < 0.5 else ordered) for _ in range(k)
            }
            assert sorted(catalog.delete(sorted(targets), fsync=False)) == sorted(targets)
            live -= targets
            deleted += sorted(targets)
        elif op == "again" and deleted:
            # a delete entry for rows deleted before (folded into a manifest, or still logged)
            again = rng.sample(deleted, min(len(deleted), rng.randint(1, 3)))
            catalog._index.publish_delete(again, fsync=False)
        elif op == "unknown":
            catalog._index.publish_delete([_index.new_id()], fsync=False)
        elif op == "inc":
            catalog.compact(full=False, fsync=False)
        elif op == "full":
            catalog.compact(fsync=False)
        elif op == "reindex":
            catalog.reindex(progress=None)
        _check_counts(root, catalog, live, f"seed {seed} step {step} ({op})")


def test_reindex_leaves_out_a_row_deleted_while_its_file_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A delete (by another catalog object) that removes a row file after reindex listed it and
    checked it, before reindex reads it for its index row: reindex completes, without the row
    (it failed with RowFileError "no such file", as the stress test below found with a real
    deleter process)."""
    root = tmp_path / "catalog"
    catalog = Catalog.create(root, StressRowV1, partition_by=["run"])
    ids = catalog.append_many([stress_row(1, e, numel=4, run="a") for e in range(3)], fsync=False)
    other = Catalog.open(root)
    victim = ids[1]
    checked = Catalog._problem

    def check_then_delete(self: Catalog, row_id: str, key: str, **kwargs: Any) -> Any:
        problem = checked(self, row_id, key, **kwargs)
        if row_id == victim:  # checked sound; deleted before it is read again
            assert other.delete([victim], fsync=False) == [victim]
        return problem

    monkeypatch.setattr(Catalog, "_problem", check_then_delete)
    assert catalog.reindex(progress=None) in (2, 3)  # the delete's entry hides it if indexed
    monkeypatch.undo()
    for reader in (catalog, Catalog.open(root)):
        assert sorted(reader.index_table().column("row_id").to_pylist()) == [ids[0], ids[2]]
        assert len(reader) == 2
        with pytest.raises(RowNotFoundError):
            reader.get(victim)


def test_reindex_that_catches_up_twice_indexes_each_row_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """reindex merges in what compactions published after it listed the row files; when another
    compaction publishes while it catches up (so that its manifest loses the race and it catches
    up again), a row appended after the listing is indexed once: len, index_table and a fresh
    reader agree on the rows."""
    root = tmp_path / "catalog"
    catalog = Catalog.create(root, StressRowV1, partition_by=["run"])
    ids = [catalog.append(stress_row(1, e, numel=4, run="a"), fsync=False) for e in range(2)]
    other = Catalog.open(root)
    listed = Catalog._row_file_copies
    catch_up = _index.Index._catch_up
    calls: list[int] = []

    def list_then_append(self: Catalog) -> Any:
        found = listed(self)
        if self is catalog and not calls:  # a row appended and compacted after the listing
            ids.append(other.append(stress_row(2, 0, numel=4, run="b"), fsync=False))
            assert other.compact(full=False, fsync=False)
        return found

    def catch_up_while_compacted(self: _index.Index, rows: pa.Table, known: set[str]) -> Any:
        calls.append(1)
        merged = catch_up(self, rows, known)
        if len(calls) == 1:  # another compaction publishes meanwhile: the rebuild goes again
            ids.append(other.append(stress_row(2, 1, numel=4, run="b"), fsync=False))
            assert other.compact(full=False, fsync=False)
        return merged

    monkeypatch.setattr(Catalog, "_row_file_copies", list_then_append)
    monkeypatch.setattr(_index.Index, "_catch_up", catch_up_while_compacted)
    catalog.reindex(progress=None)
    monkeypatch.undo()
    assert len(calls) == 2
    for reader in (catalog, Catalog.open(root)):
        table_ids = reader.index_table().column("row_id").to_pylist()
        assert sorted(table_ids) == sorted(ids)
        assert len(reader) == len(ids)


# -- the reader protocol under real processes ------------------------------------------------------

WRITERS, READERS, COMPACTORS = 3, 2, 2
WRITER_OPS = int(os.environ.get("MODELROWS_ADVERSARY_OPS", "40"))


def _small_thresholds() -> None:
    """In a child: compactions often, from appends too (a log of 6 entries is folded)."""
    _index.COMPACT_AT = 6
    _index.CHECK_EVERY = 2
    _index.MAX_SEGMENTS = 3
    _index._ROW_GROUP = 4


def _acked(reports: Path) -> list[str]:
    """Every id whose append returned, as the writers report them."""
    out: list[str] = []
    for i in range(WRITERS):
        for line in workers._lines(str(reports / f"w{i}")):
            if line.startswith("appended "):
                out += line.split()[1:]
    return out


def _deletes(reports: Path, what: str) -> set[str]:
    return {
        line.split()[1]
        for line in workers._lines(str(reports / "deleter"))
        if line.startswith(what + " ")
    }


def adv_writer(root: str, reports: str, index: int, seed: int) -> None:
    """WRITER_OPS appends, about a third of them append_many of 2-5 rows; each returned id
    reported, and found at once by this writer's own catalog (read-your-writes)."""
    _small_thresholds()
    os.nice(5)
    rng = random.Random(seed)
    report = f"{reports}/w{index}"
    try:
        catalog = Catalog.open(root)
        for op in range(WRITER_OPS):
            n = rng.randint(2, 5) if rng.random() < 0.35 else 1
            rows = [stress_row(index, op * 8 + k, numel=4, run=f"r{k % 2}") for k in range(n)]
            ids = catalog.append_many(rows, fsync=False)
            workers._report(report, "appended " + " ".join(ids))
            try:
                row = catalog.get(ids[-1])
            except RowNotFoundError:  # only if the deleter took it already
                assert ids[-1] in _deletes(Path(reports), "deleting"), ids[-1]
            else:
                assert isinstance(row, StressRowV1) and row.writer == index
        workers._report(report, "done")
    except BaseException:
        workers._report(report, json.dumps({"error": __import__("traceback").format_exc()}))
        raise


def adv_deleter(root: str, stop: str, reports: str, seed: int) -> None:
    """Delete a random older row (never among the 12 newest) now and then, until ``stop``:
    "deleting <id>" before the call, "deleted <id>" once it returned."""
    _small_thresholds()
    rng = random.Random(seed)
    report = f"{reports}/deleter"
    try:
        catalog = Catalog.open(root)
        while not os.path.exists(stop):
            ids = sorted(catalog.index_table().column("row_id").to_pylist())[:-12]
            if len(ids) < 4:
                continue
            target = rng.choice(ids)
            workers._report(report, f"deleting {target}")
            assert catalog.delete([target], fsync=False) == [target]
            workers._report(report, f"deleted {target}")
            for _ in range(rng.randint(0, 3)):  # a few reads between deletes
                len(Catalog.open(root))
        workers._report(report, "done")
    except BaseException:
        workers._report(report, json.dumps({"error": __import__("traceback").format_exc()}))
        raise


def adv_compactor(root: str, stop: str, reports: str, seed: int, index: int) -> None:
    """compact(full=False) in a loop until ``stop``, one time in four a full compact()."""
    _small_thresholds()
    rng = random.Random(seed)
    report = f"{reports}/compactor{index}"
    runs = published = 0
    try:
        catalog = Catalog.open(root)
        while not os.path.exists(stop):
            published += catalog.compact(full=rng.random() < 0.25, fsync=False)
            runs += 1
        workers._report(report, json.dumps({"runs": runs, "published": published}))
    except BaseException:
        workers._report(report, json.dumps({"error": __import__("traceback").format_exc()}))
        raise


def adv_reindexer(root: str, stop: str, reports: str) -> None:
    """reindex() in a loop until ``stop``: the index rebuilt from the row files while rows are
    appended, deleted and compacted."""
    _small_thresholds()
    report = f"{reports}/reindexer"
    runs = 0
    try:
        catalog = Catalog.open(root)
        while not os.path.exists(stop):
            catalog.reindex(progress=None)
            runs += 1
        workers._report(report, json.dumps({"runs": runs}))
    except BaseException:
        workers._report(report, json.dumps({"error": __import__("traceback").format_exc()}))
        raise


def adv_reader(root: str, stop: str, reports: str, index: int, seed: int) -> None:
    """Catalog.open + len, index_table and get, in a loop until ``stop`` (every other pass with
    one catalog object kept across passes). Every id whose
    append returned before the pass began is found, unless its delete started before the pass
    ended; no id whose delete returned before the pass began is seen; len lies between what
    must be visible and what can be."""
    _small_thresholds()
    rng = random.Random(seed)
    report = f"{reports}/r{index}"
    rep = Path(reports)
    passes = checked = 0
    try:
        kept = Catalog.open(root)
        while not os.path.exists(stop):
            acked = _acked(rep)  # returned before this pass
            gone = _deletes(rep, "deleted")
            # a fresh catalog object, or every other pass one kept (its cache, from passes before)
            catalog = kept if passes % 2 else Catalog.open(root)
            n = len(catalog)
            table = catalog.index_table()
            ids = table.column("row_id").to_pylist()
            sample = rng.sample(acked, min(6, len(acked)))
            found = {}
            for row_id in sample:
                try:
                    found[row_id] = catalog.get(row_id).row_id
                except RowNotFoundError:
                    found[row_id] = None
            fresh_n = len(Catalog.open(root))
            deleting = _deletes(rep, "deleting")  # started before this pass ended
            upper = len(_acked(rep)) + WRITERS * 5  # appends that returned, or in flight
            problems = []
            if len(set(ids)) != len(ids):
                problems.append("index_table lists a row twice")
            if missing := (set(acked) - deleting) - set(ids):
                problems.append(f"index_table misses acknowledged rows {sorted(missing)}")
            if back := gone & set(ids):
                problems.append(f"index_table shows deleted rows {sorted(back)}")
            for row_id, got in found.items():
                if got is None and row_id not in deleting:
                    problems.append(f"get misses the acknowledged row {row_id}")
                elif got is not None and got != row_id:
                    problems.append(f"get({row_id}) gave row {got}")
            for count in (n, fresh_n):
                if not len(set(acked) - deleting) <= count <= upper - len(gone):
                    problems.append(
                        f"len {count} outside [{len(set(acked) - deleting)}, {upper - len(gone)}]"
                    )
            for row_id in rng.sample(sorted(gone), min(2, len(gone))):
                try:
                    catalog.get(row_id)
                    problems.append(f"get loads the deleted row {row_id}")
                except RowNotFoundError:
                    pass
            if problems:
                raise AssertionError("; ".join(problems))
            passes += 1
            checked += len(sample)
        workers._report(report, json.dumps({"passes": passes, "checked": checked}))
    except BaseException:
        workers._report(report, json.dumps({"error": __import__("traceback").format_exc()}))
        raise


def _last(path: Path) -> dict[str, Any]:
    lines = workers._lines(str(path))
    assert lines, path
    result: dict[str, Any] = json.loads(lines[-1])
    assert "error" not in result, f"{path.name}: {result['error']}"
    return result


@pytest.mark.stress
@pytest.mark.parametrize(
    ("seed", "reindexing"),
    [
        (1, False),
        (2, False),
        (3, True),
    ],
)
def test_readers_miss_no_acknowledged_row_and_see_no_deleted_one_under_compactions(
    tmp_path: Path, seed: int, reindexing: bool
) -> None:
    """Three writers (appends and append_many), a deleter, two compactors racing each other
    (incremental, and full one time in four) and two readers opening the catalog afresh for every pass, each its own
    process, with compactions every few entries (also from appends) and row groups of 4 rows:
    every reader pass finds every row acknowledged before it began (index_table, get, len)
    unless its delete had started, never a row whose delete returned, and len stays within
    what must and what may be visible; at the end len, index_table and a fresh reader agree
    with the acknowledged rows less the deleted ones exactly. The last run also rebuilds the
    index from the row files in a loop meanwhile (reindex)."""
    root = tmp_path / "catalog"
    Catalog.create(root, StressRowV1, partition_by=["run"])
    ctx: Any = workers.context()  # a forkserver context (BaseContext declares no Process)
    stop, reports = tmp_path / "stop", tmp_path / "reports"
    reports.mkdir()
    others = [
        ctx.Process(target=adv_deleter, args=(str(root), str(stop), str(reports), seed)),
        *(
            ctx.Process(
                target=adv_compactor, args=(str(root), str(stop), str(reports), seed + i, i)
            )
            for i in range(COMPACTORS)
        ),
        *(
            ctx.Process(target=adv_reader, args=(str(root), str(stop), str(reports), i, seed + i))
            for i in range(READERS)
        ),
    ]
    if reindexing:
        others.append(ctx.Process(target=adv_reindexer, args=(str(root), str(stop), str(reports))))
    writers = [
        ctx.Process(target=adv_writer, args=(str(root), str(reports), i, seed * 10 + i))
        for i in range(WRITERS)
    ]
    for p in others + writers:
        p.start()
    try:
        for p in writers:
            p.join(120)
        stop.touch()
        for p in others:
            p.join(60)
    finally:
        stop.touch()
        for p in others + writers:
            if p.is_alive():
                p.kill()
                p.join()
    for name in [*(f"w{i}" for i in range(WRITERS)), "deleter"]:
        last = workers._lines(str(reports / name))[-1]
        assert last == "done", last
    compactors = [_last(reports / f"compactor{i}") for i in range(COMPACTORS)]
    results = [_last(reports / f"r{i}") for i in range(READERS)]
    if reindexing:
        assert _last(reports / "reindexer")["runs"] > 0
    assert all(p.exitcode == 0 for p in others + writers)
    assert sum(c["published"] for c in compactors) > 0
    assert all(r["passes"] > 0 for r in results)
    live = set(_acked(reports)) - _deletes(reports, "deleted")
    assert _deletes(reports, "deleting") == _deletes(reports, "deleted")
    catalog = Catalog.open(root)
    assert sorted(catalog.index_table().column("row_id").to_pylist()) == sorted(live)
    assert len(catalog) == len(live) == len(Catalog.open(root))
    print(compactors, results, len(_deletes(reports, "deleted")))


# -- ipcguard's quick schema walk against its full walk --------------------------------------------

_names = st.text(min_size=0, max_size=6)
_meta_keys = st.one_of(
    st.sampled_from(
        ["ARROW:extension:name", "ARROW:extension:metadata", "JuliaLang.x", "k", "", "é"]
    ),
    st.text(max_size=8),
)
_metadata = st.none() | st.dictionaries(
    _meta_keys,
    st.one_of(
        st.sampled_from(["JuliaLang.LegolasFlux.Weights", "arrow.uuid", ""]), st.text(max_size=8)
    ),
    max_size=3,
)
_leaf_types = st.sampled_from(
    [
        pa.int8(), pa.int64(), pa.float32(), pa.float64(), pa.string(), pa.large_string(),
        pa.binary(), pa.bool_(), pa.null(), pa.timestamp("us", "UTC"), pa.date32(),
        pa.decimal128(10, 2), pa.binary(16), pa.dictionary(pa.int8(), pa.string()),
        pa.dictionary(pa.int32(), pa.int64()), pa.uuid(),
    ]
)  # fmt: skip


def _field(types: st.SearchStrategy[pa.DataType]) -> st.SearchStrategy[pa.Field]:
    return st.builds(
        lambda name, t, nullable, meta: pa.field(
            name, t, nullable or t == pa.null(), metadata=meta
        ),
        _names, types, st.booleans(), _metadata,
    )  # fmt: skip


_types = st.recursive(
    _leaf_types,
    lambda inner: st.one_of(
        st.builds(pa.list_, _field(inner)),
        st.builds(pa.large_list, _field(inner)),
        st.builds(lambda f: pa.list_(f, 3), _field(inner)),
        st.builds(pa.struct, st.lists(_field(inner), max_size=3)),
        st.builds(lambda k, v: pa.map_(pa.string(), v), st.just(0), inner),
        st.builds(
            lambda fs: pa.union(fs, "sparse") if fs else pa.null(),
            st.lists(_field(inner), max_size=2),
        ),
    ),
    max_leaves=6,
)
_schemas = st.builds(
    lambda fields, meta: pa.schema(fields, metadata=meta),
    st.lists(_field(_types), max_size=4),
    _metadata,
)
_mutations = st.lists(
    st.tuples(st.integers(0, 10_000), st.sampled_from(["xor", "set", "cut", "insert"]),
              st.integers(0, 255)),
    max_size=3,
)  # fmt: skip


def _mutate(data: bytes, mutations: list[tuple[int, str, int]]) -> bytes:
    out = bytearray(data)
    for at, how, value in mutations:
        if not out:
            break
        at %= len(out)
        if how == "xor":
            out[at] ^= value or 1
        elif how == "set":
            out[at] = value
        elif how == "cut":
            del out[at : at + 1 + value % 8]
        else:
            out[at:at] = bytes([value]) * (1 + value % 4)
    return bytes(out)


@settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))
@given(schema=_schemas, mutations=_mutations)
def test_the_quick_schema_walk_agrees_with_the_full_walk_on_generated_schemas(
    schema: pa.Schema, mutations: list[tuple[int, str, int]]
) -> None:
    """For generated schemas (nested lists, structs, maps, unions, dictionaries, extension types,
    field and schema metadata with the extension keys, odd names) and byte mutations of their
    messages, check_schema_message gives the same outcome (passed, or the same error) with the
    quick walk as with the full walk alone; and a schema with a dictionary or a (non-foreign)
    extension type anywhere is refused."""
    from modelrows import _ipcguard

    data = _mutate(schema.serialize().to_pybytes(), mutations)
    quick = _ipcguard._schema_is_plain

    def outcome(full_walk: bool) -> str:
        _ipcguard._schema_is_plain = (lambda b, p: False) if full_walk else quick  # type: ignore[assignment]
        try:
            _ipcguard.check_schema_message(data, where="schema")
        except ModelRowsError as exc:
            return f"{type(exc).__name__}: {exc}"
        finally:
            _ipcguard._schema_is_plain = quick
        return "passed"

    got = outcome(False)
    assert got == outcome(True)
    if not mutations:  # a sound message: refused exactly for a dictionary or extension type
        assert (got == "passed") == (not _refused(schema)), (schema, got)


def _refused(schema: pa.Schema) -> bool:
    """Whether a dictionary or a non-foreign extension type is anywhere in the schema."""

    def bad(field: pa.Field) -> bool:
        meta = field.metadata or {}
        ext = meta.get(b"ARROW:extension:name")
        if ext is not None and not ext.startswith(b"JuliaLang."):
            return True
        t = field.type
        if isinstance(t, (pa.DictionaryType, pa.BaseExtensionType)):
            return True
        return any(bad(t.field(i)) for i in range(t.num_fields))

    return any(bad(f) for f in schema)
