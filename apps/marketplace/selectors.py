from apps.workers.selectors import catalogue_get, catalogue_list, workers_serving_count


def models_listing() -> list[dict]:
    """/v1/models: each public name, what actually serves it, and how many workers are online."""
    return [{
        "id": entry.name, "object": "model", "created": 0, "owned_by": "peer-cycles",
        "peer": {"served_model": entry.served_model, "digests": entry.digests,
                 "description": entry.description, "context_length": entry.context_length,
                 "workers_online": workers_serving_count(entry=entry)},
    } for entry in catalogue_list()]


__all__ = ["catalogue_get", "models_listing"]
