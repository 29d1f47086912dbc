"""Ratings storage through SQLAlchemy: SQLite in the study folder by default, any database URL at scale (the
Postgres of the Helm chart's MLflow, for one).

Every change is one transaction of one row (a rating, a comment, a rater's position), so a crash loses at most
the rating being typed. A rating is keyed by (study, rater, item, output, dimension): submitting it again
replaces it (no duplicates). SQLite runs in WAL mode with a busy timeout so several raters write at once.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import DateTime, Integer, String, Text, UniqueConstraint, create_engine, event, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker


def _now() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class Rating(Base):
    __tablename__ = "ratings"
    __table_args__ = (UniqueConstraint("study", "rater", "item", "output", "dimension"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study: Mapped[str] = mapped_column(String(64), index=True)  # the study's fingerprint
    rater: Mapped[str] = mapped_column(String(128))
    item: Mapped[str] = mapped_column(String(64))
    output: Mapped[str] = mapped_column(String(8))  # the blind key (A, B, ...), never the model's name
    dimension: Mapped[str] = mapped_column(String(8))  # cor | gra | rdb
    score: Mapped[int] = mapped_column(Integer)
    updated: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now, onupdate=_now)


class Comment(Base):
    __tablename__ = "comments"
    __table_args__ = (UniqueConstraint("study", "rater", "item"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study: Mapped[str] = mapped_column(String(64), index=True)
    rater: Mapped[str] = mapped_column(String(128))
    item: Mapped[str] = mapped_column(String(64))
    text: Mapped[str] = mapped_column(Text)
    updated: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now, onupdate=_now)


class Progress(Base):
    __tablename__ = "progress"
    __table_args__ = (UniqueConstraint("study", "rater"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study: Mapped[str] = mapped_column(String(64), index=True)
    rater: Mapped[str] = mapped_column(String(128))
    position: Mapped[int] = mapped_column(Integer, default=0)  # the item index the rater was last on
    finished: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


def default_url(study_dir: str | Path) -> str:
    return f"sqlite:///{(Path(study_dir) / 'ratings.db').resolve()}"


class RatingStore:
    """The ratings of one study (``study`` = its fingerprint) in the database at ``url``."""

    def __init__(self, url: str, study: str):
        self.study = study
        sqlite = url.startswith("sqlite")
        self.engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False} if sqlite else {})
        if sqlite:
            @event.listens_for(self.engine, "connect")
            def _pragmas(conn, _):  # WAL: readers do not block the writer; durable commits
                cur = conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=FULL")
                cur.close()
        Base.metadata.create_all(self.engine)
        self.session = sessionmaker(self.engine, expire_on_commit=False)

    def _upsert(self, model, keys: dict, values: dict) -> None:
        for attempt in (0, 1):  # two raters' first writes of the same key race only on the insert
            try:
                with self.session.begin() as s:
                    row = s.scalar(select(model).filter_by(study=self.study, **keys))
                    if row is None:
                        s.add(model(study=self.study, **keys, **values))
                    else:
                        for k, v in values.items():
                            setattr(row, k, v)
                return
            except IntegrityError:
                if attempt:
                    raise

    def rate(self, rater: str, item: str, output: str, dimension: str, score: int) -> None:
        self._upsert(Rating, {"rater": rater, "item": item, "output": output, "dimension": dimension},
                     {"score": int(score)})

    def rate_many(self, rows: list[dict]) -> None:
        """Insert ``{rater, item, output, dimension, score}`` rows in one transaction (imports, synthetic tests);
        a key already stored raises ``IntegrityError`` and nothing is written."""
        with self.session.begin() as s:
            s.add_all(Rating(study=self.study, **{k: r[k] for k in ("rater", "item", "output", "dimension", "score")})
                      for r in rows)

    def comment(self, rater: str, item: str, text: str) -> None:
        self._upsert(Comment, {"rater": rater, "item": item}, {"text": text})

    def move(self, rater: str, position: int) -> None:
        self._upsert(Progress, {"rater": rater}, {"position": int(position)})

    def finish(self, rater: str) -> None:
        self._upsert(Progress, {"rater": rater}, {"finished": _now()})

    def ratings(self, rater: str | None = None) -> list[dict]:
        """Rows ``{rater, item, output, dimension, score}``; one rater's or everyone's (the report's)."""
        with Session(self.engine) as s:
            q = select(Rating).filter_by(study=self.study)
            if rater is not None:
                q = q.filter_by(rater=rater)
            return [{"rater": r.rater, "item": r.item, "output": r.output, "dimension": r.dimension,
                     "score": r.score} for r in s.scalars(q.order_by(Rating.id))]

    def comments(self, rater: str) -> dict[str, str]:
        with Session(self.engine) as s:
            return {c.item: c.text for c in s.scalars(select(Comment).filter_by(study=self.study, rater=rater))}

    def progress(self, rater: str) -> tuple[int, datetime | None]:
        with Session(self.engine) as s:
            p = s.scalar(select(Progress).filter_by(study=self.study, rater=rater))
            return (0, None) if p is None else (p.position, p.finished)
