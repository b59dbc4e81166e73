"""Engine, sessions, the declarative Base, and schema upgrades through Alembic."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, MetaData, create_engine, event, inspect
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from digest.errors import ConfigError, SchemaError

MIGRATIONS = Path(__file__).parent / "migrations"

# Stable constraint names so Alembic migrations can refer to them on every backend.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def load_models() -> None:
    """Import every module that declares tables, so Base.metadata is complete."""
    import importlib

    for name in (
        "digest.articles",
        "digest.editions",
        "subscribers.models",
        "digest.ledger",
        "digest.runs",
        "digest.web_models",
        "digest.proofs",
        "digest.bounces.models",
        "digest.tracking",
        "digest.clicks",
        "digest.abtest",
        "digest.summaries",
        "digest.report_counts",
    ):
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise


def make_engine(url: str, **kwargs: Any) -> Engine:
    """Create an engine; SQLite gets WAL, foreign keys and a busy timeout for several processes."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(f"DIGEST_DATABASE_URL: {url!r} is not a database URL") from None
    if parsed.get_backend_name() == "sqlite":
        db = parsed.database
        if db and db != ":memory:":
            Path(db).parent.mkdir(parents=True, exist_ok=True)
        kwargs.setdefault("connect_args", {"timeout": 30})
        engine = create_engine(url, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _rec: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            # Checkpoint the WAL every ~40 MB rather than 4 MB: a send rewrites the same ledger
            # pages on claim, hand-over and settle, so fewer checkpoints copy far fewer pages
            # (SendGrid send benchmark: about 10% faster).
            cur.execute("PRAGMA wal_autocheckpoint=10000")
            cur.close()

        return engine
    threshold = _prepare_threshold(parsed)
    try:
        engine = create_engine(url, pool_pre_ping=True, **kwargs)
    except ModuleNotFoundError as e:
        raise ConfigError(
            f"DIGEST_DATABASE_URL: driver {e.name!r} is not installed "
            "(pip install 'digest[postgres]')"
        ) from None
    if threshold is not _DRIVER_DEFAULT:
        # Kept in the engine's URL (worker processes are started from it), given to the driver
        # as its own connect() argument rather than as a libpq option.
        @event.listens_for(engine, "do_connect")
        def _threshold(_dialect: Any, _rec: Any, _cargs: Any, cparams: dict[str, Any]) -> None:
            cparams["prepare_threshold"] = threshold

    return engine


_DRIVER_DEFAULT = object()


def _prepare_threshold(url: URL) -> object:
    """psycopg prepares a statement on the server after five executions; a pooler in
    transaction mode that does not track prepared statements (PgBouncer before 1.21) hands the
    next transaction another server connection, which then lacks it or already has one of the
    same name. `?prepare_threshold=none` in DIGEST_DATABASE_URL turns preparation off, a number
    sets the threshold; nothing else the send does keeps state in the session."""
    raw = url.query.get("prepare_threshold")
    if raw is None:
        return _DRIVER_DEFAULT
    value = raw if isinstance(raw, str) else raw[-1]
    if value.strip().lower() in ("none", "off", ""):
        return None
    if value.strip().isdigit():
        return int(value)
    raise ConfigError(
        f"DIGEST_DATABASE_URL: prepare_threshold={value!r} must be a number or 'none'"
    )


def one_line(error: BaseException | None) -> str:
    """A driver's message on one line (psycopg adds hint lines)."""
    return " ".join(str(error).split())


def database_problem(error: DBAPIError) -> str:
    """A driver error as one line for the user: the database's own words, named read-only
    when it is (PostgreSQL: read-only transaction or replica; SQLite: a read-only file)."""
    detail = one_line(error.orig)
    if "read-only" in detail or "readonly" in detail:
        return f"database is read-only: {detail} (DIGEST_DATABASE_URL must allow writes)"
    return f"database error: {detail}"


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def one_writer(sessions: sessionmaker[Session]) -> bool:
    """True when the database these sessions write to takes one writer at a time (SQLite),
    or when the factory names no database (the safe answer: one writer)."""
    bind = sessions.kw.get("bind")
    return bind is None or bind.dialect.name == "sqlite"


def writer_lock(sessions: sessionmaker[Session]) -> AbstractContextManager[Any]:
    """The lock the writing threads of one process take turns on. SQLite allows one writer:
    a waiting thread wakes at once when the lock is released, where the driver's busy handler
    sleeps 1-100 ms between retries, and a read-then-write never fails halfway with
    'database is locked'. Other databases need no lock (a no-op context)."""
    return threading.Lock() if one_writer(sessions) else nullcontext()


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit on success, roll back everything on any error."""
    with factory() as session, session.begin():
        yield session


def _alembic_config(engine: Engine) -> Any:
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


def upgrade(engine: Engine, revision: str = "heads") -> None:
    """Bring the schema up to date; existing data is kept (migrations only add and alter)."""
    from alembic import command

    try:
        command.upgrade(_alembic_config(engine), revision)
    except OperationalError as e:
        raise SchemaError(f"cannot upgrade database {engine.url!r}: {one_line(e.orig)}") from None
    if revision == "heads":
        from digest.clock import utcnow
        from digest.partitions import ensure_ahead

        ensure_ahead(engine, utcnow().date())  # the ledger's partitions (PostgreSQL) ahead


def current_revisions(engine: Engine) -> set[str]:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return set(MigrationContext.configure(conn).get_current_heads())


def head_revisions() -> set[str]:
    from alembic.script import ScriptDirectory

    return set(ScriptDirectory(str(MIGRATIONS)).get_heads())


def ensure_schema(engine: Engine, auto_upgrade: bool = True) -> None:
    """Make sure the schema is current: upgrade it (default) or say how to."""
    try:
        current = current_revisions(engine)
    except OperationalError as e:
        raise SchemaError(f"cannot open database {engine.url!r}: {one_line(e.orig)}") from None
    if current == head_revisions():
        return
    if auto_upgrade:
        upgrade(engine)
        return
    if not current and not inspect(engine).get_table_names():
        raise SchemaError("database is empty: run `digest db upgrade` to create the schema")
    raise SchemaError("database schema is behind this version of digest: run `digest db upgrade`")
