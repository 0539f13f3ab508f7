"""peer_posting_refused(): raises SQLSTATE PCL01. A posting sent with its transaction's COMMIT in
one round trip (ledger.ledger_post_committing) calls it when it would post nothing, so the
transaction aborts and the COMMIT behind it commits nothing. PostgreSQL only: elsewhere the
posting and its commit are two steps and this is never called."""

from django.db import migrations

CREATE = """
CREATE OR REPLACE FUNCTION peer_posting_refused() RETURNS bigint LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RAISE EXCEPTION 'ledger posting refused: an account is missing, short or of another asset, or the key is used'
        USING ERRCODE = 'PCL01';
END
$$
"""
DROP = "DROP FUNCTION IF EXISTS peer_posting_refused()"


def create(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE)


def drop(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP)


class Migration(migrations.Migration):
    dependencies = [("credits", "0004_x402_payments")]
    operations = [migrations.RunPython(create, drop)]
