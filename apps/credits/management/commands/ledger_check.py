from django.core.management.base import BaseCommand, CommandError

from apps.credits.selectors import ledger_invariant_violations


class Command(BaseCommand):
    help = ("Check every ledger invariant over the whole ledger: per-transaction zero sums, balances "
            "equal to their entries, no forbidden negative balance, holds settled exactly once, "
            "$PEER supply = minted - burned. Exits 1 naming each violation.")

    def handle(self, *args, **options):
        problems = ledger_invariant_violations()
        if problems:
            for problem in problems:
                self.stderr.write(f"violation: {problem}")
            raise CommandError(f"{len(problems)} ledger invariant violation(s)")
        self.stdout.write("ledger sound: every invariant holds")
