"""Configuration of one federated job: data, backbone, clustering and training.

The same keys, spelled with hyphens, form the app's ``[tool.flwr.app.config]`` table in
pyproject.toml and the command line's options, so a job reads the same under ``flwr run .``
and ``lmeraser simulate``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from .errors import LmeraserError

PARTITIONERS = ("iid", "dirichlet", "shards")
BASELINES = ("global", "random", "probe")


@dataclasses.dataclass(frozen=True)
class JobConfig:
    """Parameters of a job. Defaults run the embedded digits federation in about a minute.

    Attributes
    ----------
    dataset : str, default "digits"
        ``digits`` (scikit-learn's 8x8 digits), ``folder:PATH`` (an ImageFolder tree, or a
        folder holding ``train/`` and ``test/`` trees) or ``mnist:PATH`` (a folder with the
        MNIST IDX files).
    num_owners : int, default 10
        Data owners (Flower clients) the training split is partitioned among.
    partitioner : str, default "dirichlet"
        ``iid``, ``dirichlet`` (label skew with concentration ``alpha``) or ``shards``.
    alpha : float, default 0.5
        Dirichlet concentration; smaller values give each owner fewer labels.
    shards_per_owner : int, default 2
        Label-sorted shards each owner receives under the ``shards`` partitioner.
    test_fraction : float, default 0.3
        Held-out share for data sets without their own test split.
    max_per_class : int, default 0
        Keep at most this many training and test images per class; 0 keeps all.
    seed : int, default 0
        Global seed; every random choice derives from it.
    backbone : str, default "tf_efficientnet_lite0"
        timm model name of the frozen backbone.
    checkpoint : str, default ""
        Local checkpoint for the backbone; empty means the packaged EfficientNet-Lite0
        weights for the default backbone, or timm's pretrained weights for other names.
    input_size : int, default 32
        Side of the square backbone input in pixels; 0 takes the backbone's own config.
    mean, std : str, default ""
        Per-channel input normalisation as ``r,g,b``; empty takes the backbone's own config.
    prompt_width : int, default 4
        Width in pixels of the learnable prompt border.
    summary_k : int, default 1
        Local k-means centroids per owner summary; an owner joins at most this many clusters.
    distance_factor : float, default 1.0
        Cut height of the agglomerative clustering, as a multiple of the data's spread.
    min_cluster_size : int, default 100
        Clusters with fewer samples merge into their nearest neighbour. An absolute count,
        so that one owner leaving does not move the bar for every other cluster.
    max_cluster_fraction : float, default 0.5
        Clusters above this share are split along their dendrogram while both parts stay
        above the minimum size.
    warmup_rounds : int, default 5
        Federated averaging rounds that train only the head, on cached backbone features,
        before the prompt is trained (0 skips the warm-up). They cost no backbone pass.
    warmup_epochs : int, default 10
        Passes over its samples each member makes per warm-up round.
    warmup_lr : float, default 0.01
        Adam learning rate of the head during the warm-up.
    rounds : int, default 3
        Federated averaging rounds per cluster that train the prompt and the head.
    local_epochs : int, default 2
        Passes over its routed samples each member makes per round.
    batch_size : int, default 32
        Local mini-batch size.
    prompt_lr : float, default 0.05
        Adam learning rate of the prompt.
    head_lr : float, default 0.003
        Adam learning rate of the head while the prompt trains.
    routing_temperature : float, default 0.1
        Soft routing at prediction: clusters are weighted by exp(-(d - d_min) / (T * d_min))
        of their prototype distance d and their class probabilities mixed; 0 uses the
        nearest prototype's prompt and head alone.
    revoke : str, default ""
        Owner to revoke after training (``owner-003``); empty revokes the first owner.
    verify : bool, default True
        Train the reference federation without the revoked owner and compare every tensor.
    baselines : str, default "global,random,probe"
        Comma-separated baselines to run: ``global``, ``random``, ``probe``; empty for none.
    state_dir : str, default "lmeraser-state"
        Folder for model versions, ledgers and results.
    threads : int, default 2
        torch threads per process.
    classes : str, default ""
        Comma-separated class names for deployed owners, whose image folders must each hold
        exactly these class folders. Empty takes the data set's own classes (simulation).
    round_timeout : float, default 0.0
        Seconds the server waits for owners' replies in each exchange of a deployment. Owners
        that have not replied by then sit out the rest of the job, and the ledger records the
        rounds they completed. 0 waits without limit.
    """

    dataset: str = "digits"
    num_owners: int = 10
    partitioner: str = "dirichlet"
    alpha: float = 0.5
    shards_per_owner: int = 2
    test_fraction: float = 0.3
    max_per_class: int = 0
    seed: int = 0
    backbone: str = "tf_efficientnet_lite0"
    checkpoint: str = ""
    input_size: int = 32
    mean: str = ""
    std: str = ""
    prompt_width: int = 4
    summary_k: int = 1
    distance_factor: float = 1.0
    min_cluster_size: int = 100
    max_cluster_fraction: float = 0.5
    warmup_rounds: int = 5
    warmup_epochs: int = 10
    warmup_lr: float = 0.01
    rounds: int = 3
    local_epochs: int = 2
    batch_size: int = 32
    prompt_lr: float = 0.05
    head_lr: float = 0.003
    routing_temperature: float = 0.1
    revoke: str = ""
    verify: bool = True
    baselines: str = "global,random,probe"
    state_dir: str = "lmeraser-state"
    threads: int = 2
    classes: str = ""
    round_timeout: float = 0.0

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ validation

    def validate(self) -> None:
        """Raise :class:`LmeraserError` naming the first invalid field and its valid range."""
        positive = ("num_owners", "shards_per_owner", "summary_k", "rounds", "local_epochs",
                    "batch_size", "threads")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise LmeraserError(f"invalid {_option(name)}={value!r}: expected an integer >= 1")
        for name in ("max_per_class", "input_size", "prompt_width", "seed", "min_cluster_size", "warmup_rounds",
                     "warmup_epochs"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise LmeraserError(f"invalid {_option(name)}={value!r}: expected an integer >= 0")
        if self.partitioner not in PARTITIONERS:
            raise LmeraserError(
                f"invalid partitioner={self.partitioner!r}: expected one of {', '.join(PARTITIONERS)}"
            )
        for name in ("alpha", "distance_factor", "prompt_lr", "head_lr", "warmup_lr"):
            if not getattr(self, name) > 0:
                raise LmeraserError(f"invalid {_option(name)}={getattr(self, name)!r}: expected > 0")
        if not self.round_timeout >= 0:
            raise LmeraserError(f"invalid round-timeout={self.round_timeout!r}: expected seconds >= 0")
        if self.classes and len(set(self.class_names)) != len(self.class_names):
            raise LmeraserError(f"invalid classes={self.classes!r}: class names must be distinct")
        if not self.routing_temperature >= 0:
            raise LmeraserError(f"invalid routing-temperature={self.routing_temperature!r}: expected >= 0")
        for name, upper in (("test_fraction", 1.0), ("max_cluster_fraction", 1.0 + 1e-12)):
            value = getattr(self, name)
            if not 0.0 < value < upper:
                raise LmeraserError(f"invalid {_option(name)}={value!r}: expected a fraction in (0, 1)")
        if 0 < self.input_size and 2 * self.prompt_width >= self.input_size:
            raise LmeraserError(
                f"invalid prompt-width={self.prompt_width}: the border must leave part of the "
                f"{self.input_size}px input uncovered; use a width below {self.input_size // 2}"
            )
        unknown = [name for name in self.baseline_names if name not in BASELINES]
        if unknown:
            raise LmeraserError(
                f"invalid baselines={self.baselines!r}: unknown {unknown}; "
                f"expected a comma-separated subset of {', '.join(BASELINES)}"
            )

    # ------------------------------------------------------------------ views

    @property
    def baseline_names(self) -> list[str]:
        """Baselines to run, in the order given."""
        return [name.strip() for name in self.baselines.split(",") if name.strip()]

    @property
    def class_names(self) -> list[str]:
        """Class names given by ``classes``, in order (empty when the data set names them)."""
        return [name.strip() for name in self.classes.split(",") if name.strip()]

    def replace(self, **changes: Any) -> JobConfig:
        """Return a copy with ``changes`` applied and validated."""
        return dataclasses.replace(self, **changes)

    def to_mapping(self) -> dict[str, Any]:
        """Return the configuration with hyphenated keys, as Flower's run config spells them."""
        return {_option(field.name): getattr(self, field.name) for field in dataclasses.fields(self)}

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> JobConfig:
        """Build a configuration from hyphenated or underscored keys; unknown keys are errors."""
        names = {field.name: field for field in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for key, value in mapping.items():
            name = key.replace("-", "_")
            if name not in names:
                raise LmeraserError(
                    f"unknown configuration key {key!r}; valid keys: "
                    f"{', '.join(sorted(_option(n) for n in names))}"
                )
            values[name] = _coerce(names[name], value)
        return cls(**values)

    def training_fingerprint(self) -> str:
        """Hash of every field that changes trained tensors (data, backbone, training)."""
        ignored = {"revoke", "verify", "baselines", "state_dir", "round_timeout"}
        payload = {k: v for k, v in dataclasses.asdict(self).items() if k not in ignored}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _option(name: str) -> str:
    return name.replace("_", "-")


def _coerce(field: dataclasses.Field, value: Any) -> Any:
    """Convert run-config values (TOML or command-line strings) to the field's type."""
    kind = field.type if isinstance(field.type, type) else {"int": int, "float": float,
                                                            "bool": bool, "str": str}[field.type]
    if kind is bool:
        if isinstance(value, str):
            lowered = value.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise LmeraserError(f"invalid {_option(field.name)}={value!r}: expected true or false")
        return bool(value)
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    try:
        return kind(value)
    except (TypeError, ValueError) as error:
        raise LmeraserError(
            f"invalid {_option(field.name)}={value!r}: expected {kind.__name__}"
        ) from error
