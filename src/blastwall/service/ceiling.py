"""What a tenant may ask the service for: pure checks, no I/O.

A tenant's request carries a *policy layer* (TOML text or a table) and
resources.  Two separate questions are asked of it, in this order:

1. ``tenant_layer``: is every key it sets one a tenant may set at all?  A
   tenant's sandbox runs on the operator's machine, so anything that names a
   host path or the service's own secrets is refused whatever the ceiling:
   ``filesystem.allow_write`` (it would bind a host directory into the
   sandbox), ``credentials`` (``from = "env:..."``/``file:...`` would read the
   service's environment and files), ``environment.pass`` (the service's
   variables), ``network.resolve`` and ``network.trusted_addresses`` (they
   point allowed names at, or open, internal addresses), ``network.upstream_ca``
   (a host file) and ``network.unlisted = "ask"`` (nobody is there to ask).
   Narrowing keys (``*.deny``, ``filesystem.deny_*``) are always fine.
2. ``Ceiling.check``: is what it asks within the operator's grant for this
   tenant?  Every allowed host (and every rule's host) must be covered by one
   of the ceiling's domains; the tier and the image must be among its
   tiers and images (VMs are opt-in: a ceiling allows the container tier
   unless the operator adds ``vm``); memory, CPUs, processes (``pids``) and
   TTL must not exceed its maxima.

Beside the tenant's ceiling, the machine's: ``machine_max_pids`` is the most
processes one sandbox may hold, derived from the host's own pid space.

Both raise (``TenantPolicyError`` -> 422, ``CeilingExceeded`` -> 403); neither
returns a boolean for the caller to forget.
"""

from __future__ import annotations

from blastwall.errors import PolicyError
from blastwall.policy import units
from blastwall.policy.hosts import covers
from blastwall.policy.units import format_size

__all__ = ["SERVICE_TIERS", "Ceiling", "CeilingExceeded", "Resources", "TenantPolicyError", "covers", "format_size",
           "machine_max_pids", "parse_duration", "parse_size", "tenant_layer"]

# (section, key) a tenant may set.  Everything else is refused by name.
TENANT_KEYS = frozenset({
    ("network", "allow"), ("network", "deny"), ("network", "rules"), ("network", "unlisted"),
    ("filesystem", "deny_read"), ("filesystem", "deny_write"),
    ("environment", "set"), ("environment", "deny"),
    ("sandbox", "tier"), ("sandbox", "image"),
    ("resources", "memory"), ("resources", "cpus"), ("resources", "pids"),
})
_WHY_NOT = {
    ("filesystem", "allow_write"): "it would make a directory of the service's host writable",
    ("filesystem", "reveal"): "the built-in secret list is the operator's",
    ("filesystem", "allow_unix_sockets"): "it would expose the service host's sockets",
    ("filesystem", "private_tmp"): "the sandbox's /tmp is always private",
    ("filesystem", "allow_git_writes"): "a service sandbox's workspace is its own: nothing in it is protected",
    ("credentials", "entries"): "credentials are read from the service's own environment and files",
    ("environment", "pass"): "it would pass the service's own environment variables in",
    ("network", "resolve"): "pinning names to addresses could point an allowed name at an internal address",
    ("network", "trusted_addresses"): "it would open the service's internal networks",
    ("network", "upstream_ca"): "it names a file on the service's host",
    ("sandbox", "require"): "the container tier's boundary is gVisor",
    ("resources", "timeout"): "a service sandbox lives for its TTL (the request's ttl)",
}

# The tiers a service runs: each sandbox is a gVisor container or a QEMU VM (the process
# tier shares the service host's kernel and filesystem view with the tenant: never served).
SERVICE_TIERS = ("container", "vm")

def machine_max_pids(pid_limit: int) -> int:
    """The most processes one sandbox may run on a machine whose pid space is ``pid_limit``.

    gVisor's ptrace platform runs one host task per sandboxed task and more
    (``_raw_cgroups.host_pids``), so a sandbox allowed ``pids`` holds up to
    ``host_pids(pids)`` of the host's; one sandbox may take at most a quarter
    of the machine.
    """
    from blastwall.tiers.container import host_pids_for

    share = pid_limit // 4
    pids = 0
    while host_pids_for(pids + 1) <= share:
        pids += 1
    return pids


class TenantPolicyError(PolicyError):
    """The tenant's policy is invalid or sets a key tenants may not set (422)."""


class CeilingExceeded(Exception):
    """The request asks for more than the tenant's ceiling allows (403).  ``field`` names what."""

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field


