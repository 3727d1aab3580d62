"""Every Redis name and wire format of the protocol, in one place.

Keys: `haexec:{cluster}:leader` holds `<instance_id>|<random token>` (or, during a handoff,
`reserved:<target>|`); `haexec:{cluster}:replica:{instance_id}` is a replica's registry
entry; `haexec:{cluster}:events` carries release announcements, `released|<instance>|<epoch>`
or `handoff|<instance>|<epoch>|<target>`. Announcements only hurry a follower: nothing in
them is trusted for leadership.
"""

from __future__ import annotations

from dataclasses import dataclass

RESERVED_PREFIX = "reserved:"


def leader_key(cluster: str) -> str:
    return f"haexec:{cluster}:leader"


def events_channel(cluster: str) -> str:
    return f"haexec:{cluster}:events"


def replica_key(cluster: str, instance_id: str) -> str:
    return f"haexec:{cluster}:replica:{instance_id}"


def cluster_pattern(cluster: str) -> str:
    """Every key of a cluster, for SCAN MATCH (a throw-away cluster's clean-up)."""
    return f"haexec:{cluster}:*"


def lease_value(instance_id: str, token: str) -> str:
    return f"{instance_id}|{token}"


def reserved_value(instance_id: str) -> str:
    return f"{RESERVED_PREFIX}{instance_id}|"


def holder_instance(value: bytes | str | None) -> str | None:
    """The instance id inside a key value (`<instance>|<token>`), as any client returns it."""
    if not value:
        return None
    text = value.decode() if isinstance(value, bytes) else value
    return text.split("|", 1)[0]


def released_event(instance_id: str, epoch: int) -> str:
    return f"released|{instance_id}|{epoch}"


def handoff_event(instance_id: str, epoch: int, target: str) -> str:
    return f"handoff|{instance_id}|{epoch}|{target}"


@dataclass(frozen=True)
class Event:
    kind: str  # "released" or "handoff"
    instance_id: str | None
    target: str | None  # a handoff's successor


def parse_event(message: str) -> Event:
    """Lenient: an unknown or short message is an event of an unknown kind, never an error."""
    parts = message.split("|")
    kind = parts[0]
    return Event(kind, parts[1] if len(parts) > 1 else None, parts[3] if kind == "handoff" and len(parts) > 3 else None)
