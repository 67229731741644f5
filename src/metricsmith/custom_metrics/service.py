"""CustomMetricsService: the Python API the CLI mirrors (every call acts as a user)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from metricsmith import db
from metricsmith.config import Settings, load_settings, project_root
from metricsmith.core import dbt as core_dbt
from metricsmith.core.dbt import DbtOutcome, DbtStatus
from metricsmith.core.schema import marts_schema
from metricsmith.custom_metrics import access, compiler, project, registry
from metricsmith.custom_metrics import identifiers as ids
from metricsmith.custom_metrics.errors import (
    AccessDenied,
    CostBudgetExceeded,
    InvalidIdentifier,
    MetricNotFound,
    MetricSpecError,
)
from metricsmith.custom_metrics.registry import DataSource
from metricsmith.custom_metrics.spec import MetricSpec, parse_spec, slugify
from metricsmith.errors import UserFacingError
from metricsmith.spark import config as spark_config

ENV_PROJECT_DIR = "METRICSMITH_DBT_PROJECT_DIR"
ENV_COST_BUDGET = "METRICSMITH_CUSTOM_METRIC_COST_BUDGET"
DEFAULT_COST_BUDGET = 50_000_000.0
VALUES_MODEL = "custom_metric_values"
VALUES_TAG = "metricsmith_custom_metric_values"


@dataclass(frozen=True)
class CostEstimate:
    """PostgreSQL: EXPLAIN's total cost and rows; Spark (``unit`` bytes): the optimized plan's
    estimated size and rows."""

    cost: float
    rows: float
    budget: float
    sql: str
    unit: str = "cost"

    @property
    def within_budget(self) -> bool:
        return self.cost <= self.budget

    def exceeded(self) -> UserFacingError:
        if self.unit == "bytes":
            from metricsmith.spark.custom_metrics import SparkCostBudgetExceeded

            return SparkCostBudgetExceeded(self.cost, self.rows, self.budget)
        return CostBudgetExceeded(self.cost, self.rows, self.budget)


@dataclass(frozen=True)
class MetricDefinition:
    slug: str
    name: str
    description: str
    owner_id: str
    team_id: str | None
    organization_id: str | None
    visibility: str
    current_version: int
    status: str
    created_at: datetime
    updated_at: datetime
    spec: dict[str, Any]
    model: str
    run_status: str | None = None
    run_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class ModelFailure:
    model: str
    slug: str
    version: int
    error: str

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class CustomMetricsRun:
    """One ``metrics run``: the generated models' dbt run, then custom_metric_values'."""

    models: DbtOutcome
    values: DbtOutcome
    failures: list[ModelFailure]
    #: on the Spark engine: the Spark application, the dbt time and the publish (the job log's details)
    spark: dict[str, Any] | None = None
    #: the run had nothing to do (:meth:`CustomMetricsService.run` ``skip_if_idle``): dbt was not started
    skipped_dbt: bool = False

    @classmethod
    def nothing_to_run(cls) -> CustomMetricsRun:
        """The run that started no dbt: no node, no failure."""
        return cls(models=DbtOutcome([], DbtStatus.SUCCESS), values=DbtOutcome([], DbtStatus.SUCCESS), failures=[],
                   skipped_dbt=True)

    @property
    def success(self) -> bool:
        return not self.failures

    @property
    def results(self) -> list[Any]:
        return [*self.models.results, *self.values.results]

    @property
    def node_status(self) -> dict[str, str]:
        return self.models.node_status | self.values.node_status


def _one_line(message: str) -> str:
    """dbt's multi-line node message as one line (without the model header and compiled-code path)."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith(("compiled code at", "CONTEXT:"))]
    if len(lines) > 1 and " in model " in lines[0]:
        lines = lines[1:]
    text = " ".join(lines)
    return text if len(text) <= 500 else text[:497] + "..."


@dataclass(frozen=True)
class CompileResult:
    written: list[str]
    removed: list[str]
    unchanged: list[str]
    models: list[str]
    refused: list[str] = field(default_factory=list)
    #: metric models left out of custom_metric_values because their last run failed
    excluded: list[str] = field(default_factory=list)

    @property
    def changed_nothing(self) -> bool:
        """Nothing written, removed or refused, and no metric model: custom_metric_values is all there is."""
        return not (self.written or self.removed or self.refused) and self.models == [VALUES_MODEL]


