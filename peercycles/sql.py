"""Small helpers for hand-written statements: a model instance from a row, and an instance's
INSERT or UPDATE, with each field's own conversions to and from the database.

For the few statements every request runs, where building the query through the ORM costs
more than PostgreSQL takes to run it: 1.2-2 ms of Python for a one-row SELECT against 0.2-0.4 ms
hand-written (docs/benchmarks.md, "The job path's statements by hand"). Values go through the
fields (`get_db_prep_save`, `from_db_value`), so a JSON column or a UUID reads and writes as
the ORM's would; instances come from `Model.from_db`, so a column left out loads on access.
No signals are sent: the models written here have no receivers.
"""

from functools import cache

from django.db import DEFAULT_DB_ALIAS, connection


@cache
def _fields(model) -> dict:
    return {field.attname: field for field in model._meta.concrete_fields}


def columns_of(model, names=None) -> list[str]:
    """The attnames of `model`'s columns (those in `names`, or all), in the model's order: the
    order `instance_from_row` needs its values in."""
    return [attname for attname in _fields(model) if names is None or attname in names]


def select_list(model, names: list[str], alias: str) -> str:
    return ", ".join(f"{alias}.{connection.ops.quote_name(_fields(model)[name].column)}" for name in names)


def instance_from_row(model, names: list[str], values) -> object:
    """An instance of `model` from `values` of the columns `names` (columns_of's order)."""
    fields = _fields(model)
    converted = [fields[name].from_db_value(value, None, connection)
                 if value is not None and hasattr(fields[name], "from_db_value") else value
                 for name, value in zip(names, values)]
    return model.from_db(DEFAULT_DB_ALIAS, names, converted)


@cache
def _insert_sql(model) -> str:
    fields = list(_fields(model).values())
    return (f"INSERT INTO {connection.ops.quote_name(model._meta.db_table)} "
            f"({', '.join(connection.ops.quote_name(f.column) for f in fields)}) "
            f"VALUES ({', '.join(['%s'] * len(fields))})")


def instance_insert(instance, *, returning: str = "", params: list | tuple = ()):
    """INSERT `instance` with every column (its primary key set in Python, e.g. a uuid4 default).
    With `returning` (an SQL expression, its own `params`) the statement returns it, read in the
    statement's snapshot (before the insert), and so does this."""
    fields = list(_fields(type(instance)).values())
    values = [field.get_db_prep_save(field.pre_save(instance, True), connection) for field in fields]
    with connection.cursor() as cursor:
        if returning:
            cursor.execute(f"{_insert_sql(type(instance))} RETURNING {returning}", [*values, *params])
            returned = cursor.fetchone()[0]
        else:
            cursor.execute(_insert_sql(type(instance)), values)
            returned = None
    instance._state.adding, instance._state.db = False, DEFAULT_DB_ALIAS
    return returned


def instance_update(instance, names: list[str]) -> None:
    """UPDATE the columns `names` of `instance`'s row to the instance's values."""
    model, fields = type(instance), _fields(type(instance))
    assignments = ", ".join(f"{connection.ops.quote_name(fields[name].column)} = %s" for name in names)
    values = [fields[name].get_db_prep_save(fields[name].pre_save(instance, False), connection) for name in names]
    pk = model._meta.pk
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {connection.ops.quote_name(model._meta.db_table)} SET {assignments} "
                       f"WHERE {connection.ops.quote_name(pk.column)} = %s",
                       [*values, pk.get_db_prep_value(instance.pk, connection)])
