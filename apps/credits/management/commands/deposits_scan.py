from django.core.management.base import BaseCommand, CommandError

from apps.credits.deposits.services import deposits_scan


class Command(BaseCommand):
    help = ("Scan the chain once for USDC deposits under every watched purchase reference and credit "
            "the new finalized ones (what the Celery task deposits_scan_task does). Safe to run any time.")

    def handle(self, *args, **options):
        report = deposits_scan()
        self.stdout.write(f"credited {len(report.credited)}, rejected {len(report.rejected)}, "
                          f"waiting for finality {len(report.waiting)}")
        for error in report.errors:
            self.stderr.write(f"error: {error}")
        if report.errors:
            raise CommandError(f"{len(report.errors)} reference(s) could not be scanned")
