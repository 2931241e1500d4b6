"""SQLAlchemy 2 ORM sessions through the pooler: two engines (QueuePool, pool_pre_ping) take turns,
each session reads six rows with session.get (psycopg 3 prepares them after five executions and
sends DEALLOCATE ALL on every pool reset), some sessions write and roll back or fail a flush.
Every value is checked; any error fails. Usage: sqlalchemy_sessions.py URL SESSIONS"""

import sys

from sqlalchemy import Integer, String, create_engine, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

url, sessions = sys.argv[1], int(sys.argv[2])


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "sqla_items"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(40))


engines = [
    create_engine(url, pool_size=2, max_overflow=0, pool_pre_ping=True) for _ in range(2)
]
Base.metadata.drop_all(engines[0])
Base.metadata.create_all(engines[0])
with Session(engines[0]) as s:
    s.add_all([Item(id=i, name=f"item{i}") for i in range(1, 101)])
    s.commit()

errors = 0
for n in range(sessions):
    engine = engines[n % 2]
    try:
        with Session(engine) as s:
            for k in range(6):
                i = (n * 7 + k) % 100 + 1
                item = s.get(Item, i)
                assert item is not None and item.name == f"item{i}", (i, item)
            if n % 10 == 3:
                # A write that is rolled back.
                s.get(Item, 1).name = "changed"
                s.flush()
                s.rollback()
                assert s.get(Item, 1).name == "item1"
            if n % 25 == 7:
                # A flush that fails: duplicate key.
                s.add(Item(id=1, name="dup"))
                try:
                    s.flush()
                    raise AssertionError("duplicate key accepted")
                except IntegrityError:
                    s.rollback()
            count = s.scalar(select(Item.id).where(Item.id == 50))
            assert count == 50
    except Exception as e:  # noqa: BLE001 - every failure is counted and shown
        errors += 1
        print(f"session {n}: {type(e).__name__}: {e}", file=sys.stderr)
        if errors > 5:
            break

if errors:
    print(f"{errors} of {sessions} sessions failed", file=sys.stderr)
    sys.exit(1)
print(f"ok {sessions} sessions, 0 errors")
