import json

from django.core.management.base import BaseCommand

from apps.marketplace.demo import demo_seed


class Command(BaseCommand):
    help = ("Seed the demo fleet: the 'demo' buyer with credits and a fresh API key, N local workers "
            "with fresh tokens, and the catalogue names mapped to the built-in model. Prints JSON.")

    def add_arguments(self, parser):
        parser.add_argument("--agents", type=int, default=2, help="demo workers to register (default 2)")

    def handle(self, *args, agents, **options):
        fleet = demo_seed(agents=agents)
        self.stdout.write(json.dumps({"api_key": fleet.api_key, "workers": fleet.worker_tokens,
                                      "model_id": fleet.model_id, "model_digest": fleet.model_digest}))
