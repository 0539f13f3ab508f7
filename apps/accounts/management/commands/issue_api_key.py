from django.core.management.base import BaseCommand, CommandError

from apps.accounts.services import api_key_issue, user_get_or_create
from apps.credits.services import credits_grant


class Command(BaseCommand):
    help = ("Create USERNAME if needed, optionally grant N credits from the treasury's promo "
            "account, and print only the new API key.")

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--credits", type=int, default=0,
                            help="credits to grant (1 credit = $0.01 = 10,000 micro-USDC)")
        parser.add_argument("--name", default="cli", help="a label for the key")

    def handle(self, *args, username, credits, name, **options):
        if credits < 0:
            raise CommandError("--credits must be zero or more")
        user = user_get_or_create(username=username)
        if credits:
            credits_grant(user=user, credits=credits, memo="issue_api_key")
        _, raw_key = api_key_issue(user=user, name=name)
        self.stdout.write(raw_key)
