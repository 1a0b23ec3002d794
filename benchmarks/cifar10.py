"""CIFAR-10 benchmark: accuracy of routed prompts against baselines, and the cost of forgetting.

For each seed it trains, on the same Dirichlet-partitioned owners and by the same engine:
routed prompts (lmeraser), one global prompt, a random partition into as many clusters (SISA
style) and a linear probe on frozen features. It then computes the exact revocation cost of
every owner from the ledger (reclustering and reassignment without training) and confirms it
with real unlearning runs for a few owners. Owners are called in-process: the engine is the one
Flower drives, without the Simulation Engine's scheduling, which does not change any tensor.

Usage::

    python benchmarks/cifar10.py --data-dir ../shared/data --seeds 0,1,2

Writes ``bench-results/cifar10.json`` and ``bench-results/cifar10.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

import torch

from lmeraser.client.owners import backbone_for, datasets_for, simulated_workers
from lmeraser.server.baselines import linear_probe_accuracy
from lmeraser.server.evaluation import evaluate
from lmeraser.server.federation import Federation
from lmeraser.server.transport import InProcessTransport
from lmeraser.shared.config import JobConfig
from lmeraser.shared.environment import configure_offline_environment, ensure_allocator_tunables

logger = logging.getLogger("benchmark")


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True, help="folder holding cifar10-jpeg/")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default: 0,1,2)")
    parser.add_argument("--max-per-class", type=int, default=500, help="train and test images per class (default: 500)")
    parser.add_argument("--owners", type=int, default=20, help="data owners (default: 20)")
    parser.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration (default: 0.5)")
    parser.add_argument("--unlearn", type=int, default=3, help="owners to unlearn for real, first seed only (default: 3)")
    parser.add_argument("--out", default="bench-results", help="output folder (default: bench-results)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="any job option, for example --set input-size=64 (repeatable)")
    return parser.parse_args()


def revocation_costs(federation: Federation, model, owners: list[str]) -> list[dict]:
    """Exact cost of revoking each owner in turn, from the ledger (no training)."""
    rows = []
    for owner in owners:
        _, report = federation.revoke(model, owner, dry_run=True)
        rows.append({"owner": owner, "sample_epochs": report.cost.sample_epochs,
                     "full_sample_epochs": report.full_retrain.sample_epochs,
                     "clusters_retrained": len(report.retrained), "clusters_after": report.clusters_after,
                     "owners_contacted": report.cost.owners_contacted,
                     "full_owners": report.full_retrain.owners_contacted})
    return rows


def run_seed(job: JobConfig, unlearn: int) -> dict:
    """Train every method for one seed and measure revocation costs."""
    backbone = backbone_for(job)
    train, test = datasets_for(job)
    workers = simulated_workers(job)
    owners = sorted(workers)
    federation = Federation(InProcessTransport(workers), job, backbone, train.classes, progress=False)
    test_features = backbone.embed_images(test.images)
    result: dict = {"seed": job.seed, "accuracy": {}, "wall_seconds": {}}

    started = time.perf_counter()
    routed, routed_cost = federation.fit(owners, "routed")
    result["wall_seconds"]["routed"] = time.perf_counter() - started
    evaluation = evaluate(routed, backbone, test, test_features)
    result["accuracy"]["routed"] = evaluation["accuracy"]
    result["accuracy"]["routed_nearest"] = evaluate(routed, backbone, test, test_features, temperature=0.0)["accuracy"]
    result["label_coverage"] = evaluation["label_coverage"]
    result["cluster_sizes"] = sorted((routed.ledger.samples(c.key) for c in routed.served_clusters), reverse=True)
    result["owners_per_cluster"] = [len(routed.ledger.members(c.key)) for c in routed.served_clusters]
    logger.info("seed %d routed: %.4f, clusters %s", job.seed, evaluation["accuracy"], result["cluster_sizes"])

    for strategy in ("global", "random"):
        started = time.perf_counter()
        model, _ = federation.fit(owners, strategy, num_clusters=len(routed.served_clusters))
        result["wall_seconds"][strategy] = time.perf_counter() - started
        result["accuracy"][strategy] = evaluate(model, backbone, test, test_features)["accuracy"]
        logger.info("seed %d %s: %.4f", job.seed, strategy, result["accuracy"][strategy])
    result["accuracy"]["probe"] = linear_probe_accuracy(backbone, train, test, test_features)

    result["revocations"] = revocation_costs(federation, routed, owners)
    result["unlearning_runs"] = []
    for row in result["revocations"][:unlearn]:
        _, report = federation.revoke(routed, row["owner"], full_retrain_seconds=routed_cost.wall_seconds)
        result["unlearning_runs"].append({
            "owner": row["owner"], "sample_epochs": report.cost.sample_epochs,
            "ledger_sample_epochs": row["sample_epochs"], "wall_seconds": report.cost.wall_seconds,
            "full_retrain_wall_seconds": routed_cost.wall_seconds,
        })
        logger.info("seed %d unlearned %s: %d sample-epochs in %.1fs", job.seed, row["owner"],
                    report.cost.sample_epochs, report.cost.wall_seconds)
    return result


def _mean_spread(values: list[float]) -> str:
    mean = statistics.mean(values)
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * mean:.1f} ± {100 * spread:.1f}"


def write_report(results: list[dict], settings: dict, out: Path) -> str:
    """Write the JSON results and a Markdown table; return the Markdown."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "cifar10.json").write_text(json.dumps({"settings": settings, "seeds": results}, indent=1))
    names = {"routed": "routed prompts (lmeraser, soft routing)",
             "routed_nearest": "routed prompts, nearest prototype only", "global": "one global prompt",
             "random": "random partition (SISA)", "probe": "linear probe (pooled data)"}
    lines = [
        "# CIFAR-10 benchmark",
        "",
        f"Settings: {json.dumps(settings, sort_keys=True)}",
        "",
        f"| method | accuracy % (mean ± std over {len(results)} seeds) | per seed |",
        "|---|---|---|",
    ]
    for key, name in names.items():
        values = [r["accuracy"][key] for r in results]
        per_seed = ", ".join(f"{100 * v:.1f}" for v in values)
        lines.append(f"| {name} | {_mean_spread(values)} | {per_seed} |")

    lines += ["", "| seed | clusters | cluster sizes | owners per cluster | label coverage | "
              "cost ratio (mean full ÷ mean revocation) | median per-owner ratio |", "|---|---|---|---|---|---|---|"]
    for r in results:
        revocations = r["revocations"]
        full = sum(row["full_sample_epochs"] for row in revocations)
        cost = sum(row["sample_epochs"] for row in revocations)
        ratios = sorted(row["full_sample_epochs"] / max(row["sample_epochs"], 1) for row in revocations)
        lines.append(f"| {r['seed']} | {len(r['cluster_sizes'])} | {r['cluster_sizes']} | {r['owners_per_cluster']} | "
                     f"{100 * r['label_coverage']:.1f} % | {full / max(cost, 1):.2f} | "
                     f"{statistics.median(ratios):.2f} |")

    lines += ["", "Real unlearning runs (first seed):", "",
              "| owner | samples × epochs (run) | from ledger | wall s | full retrain wall s |", "|---|---|---|---|---|"]
    for run in results[0]["unlearning_runs"]:
        lines.append(f"| {run['owner']} | {run['sample_epochs']} | {run['ledger_sample_epochs']} | "
                     f"{run['wall_seconds']:.1f} | {run['full_retrain_wall_seconds']:.1f} |")
    markdown = "\n".join(lines) + "\n"
    (out / "cifar10.md").write_text(markdown)
    return markdown


def main() -> None:
    configure_offline_environment()
    ensure_allocator_tunables()
    arguments = parse_arguments()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("lmeraser").setLevel(logging.WARNING)
    torch.set_num_threads(2)

    overrides = dict(item.split("=", 1) for item in arguments.set)
    base = {"dataset": f"folder:{Path(arguments.data_dir) / 'cifar10-jpeg'}", "num-owners": arguments.owners,
            "partitioner": "dirichlet", "alpha": arguments.alpha, "max-per-class": arguments.max_per_class,
            "baselines": "", **overrides}
    started = time.perf_counter()
    results = []
    for seed in [int(s) for s in arguments.seeds.split(",")]:
        job = JobConfig.from_mapping({**base, "seed": seed})
        results.append(run_seed(job, arguments.unlearn if not results else 0))
    settings = {**JobConfig.from_mapping(base).to_mapping(), "seeds": arguments.seeds,
                "total_wall_seconds": round(time.perf_counter() - started)}
    settings.pop("seed")
    print(write_report(results, settings, Path(arguments.out)))


if __name__ == "__main__":
    main()
