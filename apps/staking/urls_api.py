"""$PEER REST routes, mounted at /api/staking/."""

urlpatterns: list = []
