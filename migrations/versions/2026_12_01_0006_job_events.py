"""job and experiment events: per-subject sequences written by triggers

The SSE streams (`GET /v1/jobs/{id}/events`, `GET /v1/experiments/{id}/events`) read these
tables. An event's cursor is its subject's own sequence (`jobs.event_seq`,
`experiments.event_seq`), bumped in the transaction that writes the change, on the subject's
row: writers of one job queue on that row's lock, so its events commit in sequence order and a
reader that has seen seq N never finds a smaller one later. A global serial would not be a
safe cursor (Postgres assigns ids before commit; SQLite reuses rowids), and status changes
have no metric row.

Triggers write the events, so every writer (the API's submit and cancel, the worker's claim,
epoch, finish and hand-back, the reaper's bulk UPDATEs, the orchestrator's stages) produces
them in its own transaction, and only when its (fenced) UPDATE matched:

- a job: `status` when status, attempt or cancel_requested changes (and at INSERT);
  `progress` when epoch changes; `metric` per metric row inserted, or updated to another
  value (a resumed run rewriting the same value adds nothing);
- an experiment: `status` when status changes (and at INSERT); `progress` when a running
  experiment's stage moves; `child` when a job of it is inserted (the child's place in the
  experiment stream's composite cursor).

On Postgres each event also NOTIFYs `trainyard_events` (delivered at COMMIT) to wake the
API's poller early. Existing rows get their metrics and their current status as events.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 14:00:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JOB_CHANGED = ("(OLD.status, OLD.attempt, OLD.cancel_requested) IS DISTINCT FROM "
               "(NEW.status, NEW.attempt, NEW.cancel_requested)")
SQLITE_JOB_CHANGED = ("OLD.status IS NOT NEW.status OR OLD.attempt IS NOT NEW.attempt "
                      "OR OLD.cancel_requested IS NOT NEW.cancel_requested")


def upgrade() -> None:
    op.add_column('jobs', sa.Column('event_seq', sa.Integer(), server_default=sa.text('0'),
                                    nullable=False))
    op.add_column('experiments', sa.Column('event_seq', sa.Integer(),
                                           server_default=sa.text('0'), nullable=False))
    for subject, table in (('job_id', 'jobs'), ('experiment_id', 'experiments')):
        name = f'{table[:-1]}_events'
        op.create_table(name,
        sa.Column(subject, sa.String(length=40), nullable=False),
        sa.Column('seq', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('kind', sa.String(length=16), nullable=False),
        sa.Column('data', sa.JSON(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint([subject], [f'{table}.id'],
                                name=op.f(f'fk_{name}_{subject}_{table}'), ondelete='CASCADE'),
        sa.PrimaryKeyConstraint(subject, 'seq', name=op.f(f'pk_{name}'))
        )
    postgres = op.get_bind().dialect.name == 'postgresql'
    backfill(postgres)
    for statement in (POSTGRES_TRIGGERS if postgres else SQLITE_TRIGGERS):
        op.execute(statement)


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == 'postgresql'
    for statement in (POSTGRES_DROP if postgres else SQLITE_DROP):
        op.execute(statement)
    op.drop_table('experiment_events')
    op.drop_table('job_events')
    with op.batch_alter_table('experiments', schema=None) as batch_op:
        batch_op.drop_column('event_seq')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('event_seq')


# ------------------------------------------------------------------ payloads


def _obj(postgres: bool, *pairs: tuple[str, str]) -> str:
    """A JSON object from (key, SQL expression) pairs in the dialect's own function."""
    args = ", ".join(f"'{key}', {expr}" for key, expr in pairs)
    return f"json_build_object({args})" if postgres else f"json_object({args})"


def _bool(postgres: bool, expr: str) -> str:
    """SQLite stores a boolean as 0/1: make it a JSON true/false."""
    return expr if postgres else f"json(CASE WHEN {expr} THEN 'true' ELSE 'false' END)"


def job_status(postgres: bool, row: str) -> str:
    return _obj(postgres, ('status', f'{row}.status'), ('attempt', f'{row}.attempt'),
                ('cancel_requested', _bool(postgres, f'{row}.cancel_requested')),
                ('reason', f'{row}.error_reason'), ('message', f'{row}.error_message'))


def job_progress(postgres: bool, row: str) -> str:
    return _obj(postgres, ('epoch', f'{row}.epoch'), ('total_epochs', f'{row}.total_epochs'))


def metric(postgres: bool, row: str) -> str:
    return _obj(postgres, ('epoch', f'{row}.epoch'), ('split', f'{row}.split'),
                ('name', f'{row}.name'), ('value', _finite(postgres, f'{row}.value')))


