"""The membership ledger: which owners contributed how many samples to each cluster."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class Contribution:
    """An owner's samples routed to one cluster: how many, a digest naming which ones, and how
    many of each class (the label histogram lets evaluation report which classes a head saw)."""

    samples: int
    digest: str
    labels: tuple[int, ...] = ()
    rounds: int = -1
    """Training rounds the owner completed before it stopped replying; -1 means all of them."""


@dataclasses.dataclass
class MembershipLedger:
    """Mapping cluster key -> {owner id: Contribution}.

    A cluster's members are exactly the owners listed under it. An owner with no routed samples
    is not a member, and a cluster with no members is absent.
    """

    entries: dict[str, dict[str, Contribution]] = dataclasses.field(default_factory=dict)

    def record(self, cluster: str, owner: str, contribution: Contribution) -> None:
        """Record ``owner``'s contribution to ``cluster`` (zero samples records nothing)."""
        if contribution.samples > 0:
            self.entries.setdefault(cluster, {})[owner] = contribution

    def members(self, cluster: str) -> list[str]:
        """Owners of ``cluster`` in canonical (sorted) order."""
        return sorted(self.entries.get(cluster, {}))

    def samples(self, cluster: str) -> int:
        """Samples routed to ``cluster`` across its members."""
        return sum(c.samples for c in self.entries.get(cluster, {}).values())

    def clusters_of(self, owner: str) -> list[str]:
        """Clusters that ``owner`` contributed to, sorted by key."""
        return sorted(key for key, members in self.entries.items() if owner in members)

    def owners(self) -> list[str]:
        """Return every owner with at least one contribution, sorted."""
        return sorted({owner for members in self.entries.values() for owner in members})

    def label_counts(self, cluster: str, num_classes: int) -> list[int]:
        """Training samples of each class routed to ``cluster``."""
        totals = [0] * num_classes
        for contribution in self.entries.get(cluster, {}).values():
            for label, count in enumerate(contribution.labels):
                totals[label] += count
        return totals

    def same_membership(self, cluster: str, other: MembershipLedger) -> bool:
        """Return whether ``cluster`` has identical members, counts and sample digests in both ledgers."""
        return self.entries.get(cluster) == other.entries.get(cluster)

    def rounds_completed(self, owner: str) -> int:
        """Return the training rounds ``owner`` completed before it dropped out, or -1 if it never did."""
        limits = [members[owner].rounds for members in self.entries.values()
                  if owner in members and members[owner].rounds >= 0]
        return min(limits) if limits else -1

    def mark_dropped(self, owner: str, rounds: int, clusters: list[str]) -> None:
        """Record that ``owner`` completed only ``rounds`` training rounds of ``clusters``."""
        for key in clusters:
            if owner in self.entries.get(key, {}):
                self.entries[key][owner] = dataclasses.replace(self.entries[key][owner], rounds=rounds)

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-ready dict ``{cluster: {owner: [samples, digest, labels(, rounds)]}}``, keys
        sorted; ``rounds`` appears only for an owner that dropped out."""
        return {
            key: {owner: [c.samples, c.digest, list(c.labels)] + ([c.rounds] if c.rounds >= 0 else [])
                  for owner, c in sorted(members.items())}
            for key, members in sorted(self.entries.items())
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MembershipLedger:
        """Inverse of :meth:`to_json`."""
        return cls({
            key: {owner: Contribution(int(value[0]), str(value[1]), tuple(int(v) for v in value[2]),
                                      int(value[3]) if len(value) > 3 else -1)
                  for owner, value in members.items()}
            for key, members in data.items()
        })