def parse_size(value: object, what: str = "size") -> int:
    """Bytes from ``536870912``, ``"512M"``, ``"1.5G"`` (the policy's grammar, policy/units.py); ValueError otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"{what}: expected a size like 512M")
    size = value if isinstance(value, int) else units.parse_size(value)
    if size is None:
        raise ValueError(f"{what}: {value!r} is not a size like 512M or 2G")
    if size <= 0 or size > 1 << 50:
        raise ValueError(f"{what}: {value!r} is out of range")
    return size


def parse_duration(value: object, what: str = "duration") -> int:
    """Seconds from ``300``, ``"300"``, ``"5m"``, ``"1h30m"`` (the policy's grammar); ValueError otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"{what}: expected a duration like 5m")
    seconds = value if isinstance(value, int) else units.parse_duration(value)
    if seconds is None:
        raise ValueError(f"{what}: {value!r} is not a duration like 300s, 5m, 12h or 30d")
    if seconds <= 0 or seconds > 366 * 86400:
        raise ValueError(f"{what}: {value!r} is out of range (1s to 366d)")
    return seconds


def tenant_layer(document: object, source: str = "tenant policy"):
    """Validate a tenant's policy (a table) into a Layer; refuse keys a tenant may not set."""
    from blastwall.policy.model import parse_layer

    try:
        layer = parse_layer(document, source)
    except PolicyError as exc:
        raise TenantPolicyError(exc.message, fix=exc.fix) from None
    for slot in layer.values:
        if slot not in TENANT_KEYS:
            name = "credentials" if slot[0] == "credentials" else f"{slot[0]}.{slot[1]}"
            why = _WHY_NOT.get(slot, "the service decides it")
            raise TenantPolicyError(f"{name} cannot be set by a tenant: {why}", key=name, source=source)
    unlisted = layer.values.get(("network", "unlisted"))
    if unlisted is not None and unlisted[1] != "deny":
        raise TenantPolicyError("network.unlisted must be \"deny\": a service sandbox has nobody to ask",
                                key="network.unlisted", source=source)
    return layer


class Resources:
    """Per-sandbox resources: memory in bytes, CPUs (may be fractional), pids."""

    __slots__ = ("memory", "cpus", "pids")

    def __init__(self, memory: int, cpus: float, pids: int) -> None:
        object.__setattr__(self, "memory", memory)
        object.__setattr__(self, "cpus", cpus)
        object.__setattr__(self, "pids", pids)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Resources are immutable")

    def __reduce__(self):  # Immutable, so pickled (to a cluster's node) through the constructor.
        return (Resources, self.as_tuple())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Resources) and self.as_tuple() == other.as_tuple()

    def __hash__(self) -> int:
        return hash(self.as_tuple())

    def as_tuple(self) -> tuple:
        return (self.memory, self.cpus, self.pids)

    def as_dict(self) -> dict:
        return {"memory": format_size(self.memory), "memory_bytes": self.memory, "cpus": self.cpus, "pids": self.pids}

    def merged(self, requested: dict | None) -> "Resources":
        """These defaults overridden by a request's ``{"memory", "cpus", "pids"}``; ValueError if malformed."""
        if not requested:
            return self
        unknown = set(requested) - {"memory", "cpus", "pids"}
        if unknown:
            raise ValueError(f"resources: unknown key {sorted(unknown)[0]!r} (known: memory, cpus, pids)")
        memory = parse_size(requested["memory"], "resources.memory") if "memory" in requested else self.memory
        cpus = self.cpus
        if "cpus" in requested:
            raw = requested["cpus"]
            if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not 0 < raw <= 256:
                raise ValueError("resources.cpus: expected a number of CPUs > 0, like 1 or 0.5")
            cpus = float(raw)
        pids = self.pids
        if "pids" in requested:
            from blastwall.policy.model import PIDS_MAX

            raw = requested["pids"]
            if isinstance(raw, bool) or not isinstance(raw, int) or not 16 <= raw <= PIDS_MAX:
                raise ValueError(f"resources.pids: expected a whole number of processes, 16 to {PIDS_MAX:_}")
            pids = raw
        if memory < 32 << 20:
            raise ValueError("resources.memory: at least 32M")
        return Resources(memory, cpus, pids)

    def __repr__(self) -> str:
        return f"Resources(memory={format_size(self.memory)}, cpus={self.cpus}, pids={self.pids})"