def _finite(postgres: bool, expr: str) -> str:
    """The float exactly (it round-trips), or null when not finite. SQLite's json_object
    prints a REAL with 15 digits, so the number goes in as 17-digit text ('%!' lifts
    printf's 16-digit cap); Postgres prints the shortest exact form already."""
    if postgres:
        return (f"CASE WHEN {expr} NOT IN ('NaN'::float8, 'Infinity'::float8, "
                f"'-Infinity'::float8) THEN {expr} END")
    return f"CASE WHEN abs({expr}) <= 1.7976931348623157e308 THEN json(printf('%!.17g', {expr})) END"


def experiment_status(postgres: bool, row: str) -> str:
    return _obj(postgres, ('status', f'{row}.status'), ('stage', f'{row}.stage'),
                ('message', f'{row}.error_message'))


def experiment_progress(postgres: bool, row: str) -> str:
    return _obj(postgres, ('stage', f'{row}.stage'))


def child(postgres: bool, row: str) -> str:
    return _obj(postgres, ('job_id', f'{row}.id'))


# ------------------------------------------------------------------ backfill


def backfill(postgres: bool) -> None:
    """Rows written before this revision: each job's metric rows in id order, then its
    current status; each experiment's children in creation order, then its status."""
    op.execute(f"""
        INSERT INTO job_events (job_id, seq, kind, data, created_at)
        SELECT m.job_id, ROW_NUMBER() OVER (PARTITION BY m.job_id ORDER BY m.id), 'metric',
               {metric(postgres, 'm')}, j.updated_at
        FROM metrics m JOIN jobs j ON j.id = m.job_id""")
    op.execute(f"""
        INSERT INTO job_events (job_id, seq, kind, data, created_at)
        SELECT j.id, (SELECT COUNT(*) FROM metrics m WHERE m.job_id = j.id) + 1, 'status',
               {job_status(postgres, 'j')}, j.updated_at
        FROM jobs j""")
    op.execute("UPDATE jobs SET event_seq = "
               "(SELECT COUNT(*) FROM job_events e WHERE e.job_id = jobs.id)")
    op.execute(f"""
        INSERT INTO experiment_events (experiment_id, seq, kind, data, created_at)
        SELECT j.experiment_id,
               ROW_NUMBER() OVER (PARTITION BY j.experiment_id ORDER BY j.created_at, j.id),
               'child', {child(postgres, 'j')}, j.created_at
        FROM jobs j WHERE j.experiment_id IS NOT NULL""")
    op.execute(f"""
        INSERT INTO experiment_events (experiment_id, seq, kind, data, created_at)
        SELECT x.id, (SELECT COUNT(*) FROM jobs j WHERE j.experiment_id = x.id) + 1, 'status',
               {experiment_status(postgres, 'x')}, x.updated_at
        FROM experiments x""")
    op.execute("UPDATE experiments SET event_seq = "
               "(SELECT COUNT(*) FROM experiment_events e WHERE e.experiment_id = experiments.id)")


# ------------------------------------------------------------------ Postgres

