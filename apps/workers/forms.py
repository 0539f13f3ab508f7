"""Forms of the operator pages. They only parse; the rules are services.check_* (the REST API
goes through the same ones), whose errors the views put back on these forms."""

from django import forms

from .services import WorkerInputError

TIER_CHOICES = [
    ("open", "Open: any job of the open tier, no bond needed"),
    ("verified", "Verified: answers checked by bonded re-execution; routed only with a $PEER bond"),
    ("confidential", "Confidential: prompts sealed to the agent's enclave (python -m worker --enclave ...); "
                     "routed only while the node has verified the enclave's attestation"),
]


class PriceTableMixin:
    """One optional price per catalogue model, in micro-USDC per token; blank: not offered."""

    def add_price_fields(self, catalogue, offers: dict | None = None) -> None:
        self.catalogue = list(catalogue)
        offers = offers or {}
        for entry in self.catalogue:
            self.fields[f"price_{entry.id}"] = forms.IntegerField(
                required=False, label=entry.name, widget=forms.NumberInput(attrs={"min": 0, "step": 1}),
                initial=(offers.get(entry.name) or {}).get("price_per_token"))

    def price_rows(self):
        return [(entry, self[f"price_{entry.id}"]) for entry in self.catalogue]

    def offers(self) -> dict:
        return {entry.name: {"price_per_token": self.cleaned_data[f"price_{entry.id}"]}
                for entry in self.catalogue if self.cleaned_data.get(f"price_{entry.id}") is not None}

    def add_service_errors(self, exc: WorkerInputError) -> None:
        for field, message in exc.errors.items():
            self.add_error(field if field in self.fields else None, message)


class WorkerRegisterForm(PriceTableMixin, forms.Form):
    name = forms.CharField(max_length=100, help_text="Yours to recognise it by, e.g. rig-1.")
    tiers = forms.MultipleChoiceField(choices=TIER_CHOICES, widget=forms.CheckboxSelectMultiple, initial=["open"])
    hardware_description = forms.CharField(
        max_length=300, required=False, label="Hardware",
        help_text="What it runs on, e.g. RTX 4090 24 GB, Ryzen 9, 64 GB RAM (the agent reports its own details too).")

    def __init__(self, *args, catalogue, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_price_fields(catalogue)


class WorkerOffersForm(PriceTableMixin, forms.Form):
    def __init__(self, *args, catalogue, offers: dict, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_price_fields(catalogue, offers)


class PayoutAddressForm(forms.Form):
    payout_address = forms.CharField(max_length=64, required=False, label="Solana payout address",
                                     help_text="Your wallet (base58). USDC earnings are sent there; empty: kept on the node.")

    def add_service_errors(self, exc: WorkerInputError) -> None:
        for field, message in exc.errors.items():
            self.add_error(field if field in self.fields else None, message)