class Ceiling:
    """The most a tenant may ask for, set by the operator (``blastwall tenant add``)."""

    __slots__ = ("max_sessions", "max_memory", "max_cpus", "max_pids", "max_ttl", "allow_domains", "images", "tiers")

    DEFAULTS = {"max_sessions": 10, "max_memory": 4 << 30, "max_cpus": 2.0, "max_pids": 1024, "max_ttl": 3600,
                "allow_domains": (), "images": ("default",), "tiers": ("container",)}

    def __init__(self, *, max_sessions: int, max_memory: int, max_cpus: float, max_ttl: int,
                 allow_domains: tuple[str, ...], images: tuple[str, ...],
                 tiers: tuple[str, ...] = ("container",), max_pids: int = 1024) -> None:
        values = {"max_sessions": max_sessions, "max_memory": max_memory, "max_cpus": max_cpus,
                  "max_pids": max_pids, "max_ttl": max_ttl, "allow_domains": tuple(allow_domains),
                  "images": tuple(images), "tiers": tuple(tiers)}
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("a Ceiling is immutable")

    @classmethod
    def from_dict(cls, data: dict) -> "Ceiling":
        """Validate a stored or operator-given ceiling; ValueError naming the field."""
        from blastwall.policy.hosts import HostPatternError, normalize_host_pattern

        values = dict(cls.DEFAULTS)
        unknown = set(data) - set(values)
        if unknown:
            raise ValueError(f"unknown ceiling field {sorted(unknown)[0]!r}")
        values.update({k: v for k, v in data.items() if v is not None})
        sessions = values["max_sessions"]
        if isinstance(sessions, bool) or not isinstance(sessions, int) or not 0 <= sessions <= 100000:
            raise ValueError("max_sessions: expected a whole number >= 0")
        memory = parse_size(values["max_memory"], "max_memory")
        cpus = values["max_cpus"]
        if isinstance(cpus, bool) or not isinstance(cpus, (int, float)) or not 0 < cpus <= 256:
            raise ValueError("max_cpus: expected a number of CPUs > 0")
        pids = values["max_pids"]
        from blastwall.policy.model import PIDS_MAX

        if isinstance(pids, bool) or not isinstance(pids, int) or not 16 <= pids <= PIDS_MAX:
            raise ValueError(f"max_pids: expected a whole number of processes, 16 to {PIDS_MAX:_}")
        ttl = parse_duration(values["max_ttl"], "max_ttl")
        domains = []
        for item in values["allow_domains"]:
            try:
                domains.append(normalize_host_pattern(item))
            except HostPatternError as exc:
                raise ValueError(f"allow_domains: {item!r}: {exc}") from None
        images = []
        from blastwall.policy.model import _image_name

        for item in values["images"]:
            try:
                images.append(_image_name(item, "images", "ceiling"))
            except PolicyError:
                raise ValueError(f"images: {item!r} is not an image name") from None
        tiers = values["tiers"]
        if isinstance(tiers, str) or not isinstance(tiers, (list, tuple)) \
                or not all(isinstance(t, str) and t in SERVICE_TIERS for t in tiers):
            raise ValueError(f"tiers: expected a list of {' and '.join(SERVICE_TIERS)}")
        return cls(max_sessions=sessions, max_memory=memory, max_cpus=float(cpus), max_pids=pids, max_ttl=ttl,
                   allow_domains=tuple(dict.fromkeys(domains)), images=tuple(dict.fromkeys(images)),
                   tiers=tuple(dict.fromkeys(tiers)))

    def __reduce__(self):  # Immutable, so pickled (to a cluster's node) through its checked form.
        return (Ceiling.from_dict, (self.as_dict(),))

    def as_dict(self) -> dict:
        return {"max_sessions": self.max_sessions, "max_memory": self.max_memory, "max_cpus": self.max_cpus,
                "max_pids": self.max_pids, "max_ttl": self.max_ttl, "allow_domains": list(self.allow_domains), "images": list(self.images),
                "tiers": list(self.tiers)}

    def check(self, policy, resources: Resources, ttl: int) -> None:
        """Raise ``CeilingExceeded`` unless the merged ``policy``, ``resources`` and ``ttl`` are within this ceiling."""
        tier = policy.sandbox.tier
        if tier not in self.tiers:
            raise CeilingExceeded(f"the {tier} tier is not allowed for this tenant (allowed: "
                                  f"{', '.join(self.tiers) or 'none'})", field="sandbox.tier")
        image = policy.sandbox.image
        if image not in self.images:
            raise CeilingExceeded(f"image {image!r} is not allowed for this tenant (allowed: "
                                  f"{', '.join(self.images) or 'none'})", field="sandbox.image")
        hosts = [("network.allow", h) for h in policy.network.allow]
        hosts += [("network.rules", dict(rule)["host"]) for rule in policy.network.rules]
        for field, host in hosts:
            if not any(covers(grant, host) for grant in self.allow_domains):
                raise CeilingExceeded(f"{host!r} is not within the domains allowed for this tenant (allowed: "
                                      f"{', '.join(self.allow_domains) or 'none'})", field=field)
        if resources.memory > self.max_memory:
            raise CeilingExceeded(f"memory {format_size(resources.memory)} is more than this tenant's "
                                  f"{format_size(self.max_memory)}", field="resources.memory")
        if resources.cpus > self.max_cpus:
            raise CeilingExceeded(f"{resources.cpus:g} CPUs is more than this tenant's {self.max_cpus:g}",
                                  field="resources.cpus")
        if resources.pids > self.max_pids:
            raise CeilingExceeded(f"{resources.pids} processes is more than this tenant's {self.max_pids}",
                                  field="resources.pids")
        if ttl > self.max_ttl:
            raise CeilingExceeded(f"a TTL of {ttl}s is more than this tenant's {self.max_ttl}s", field="ttl")

    def __repr__(self) -> str:
        return f"Ceiling({self.as_dict()!r})"