# BEFORE triggers assign the sequence on the row being written (NEW); AFTER triggers insert
# the events (a job's event row needs the job row to exist for its foreign key).
POSTGRES_TRIGGERS = [
    f"""
    CREATE FUNCTION trainyard_job_seq() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      IF TG_OP = 'INSERT' THEN
        NEW.event_seq := 1;
      ELSE
        NEW.event_seq := NEW.event_seq
          + (CASE WHEN OLD.epoch IS DISTINCT FROM NEW.epoch THEN 1 ELSE 0 END)
          + (CASE WHEN {JOB_CHANGED} THEN 1 ELSE 0 END);
      END IF;
      RETURN NEW;
    END $$""",
    f"""
    CREATE FUNCTION trainyard_job_events() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
      seq integer := CASE WHEN TG_OP = 'INSERT' THEN 0 ELSE OLD.event_seq END;
    BEGIN
      IF TG_OP = 'UPDATE' AND OLD.epoch IS DISTINCT FROM NEW.epoch THEN
        seq := seq + 1;
        INSERT INTO job_events (job_id, seq, kind, data, created_at)
        VALUES (NEW.id, seq, 'progress', {job_progress(True, 'NEW')}, NEW.updated_at);
      END IF;
      IF TG_OP = 'INSERT' OR {JOB_CHANGED} THEN
        seq := seq + 1;
        INSERT INTO job_events (job_id, seq, kind, data, created_at)
        VALUES (NEW.id, seq, 'status', {job_status(True, 'NEW')}, NEW.updated_at);
      END IF;
      IF TG_OP = 'INSERT' AND NEW.experiment_id IS NOT NULL THEN
        UPDATE experiments SET event_seq = event_seq + 1 WHERE id = NEW.experiment_id
        RETURNING event_seq INTO seq;
        INSERT INTO experiment_events (experiment_id, seq, kind, data, created_at)
        VALUES (NEW.experiment_id, seq, 'child', {child(True, 'NEW')}, NEW.created_at);
      END IF;
      PERFORM pg_notify('trainyard_events', '');
      RETURN NULL;
    END $$""",
    f"""
    CREATE FUNCTION trainyard_metric_event() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
      seq integer;
      at timestamptz;
    BEGIN
      UPDATE jobs SET event_seq = event_seq + 1 WHERE id = NEW.job_id
      RETURNING event_seq, updated_at INTO seq, at;
      INSERT INTO job_events (job_id, seq, kind, data, created_at)
      VALUES (NEW.job_id, seq, 'metric', {metric(True, 'NEW')}, at);
      PERFORM pg_notify('trainyard_events', '');
      RETURN NULL;
    END $$""",
    """
    CREATE FUNCTION trainyard_experiment_seq() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      IF TG_OP = 'INSERT' THEN
        NEW.event_seq := 1;
      ELSE
        NEW.event_seq := NEW.event_seq
          + (CASE WHEN OLD.stage IS DISTINCT FROM NEW.stage AND NEW.status = 'running'
                  THEN 1 ELSE 0 END)
          + (CASE WHEN OLD.status IS DISTINCT FROM NEW.status THEN 1 ELSE 0 END);
      END IF;
      RETURN NEW;
    END $$""",
    f"""
    CREATE FUNCTION trainyard_experiment_events() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
      seq integer := CASE WHEN TG_OP = 'INSERT' THEN 0 ELSE OLD.event_seq END;
    BEGIN
      IF TG_OP = 'UPDATE' AND OLD.stage IS DISTINCT FROM NEW.stage
         AND NEW.status = 'running' THEN
        seq := seq + 1;
        INSERT INTO experiment_events (experiment_id, seq, kind, data, created_at)
        VALUES (NEW.id, seq, 'progress', {experiment_progress(True, 'NEW')}, NEW.updated_at);
      END IF;
      IF TG_OP = 'INSERT' OR OLD.status IS DISTINCT FROM NEW.status THEN
        seq := seq + 1;
        INSERT INTO experiment_events (experiment_id, seq, kind, data, created_at)
        VALUES (NEW.id, seq, 'status', {experiment_status(True, 'NEW')}, NEW.updated_at);
      END IF;
      PERFORM pg_notify('trainyard_events', '');
      RETURN NULL;
    END $$""",
    "CREATE TRIGGER jobs_event_seq_insert BEFORE INSERT ON jobs FOR EACH ROW "
    "EXECUTE FUNCTION trainyard_job_seq()",
    f"CREATE TRIGGER jobs_event_seq_update BEFORE UPDATE ON jobs FOR EACH ROW "
    f"WHEN (OLD.epoch IS DISTINCT FROM NEW.epoch OR {JOB_CHANGED}) "
    f"EXECUTE FUNCTION trainyard_job_seq()",
    "CREATE TRIGGER jobs_events_insert AFTER INSERT ON jobs FOR EACH ROW "
    "EXECUTE FUNCTION trainyard_job_events()",
    f"CREATE TRIGGER jobs_events_update AFTER UPDATE ON jobs FOR EACH ROW "
    f"WHEN (OLD.epoch IS DISTINCT FROM NEW.epoch OR {JOB_CHANGED}) "
    f"EXECUTE FUNCTION trainyard_job_events()",
    "CREATE TRIGGER metrics_events_insert AFTER INSERT ON metrics FOR EACH ROW "
    "EXECUTE FUNCTION trainyard_metric_event()",
    "CREATE TRIGGER metrics_events_update AFTER UPDATE ON metrics FOR EACH ROW "
    "WHEN (OLD.value IS DISTINCT FROM NEW.value) EXECUTE FUNCTION trainyard_metric_event()",
    "CREATE TRIGGER experiments_event_seq_insert BEFORE INSERT ON experiments FOR EACH ROW "
    "EXECUTE FUNCTION trainyard_experiment_seq()",
    "CREATE TRIGGER experiments_event_seq_update BEFORE UPDATE ON experiments FOR EACH ROW "
    "WHEN (OLD.stage IS DISTINCT FROM NEW.stage OR OLD.status IS DISTINCT FROM NEW.status) "
    "EXECUTE FUNCTION trainyard_experiment_seq()",
    "CREATE TRIGGER experiments_events_insert AFTER INSERT ON experiments FOR EACH ROW "
    "EXECUTE FUNCTION trainyard_experiment_events()",
    "CREATE TRIGGER experiments_events_update AFTER UPDATE ON experiments FOR EACH ROW "
    "WHEN (OLD.stage IS DISTINCT FROM NEW.stage OR OLD.status IS DISTINCT FROM NEW.status) "
    "EXECUTE FUNCTION trainyard_experiment_events()",
]

