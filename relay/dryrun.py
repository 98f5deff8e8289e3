"""`relay routes test`: what each message would become, with no network and no store."""

from __future__ import annotations

from typing import Any

from relay.app import compile_config_routes
from relay.config import SEGMENT_WEBHOOK_SOURCE, Config, CustomerIODestination
from relay.mapping import Rejection
from relay.mapping.to_segment import map_webhook
from relay.sinks import customerio, segment
from relay.sources import segment_messages as seg


def looks_like_customerio(message: Any) -> bool:
    return (
        isinstance(message, dict)
        and "event_id" in message
        and ("object_type" in message or "metric" in message or "event_type" in message)
    )


def _first_source(names: list[str], fallback: str) -> str:
    return names[0] if names else fallback


def dry_run(config: Config, messages: list[Any], now: float) -> list[dict[str, Any]]:
    routes = compile_config_routes(config)
    out: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        if looks_like_customerio(message):
            kind = "customerio"
            source = _first_source(list(config.customerio_signing_keys), "customerio")
            mapped = map_webhook(message, received_at=now, profile=config.customerio_profile)
            if isinstance(mapped, Rejection):
                out.append({"index": index, "kind": kind, "rejected": mapped.reason})
                continue
            deliverable = mapped
        else:
            kind = "segment"
            source = _first_source(list(config.segment_write_keys), SEGMENT_WEBHOOK_SOURCE)
            problem = seg.message_problem(message)
            if problem:
                out.append({"index": index, "kind": kind, "rejected": problem})
                continue
            if isinstance(message, dict) and "source" in message.get("context", {}).get(
                "relay", {}
            ):
                source = str(message["context"]["relay"]["source"])
            deliverable = message
        result = routes.route(kind, source, message)
        entry: dict[str, Any] = {
            "index": index,
            "kind": kind,
            "source": source,
            "routes": [r.name for r in result.matched],
            "deliveries": [],
        }
        for destination, route in result.deliveries:
            edited = route.edit(deliverable)
            dest = config.destinations[destination]
            item: dict[str, Any] = {"destination": destination, "route": route.name}
            if isinstance(dest, CustomerIODestination):
                requests = customerio.requests_for([edited], dest, now)
                if isinstance(requests, Rejection):
                    item["rejected"] = requests.reason
                else:
                    item["requests"] = [
                        {"url": dest.base_url + r.path, **r.as_json()} for r in requests
                    ]
            else:
                request = segment.batch_request([edited], now)
                item["requests"] = [{"url": dest.base_url + request.path, **request.as_json()}]
            entry["deliveries"].append(item)
        out.append(entry)
    return out