class CustomMetricsService:
    def __init__(self, settings: Settings | None = None, *, project_dir: Path | None = None,
                 cost_budget: float | None = None, engine: str | None = None) -> None:
        """``engine``: ``postgres`` or ``spark`` (default METRICSMITH_ENGINE); on Spark ``cost_budget``
        is in bytes (default METRICSMITH_CUSTOM_METRIC_SPARK_BYTES_BUDGET), docs/spark.md."""
        self.settings = settings or load_settings()
        self.engine = spark_config.engine(engine)
        env_dir = os.environ.get(ENV_PROJECT_DIR)
        self.project_dir = Path(project_dir or env_dir or project_root()).resolve()
        self.generated_dir = project.generated_dir(self.settings, self.project_dir)
        if self.engine == "spark":
            from metricsmith.spark.custom_metrics import bytes_budget

            self.cost_budget = bytes_budget(cost_budget)
            return
        budget = cost_budget if cost_budget is not None else os.environ.get(ENV_COST_BUDGET)
        self.cost_budget = float(budget) if budget is not None else DEFAULT_COST_BUDGET

    # -- dbt ---------------------------------------------------------------------------------
    @property
    def target_path(self) -> Path:
        return core_dbt.target_path(self.project_dir)

    @contextmanager
    def _engine(self, record: Any = None) -> Iterator[Any]:
        """The engine's context for dbt: on Spark the SparkSession and the spark target's own
        target path (:func:`metricsmith.spark.custom_metrics.spark_dbt`); None on PostgreSQL."""
        if self.engine != "spark":
            yield None
            return
        from metricsmith.spark.custom_metrics import spark_dbt

        with spark_dbt(self.settings, record) as session:
            yield session

    def run_dbt(self, args: list[str], *, vars: dict[str, Any] | None = None,
                raise_on_failure: bool = True) -> DbtOutcome:
        """``dbt <args>`` in this service's project directory (:func:`metricsmith.core.dbt.invoke`),
        with the engine's target. Raises :class:`DbtError` when dbt itself fails, and when a node
        fails if ``raise_on_failure``."""
        target = ["--target", spark_config.SPARK_TARGET] if self.engine == "spark" else []
        with self._engine():
            outcome = core_dbt.invoke([*args, *target], vars=vars, settings=self.settings,
                                      project_dir=self.project_dir)
        return outcome.raise_for_status(nodes=raise_on_failure)

    def registry(self, *, refresh: bool = False) -> dict[str, registry.DataSource]:
        with self._engine():
            manifest = self.target_path / "manifest.json"
            if refresh or not manifest.is_file():
                self.run_dbt(["parse"])
            return registry.load_registry(manifest)

    # -- helpers -----------------------------------------------------------------------------
    @contextmanager
    def _conn(self) -> Iterator[Any]:
        with db.connect(self.settings, autocommit=False) as conn:
            yield conn

    def _row(self, conn: Any, slug: str) -> dict[str, Any] | None:
        cur = conn.cursor(row_factory=dict_row)
        return cur.execute("select * from metricsmith.custom_metric_definitions d where slug = %s",
                           (slug,)).fetchone()

    def _readable(self, conn: Any, who: access.Principal, slug: str) -> dict[str, Any]:
        row = self._row(conn, slug)
        if row is None or not access.can_read(who, row["owner_id"], row["visibility"], row["organization_id"],
                                              row["team_id"]):
            raise MetricNotFound(f"no metric {slug!r} visible to {who.user_id}")
        return row

    def _writable(self, conn: Any, who: access.Principal, slug: str) -> dict[str, Any]:
        row = self._readable(conn, who, slug)
        if not access.can_write(who, row["owner_id"], row["organization_id"]):
            raise AccessDenied(f"{who.user_id} may not change {slug}: only its owner ({row['owner_id']}) "
                               "or an admin of its organization may")
        if row["status"] != "active":
            raise MetricSpecError(f"metric {slug} is archived")
        return row

    def _definition(self, conn: Any, row: dict[str, Any], version: int | None = None) -> MetricDefinition:
        version = version or row["current_version"]
        spec = conn.execute(
            "select v.spec, m.run_status, m.run_error from metricsmith.custom_metric_versions v"
            " left join metricsmith.custom_metric_models m using (metric_id, version)"
            " where v.metric_id = %s and v.version = %s", (row["metric_id"], version)).fetchone()
        if spec is None:
            raise MetricNotFound(f"metric {row['slug']} has no version {version}")
        return MetricDefinition(
            slug=row["slug"], name=row["name"], description=row["description"], owner_id=row["owner_id"],
            team_id=row["team_id"], organization_id=row["organization_id"], visibility=row["visibility"],
            current_version=row["current_version"], status=row["status"], created_at=row["created_at"],
            updated_at=row["updated_at"], spec=spec[0], model=compiler.model_name(row["slug"], version),
            run_status=spec[1], run_error=spec[2])

    # -- validation and cost -------------------------------------------------------------------
    def _check(self, conn: Any, who: access.Principal, spec: MetricSpec) -> compiler.CheckedMetric:
        reg = self.registry()
        source = registry.resolve(reg, spec.source)
        cats = source.categories(conn, catalog=self._spark_types(source, required=False))

        def resolve_metric(slug: str) -> MetricSpec:
            row = self._readable(conn, who, slug)
            if row["status"] != "active":
                raise MetricSpecError(f"referenced metric {slug} is archived")
            return parse_spec(self._definition(conn, row).spec)

        return compiler.check_metric(spec, source, cats, resolve_metric)

    def _spark_types(self, source: DataSource, *, required: bool) -> dict[str, str] | None:
        """On Spark: the source's column types (PostgreSQL names) from Spark's catalog; else None."""
        if self.engine != "spark":
            return None
        from metricsmith.spark import custom_metrics as spark_cm

        with self._engine() as session:
            if required:
                return spark_cm.source_types(session, source)
            return spark_cm.column_types(session, source.schema, source.identifier)

    def _spark_source_types(self, name: str) -> dict[str, str]:
        """A data source's column types on Spark (declared, else Spark's catalog), by its name."""
        return self._spark_types(registry.resolve(self.registry(), name), required=True) or {}

    def _estimate_spark(self, checked: compiler.CheckedMetric) -> CostEstimate:
        from metricsmith.spark import custom_metrics as spark_cm

        types = self._spark_types(checked.source, required=True) or {}
        sql = compiler.render_sql(checked, "spark", types)
        with self._engine() as session:
            got = spark_cm.estimate(session, sql)
        return CostEstimate(cost=got.size, rows=got.rows, budget=self.cost_budget, sql=sql, unit="bytes")

    def _estimate(self, conn: Any, checked: compiler.CheckedMetric) -> CostEstimate:
        if self.engine == "spark":
            return self._estimate_spark(checked)
        sql = compiler.render_sql(checked)
        exists = conn.execute("select to_regclass(%s)", (checked.source.relation,)).fetchone()
        if not exists or exists[0] is None:
            raise MetricSpecError(f"data source {checked.source.name} is not built in the database yet "
                                  "(run the rollups / dbt first) so its cost cannot be estimated")
        try:
            with conn.transaction():  # a savepoint: the caller's transaction stays usable
                plan = conn.execute("explain (format json) " + sql).fetchone()[0]  # noqa: S608 - validated, quoted
        except psycopg.Error as exc:
            # PostgreSQL folds constants while planning: 1/0 or cast('x' as int) fail here, before any row
            reason = (exc.diag.message_primary or str(exc)).splitlines()[0]
            raise MetricSpecError(f"the metric's query cannot be planned: {reason} (is a constant part of an"
                                  " expression or filter invalid, e.g. 1/0 or cast('x' as int)?)") from None
        top = (plan[0] if isinstance(plan, list) else json.loads(plan)[0])["Plan"]
        return CostEstimate(cost=float(top["Total Cost"]), rows=float(top["Plan Rows"]), budget=self.cost_budget,
                            sql=sql)

    def validate(self, user_id: str, spec: dict[str, Any] | str) -> compiler.CheckedMetric:
        """Parse and validate a spec as ``user_id`` (nothing is stored or executed)."""
        with self._conn() as conn:
            who = access.principal(conn, user_id)
            return self._check(conn, who, parse_spec(spec))

    def estimate(self, user_id: str, spec: dict[str, Any] | str) -> CostEstimate:
        with self._conn() as conn:
            who = access.principal(conn, user_id)
            return self._estimate(conn, self._check(conn, who, parse_spec(spec)))

    # -- writes --------------------------------------------------------------------------------
    def _new_version(self, conn: Any, who: access.Principal, metric_id: int, version: int, slug: str,
                     spec: MetricSpec) -> None:
        checked = self._check(conn, who, spec)
        cost = self._estimate(conn, checked)
        if not cost.within_budget:
            raise cost.exceeded()
        conn.execute(
            "insert into metricsmith.custom_metric_versions (metric_id, version, spec, compiled_sql, estimated_cost,"
            " estimated_rows, created_by) values (%s, %s, %s, %s, %s, %s, %s)",
            (metric_id, version, json.dumps(spec.to_dict()), cost.sql, cost.cost, cost.rows, who.user_id))
        self._store_checked(conn, metric_id, version, slug, checked)

    def _store_checked(self, conn: Any, metric_id: int, version: int, slug: str,
                       checked: compiler.CheckedMetric) -> None:
        definition = compiler.definition(checked)
        compiler.render_model(metric_id, slug, version, definition)  # every identifier passes, or this raises
        conn.execute("insert into metricsmith.custom_metric_models (metric_id, version, definition)"
                     " values (%s, %s, %s) on conflict (metric_id, version) do nothing",
                     (metric_id, version, json.dumps(definition)))

    def _check_stored_versions(self, conn: Any) -> list[str]:
        """Versions stored before checked definitions existed: check them now (as their creator).

        Returns one line per version that no longer passes (it gets no model)."""
        rows = conn.execute(
            "select d.metric_id, d.slug, v.version, v.spec, v.created_by from metricsmith.custom_metric_definitions d"
            " join metricsmith.custom_metric_versions v using (metric_id)"
            " left join metricsmith.custom_metric_models m using (metric_id, version)"
            " where d.status = 'active' and m.metric_id is null order by d.slug, v.version").fetchall()
        refused: list[str] = []
        for metric_id, slug, version, spec, created_by in rows:
            try:
                who = access.principal(conn, created_by)
                self._store_checked(conn, metric_id, version, slug, self._check(conn, who, parse_spec(spec)))
                conn.commit()
            except UserFacingError as exc:
                conn.rollback()
                refused.append(f"{compiler.model_name(slug, version) if ids.SLUG.fullmatch(slug) else repr(slug)}:"
                               f" not compiled: {exc}")
        return refused

    def _team_for(self, conn: Any, who: access.Principal, spec: MetricSpec,
                  current: str | None = None) -> str | None:
        """The metric's team: one the user belongs to, its current team, or (org admins) any team of the org."""
        if spec.team is not None and spec.team not in who.teams and spec.team != current:
            row = conn.execute("select organization_id from metricsmith.teams where team_id = %s",
                               (spec.team,)).fetchone()
            if not (who.is_org_admin and row is not None and row[0] == who.organization_id):
                raise AccessDenied(f"{who.user_id} is not a member of team {spec.team}")
        team = spec.team or current or (who.teams[0] if spec.visibility == "TEAM" and len(who.teams) == 1 else None)
        if spec.visibility == "TEAM" and team is None:
            raise MetricSpecError("visibility TEAM needs `team:` (one of the teams you belong to)")
        return team

    def create(self, user_id: str, spec_input: dict[str, Any] | str) -> MetricDefinition:
        spec = parse_spec(spec_input)
        with self._conn() as conn:
            who = access.principal(conn, user_id)
            team = self._team_for(conn, who, spec)
            slug = spec.slug or slugify(spec.name)
            if self._row(conn, slug) is not None:
                raise MetricSpecError(f"a metric with slug {slug!r} exists; choose another name or give `slug:`")
            row = conn.execute(
                "insert into metricsmith.custom_metric_definitions (slug, name, description, owner_id, team_id,"
                " organization_id, visibility) values (%s, %s, %s, %s, %s, %s, %s) returning metric_id",
                (slug, spec.name, spec.description, who.user_id, team, who.organization_id, spec.visibility),
            ).fetchone()
            self._new_version(conn, who, row[0], 1, slug, spec)
            conn.commit()
            return self._definition(conn, self._row(conn, slug) or {})

    def create_metric_definition(self, user_id: str, spec: dict[str, Any]) -> MetricDefinition:
        """:meth:`create` under its other name (accepts metric_type / data_source / calculation_formula ...)."""
        return self.create(user_id, spec)

    def update(self, user_id: str, slug: str, spec_input: dict[str, Any] | str) -> MetricDefinition:
        """Store a new version (the old versions and their values stay)."""
        spec = parse_spec(spec_input)
        with self._conn() as conn:
            who = access.principal(conn, user_id)
            row = self._writable(conn, who, slug)
            conn.execute("select 1 from metricsmith.custom_metric_definitions where metric_id = %s for update",
                         (row["metric_id"],))
            # read again under the row lock: a concurrent update may have stored a version meanwhile
            row = self._writable(conn, who, slug)
            team = self._team_for(conn, who, spec, row["team_id"])
            version = row["current_version"] + 1
            self._new_version(conn, who, row["metric_id"], version, slug, spec)
            conn.execute(
                "update metricsmith.custom_metric_definitions set name = %s, description = %s, visibility = %s,"
                " team_id = %s, current_version = %s, updated_at = now() where metric_id = %s",
                (spec.name, spec.description, spec.visibility, team, version, row["metric_id"]))
            conn.commit()
            return self._definition(conn, self._row(conn, slug) or {})

    def archive(self, user_id: str, slug: str) -> MetricDefinition:
        with self._conn() as conn:
            who = access.principal(conn, user_id)
            row = self._writable(conn, who, slug)
            conn.execute("update metricsmith.custom_metric_definitions set status = 'archived', archived_at = now(),"
                         " updated_at = now() where metric_id = %s", (row["metric_id"],))
            conn.commit()
            return self._definition(conn, self._row(conn, slug) or {})

    # -- reads ---------------------------------------------------------------------------------
    def list_metrics(self, user_id: str, *, include_archived: bool = False) -> list[MetricDefinition]:
        with self._conn() as conn:
            who = access.principal(conn, user_id)
            cur = conn.cursor(row_factory=dict_row)
            rows = cur.execute(
                "select * from metricsmith.custom_metric_definitions d where " + access.READ_PREDICATE
                + (" " if include_archived else " and d.status = 'active'") + " order by d.slug",
                access.read_params(who)).fetchall()
            return [self._definition(conn, r) for r in rows]

    def show(self, user_id: str, slug: str, version: int | None = None) -> MetricDefinition:
        with self._conn() as conn:
            who = access.principal(conn, user_id)
            return self._definition(conn, self._readable(conn, who, slug), version)

    def versions(self, user_id: str, slug: str) -> list[dict[str, Any]]:
        with self._conn() as conn:
            who = access.principal(conn, user_id)
            row = self._readable(conn, who, slug)
            cur = conn.cursor(row_factory=dict_row)
            return cur.execute("select version, spec, estimated_cost, estimated_rows, created_by, created_at"
                               " from metricsmith.custom_metric_versions where metric_id = %s order by version",
                               (row["metric_id"],)).fetchall()

    def values(self, user_id: str, slug: str, *, version: int | None = None, start: date | None = None,
               end: date | None = None) -> list[dict[str, Any]]:
        with self._conn() as conn:
            who = access.principal(conn, user_id)
            row = self._readable(conn, who, slug)
            values = sql.Identifier(marts_schema(), VALUES_MODEL)
            exists = conn.execute("select to_regclass(%s)", (values.as_string(conn),)).fetchone()
            if not exists or exists[0] is None:
                raise MetricSpecError(f"{marts_schema()}.{VALUES_MODEL} is not built yet; run `metricsmith metrics run`")
            cur = conn.cursor(row_factory=dict_row)
            return cur.execute(sql.SQL(
                "select metric_slug, metric_version, grain, period_start, dimensions, value, previous_value,"
                " growth_pct, computed_at, growth_basis, growth_basis_days from {} where metric_slug = %s"
                " and metric_version = %s and (%s::date is null or period_start >= %s::date)"
                " and (%s::date is null or period_start <= %s::date) order by period_start, dimensions::text"
            ).format(values),
                (slug, version or row["current_version"], start, start, end, end)).fetchall()

    # -- compile and run (operator actions: they act on every active metric) -------------------
    def compile(self) -> CompileResult:
        """Write one model per version of every active metric, plus custom_metric_values.

        The files carry identifiers only (see :func:`compiler.render_model`); names,
        descriptions and owners stay in PostgreSQL."""
        with self._conn() as conn:
            refused = self._check_stored_versions(conn)
            rows = conn.execute(
                "select d.metric_id, d.slug, v.version, m.definition, m.run_status"
                " from metricsmith.custom_metric_definitions d"
                " join metricsmith.custom_metric_versions v using (metric_id)"
                " join metricsmith.custom_metric_models m using (metric_id, version)"
                " where d.status = 'active' order by d.slug, v.version").fetchall()
        self.generated_dir.mkdir(parents=True, exist_ok=True)
        wanted: dict[str, str] = {}
        inputs: list[tuple[int, str, int, dict[str, Any]]] = []
        excluded: list[str] = []
        docs: list[dict[str, Any]] = []
        for metric_id, slug, version, definition, run_status in rows:
            try:
                text = compiler.render_model(metric_id, slug, version, definition)
            except InvalidIdentifier as exc:
                refused.append(f"metric id {metric_id} version {version}: not compiled: {exc}")
                continue
            model = compiler.model_name(slug, version)
            wanted[f"{model}.sql"] = text
            if run_status != "error":
                inputs.append((metric_id, slug, version, definition))
            else:
                excluded.append(model)
            docs.append({"name": model, "description": compiler.model_description(metric_id, slug, version),
                         "columns": [dict(column) for column in compiler.GENERATED_MODEL_COLUMNS],
                         "config": {"tags": [compiler.GENERATED_TAG]}})
        wanted[f"{VALUES_MODEL}.sql"] = compiler.render_values_model(inputs)
        import yaml

        docs.append(compiler.VALUES_MODEL_DOC)
        wanted["_generated__models.yml"] = ("# generated by `metricsmith metrics compile`; do not edit\n"
                                            + yaml.safe_dump({"version": 2, "models": docs}, sort_keys=False))
        written, unchanged, removed = [], [], []
        for name, text in sorted(wanted.items()):
            path = self.generated_dir / name
            if path.is_file() and path.read_text() == text:
                unchanged.append(name)
                continue
            tmp = path.with_suffix(path.suffix + ".tmp")
            tmp.write_text(text)
            tmp.replace(path)
            written.append(name)
        for path in sorted(self.generated_dir.iterdir()):
            if path.name not in wanted and path.suffix in (".sql", ".yml"):
                path.unlink()
                removed.append(path.name)
        return CompileResult(written, removed, unchanged, sorted(n[:-4] for n in wanted if n.endswith(".sql")),
                             refused, excluded)

    def _nothing_to_run(self, compiled: CompileResult) -> bool:
        """True when a run after ``compiled`` would change nothing: PostgreSQL engine, the compile
        wrote, removed and refused nothing and yielded no metric model, and custom_metric_values
        exists with no row (dbt would only rebuild it empty)."""
        if self.engine != "postgres" or not compiled.changed_nothing:
            return False
        values = sql.Identifier(marts_schema(), VALUES_MODEL)
        with db.connect(self.settings, autocommit=True) as conn:
            built = conn.execute("select to_regclass(%s)", (values.as_string(conn),)).fetchone()
            if not built or built[0] is None:
                return False
            row = conn.execute(sql.SQL("select exists (select 1 from {})").format(values)).fetchone()
        return not (row and row[0])

    def run(self, *, full_refresh: bool = False, slugs: list[str] | None = None,
            vars: dict[str, Any] | None = None, skip_if_idle: bool = False) -> CustomMetricsRun:
        """Compile; ``dbt run`` the generated models; then custom_metric_values over those that succeeded.

        A metric whose model fails at run time (division by zero, overflow, a bad cast on some
        row) does not block the others: its model version is marked (``run_status = 'error'``
        and ``run_error`` in metricsmith.custom_metric_models), it is reported in
        :attr:`CustomMetricsRun.failures`, and custom_metric_values is built without it.
        Raises :class:`DbtError` only when dbt itself fails (not one model).

        ``skip_if_idle`` (the custom-metrics job, which holds its job lock): when this run's
        compile shows there is nothing to run (:meth:`_nothing_to_run`; never with
        ``full_refresh`` or ``slugs``), return :meth:`CustomMetricsRun.nothing_to_run` without
        starting dbt (twice ~3 s of dbt start-up for nothing, issue 17 P5). One compile per
        run, unless a model failed now or had failed before (custom_metric_values is then
        compiled again without, or with, it)."""
        compiled = self.compile()
        if skip_if_idle and not full_refresh and not slugs and self._nothing_to_run(compiled):
            return CustomMetricsRun.nothing_to_run()
        selectors = [f"tag:custom_metric:{s}" for s in slugs] if slugs else [f"tag:{compiler.GENERATED_TAG}"]
        refresh = ["--full-refresh"] if full_refresh else []
        record = None
        if self.engine == "spark":
            from metricsmith.spark import custom_metrics as spark_cm

            record = spark_cm.SparkRunRecord()
        with self._engine(record) as session:
            if session is not None:
                with self._conn() as conn:
                    spark_cm.write_definitions(session, conn, self._spark_source_types)
            models = self.run_dbt(["run", "--select", *selectors, *refresh], vars=vars, raise_on_failure=False)
            failures = self._record_runs(models)
            if failures or compiled.excluded:  # custom_metric_values without the versions that failed now
                self.compile()
            values = self.run_dbt(["run", "--select", f"tag:{VALUES_TAG}", *refresh], vars=vars)
        if record is not None:  # the values to the serving PostgreSQL, where every reader reads them
            spark_cm.publish_values(self.settings, record)
        return CustomMetricsRun(models=models, values=values, failures=failures,
                                spark=record.as_dict() if record is not None else None)

    def _record_runs(self, run: DbtOutcome) -> list[ModelFailure]:
        """Store each generated model's outcome; return the failures (one line of dbt's message each)."""
        failures: list[ModelFailure] = []
        with self._conn() as conn:
            for r in run.results:
                node = getattr(r, "node", None)
                name = str(getattr(node, "name", ""))
                status = str(r.status)
                if not name.startswith("cm_") or "__v" not in name or status not in ("success", "error"):
                    continue
                slug, _, version_text = name[3:].rpartition("__v")
                error = None if status == "success" else _one_line(str(r.message))
                conn.execute(
                    "update metricsmith.custom_metric_models m set run_status = %s, run_error = %s, run_at = now()"
                    " from metricsmith.custom_metric_definitions d where d.metric_id = m.metric_id"
                    " and d.slug = %s and m.version = %s", (status, error, slug, int(version_text)))
                if error is not None:
                    failures.append(ModelFailure(name, slug, int(version_text), error))
            conn.commit()
        return failures

    def backfill(self, user_id: str, slug: str, start: date, end: date) -> CustomMetricsRun:
        """Recompute the periods of [start, end] of every version of ``slug`` (owner / org admin)."""
        if end < start:
            raise MetricSpecError("--end is before --start")
        with self._conn() as conn:
            self._writable(conn, access.principal(conn, user_id), slug)
        return self.run(slugs=[slug], vars={"custom_metrics_backfill": {"start": start.isoformat(),
                                                                         "end": end.isoformat()}})

    # -- principals ----------------------------------------------------------------------------
    def add_user(self, user_id: str, organization_id: str | None, *, is_org_admin: bool = False,
                 teams: tuple[str, ...] = ()) -> None:
        with self._conn() as conn:
            access.add_user(conn, user_id, organization_id, is_org_admin=is_org_admin, teams=teams)
            conn.commit()


def create_metric_definition(user_id: str, spec: dict[str, Any]) -> MetricDefinition:
    """``create_metric_definition(user_id, {name, metric_type, data_source, ...})``: create a
    metric as ``user_id`` with the default service."""
    return CustomMetricsService().create(user_id, spec)