POSTGRES_DROP = [
    "DROP TRIGGER jobs_event_seq_insert ON jobs",
    "DROP TRIGGER jobs_event_seq_update ON jobs",
    "DROP TRIGGER jobs_events_insert ON jobs",
    "DROP TRIGGER jobs_events_update ON jobs",
    "DROP TRIGGER metrics_events_insert ON metrics",
    "DROP TRIGGER metrics_events_update ON metrics",
    "DROP TRIGGER experiments_event_seq_insert ON experiments",
    "DROP TRIGGER experiments_event_seq_update ON experiments",
    "DROP TRIGGER experiments_events_insert ON experiments",
    "DROP TRIGGER experiments_events_update ON experiments",
    "DROP FUNCTION trainyard_job_seq()",
    "DROP FUNCTION trainyard_job_events()",
    "DROP FUNCTION trainyard_metric_event()",
    "DROP FUNCTION trainyard_experiment_seq()",
    "DROP FUNCTION trainyard_experiment_events()",
]

# ------------------------------------------------------------------ SQLite

# SQLite serializes writers, so each trigger bumps the counter and reads it back; with
# recursive triggers off (the default) and the WHEN guards, the counter UPDATEs fire nothing.


def _sqlite_job_event(kind: str, payload: str, at: str, job: str = 'NEW.id') -> str:
    return (f"UPDATE jobs SET event_seq = event_seq + 1 WHERE id = {job}; "
            f"INSERT INTO job_events (job_id, seq, kind, data, created_at) "
            f"SELECT id, event_seq, '{kind}', {payload}, {at} FROM jobs WHERE id = {job};")


def _sqlite_experiment_event(kind: str, payload: str, at: str,
                             experiment: str = 'NEW.id') -> str:
    return (f"UPDATE experiments SET event_seq = event_seq + 1 WHERE id = {experiment}; "
            f"INSERT INTO experiment_events (experiment_id, seq, kind, data, created_at) "
            f"SELECT id, event_seq, '{kind}', {payload}, {at} FROM experiments "
            f"WHERE id = {experiment};")


SQLITE_TRIGGERS = [
    f"CREATE TRIGGER jobs_events_insert AFTER INSERT ON jobs BEGIN "
    f"{_sqlite_job_event('status', job_status(False, 'NEW'), 'NEW.updated_at')} END",
    f"CREATE TRIGGER jobs_child_event AFTER INSERT ON jobs "
    f"WHEN NEW.experiment_id IS NOT NULL BEGIN "
    f"{_sqlite_experiment_event('child', child(False, 'NEW'), 'NEW.created_at', 'NEW.experiment_id')} END",
    f"CREATE TRIGGER jobs_progress_event AFTER UPDATE OF epoch ON jobs "
    f"WHEN OLD.epoch IS NOT NEW.epoch BEGIN "
    f"{_sqlite_job_event('progress', job_progress(False, 'NEW'), 'NEW.updated_at')} END",
    f"CREATE TRIGGER jobs_status_event AFTER UPDATE ON jobs WHEN {SQLITE_JOB_CHANGED} BEGIN "
    f"{_sqlite_job_event('status', job_status(False, 'NEW'), 'NEW.updated_at')} END",
    f"CREATE TRIGGER metrics_event_insert AFTER INSERT ON metrics BEGIN "
    f"{_sqlite_job_event('metric', metric(False, 'NEW'), 'updated_at', 'NEW.job_id')} END",
    f"CREATE TRIGGER metrics_event_update AFTER UPDATE OF value ON metrics "
    f"WHEN OLD.value IS NOT NEW.value BEGIN "
    f"{_sqlite_job_event('metric', metric(False, 'NEW'), 'updated_at', 'NEW.job_id')} END",
    f"CREATE TRIGGER experiments_events_insert AFTER INSERT ON experiments BEGIN "
    f"{_sqlite_experiment_event('status', experiment_status(False, 'NEW'), 'NEW.updated_at')} END",
    f"CREATE TRIGGER experiments_progress_event AFTER UPDATE OF stage ON experiments "
    f"WHEN OLD.stage IS NOT NEW.stage AND NEW.status = 'running' BEGIN "
    f"{_sqlite_experiment_event('progress', experiment_progress(False, 'NEW'), 'NEW.updated_at')} END",
    f"CREATE TRIGGER experiments_status_event AFTER UPDATE OF status ON experiments "
    f"WHEN OLD.status IS NOT NEW.status BEGIN "
    f"{_sqlite_experiment_event('status', experiment_status(False, 'NEW'), 'NEW.updated_at')} END",
]

SQLITE_DROP = [f"DROP TRIGGER {name}" for name in (
    "jobs_events_insert", "jobs_child_event", "jobs_progress_event", "jobs_status_event",
    "metrics_event_insert", "metrics_event_update", "experiments_events_insert",
    "experiments_progress_event", "experiments_status_event")]
