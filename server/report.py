"""Plain-text tables of a job's results."""

from __future__ import annotations

from typing import Any

MODEL_NAMES = {"routed": "routed prompts (lmeraser)", "global": "one global prompt", "random": "random partition (SISA)",
               "probe": "linear probe (pooled data)"}


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def _ratio(full: float, partial: float) -> str:
    return f"{full / partial:.1f}x" if partial else "-"


def format_results(results: dict[str, Any]) -> str:
    """Return the results tables: accuracy per model, clusters, revocation cost and verdict."""
    config = results["config"]
    lines = [
        f"data {config['dataset']}: {results['train_samples']} train / {results['test_samples']} test images, "
        f"{results['owners']} owners ({config['partitioner']}), {results['input_size']} px input, "
        f"backbone {results['backbone']}",
        "",
        f"{'model':<30}{'accuracy':>10}{'clusters':>10}  cluster sizes (samples)",
    ]
    for name, model in results["models"].items():
        sizes = model.get("cluster_sizes")
        clusters = str(len(sizes)) if sizes else "-"
        sizes_text = "/".join(str(s) for s in sizes) if sizes else ""
        lines.append(f"{MODEL_NAMES.get(name, name):<30}{_percent(model['accuracy']):>10}{clusters:>10}  {sizes_text}")
        if "accuracy_nearest" in model:
            lines.append(f"{'  nearest prototype only':<30}{_percent(model['accuracy_nearest']):>10}")

    routed = results["models"]["routed"]
    lines += ["", f"routed clusters (label coverage of routed test inputs: {_percent(routed.get('label_coverage'))})",
              f"{'cluster':<14}{'members':>8}{'samples':>9}{'classes':>9}{'test in':>9}{'accuracy':>10}"]
    for cluster in routed["clusters"]:
        lines.append(f"{cluster['key'][:12]:<14}{cluster['members']:>8}{cluster['train_samples']:>9}"
                     f"{cluster['classes_seen']:>9}{cluster['test_routed']:>9}{_percent(cluster['accuracy']):>10}")

    revocation = results["revocation"]
    cost, full = revocation["cost"], revocation["full_retrain"]
    measured = "" if full.get("measured") else " (original training time)"
    lines += [
        "",
        f"revocation of {revocation['owner']}: {revocation['clusters_before']} clusters before, "
        f"{revocation['clusters_after']} after; kept {len(revocation['kept'])}, retrained "
        f"{len(revocation['retrained'])} (new or changed), dropped {len(revocation['dropped'])} "
        f"(no member left); accuracy after {_percent(revocation['accuracy_after'])}",
        f"{'':<22}{'revocation':>12}{'full retrain':>14}{'ratio':>8}",
        f"{'clusters trained':<22}{cost['clusters_trained']:>12}{full['clusters_trained']:>14}"
        f"{_ratio(full['clusters_trained'], cost['clusters_trained']):>8}",
        f"{'owners contacted':<22}{cost['owners_contacted']:>12}{full['owners_contacted']:>14}"
        f"{_ratio(full['owners_contacted'], cost['owners_contacted']):>8}",
        f"{'samples x epochs':<22}{cost['sample_epochs']:>12}{full['sample_epochs']:>14}"
        f"{_ratio(full['sample_epochs'], cost['sample_epochs']):>8}",
        f"{'wall time (s)':<22}{cost['wall_seconds']:>12.1f}{full['wall_seconds']:>14.1f}"
        f"{_ratio(full['wall_seconds'], cost['wall_seconds']):>8}{measured}",
    ]
    verify = results.get("verify")
    if verify is None:
        lines.append("exact: not checked (verify is off)")
    elif verify["exact"]:
        lines.append(f"exact: yes (every prototype, prompt, head and ledger entry equals a fresh run without "
                     f"{revocation['owner']})")
    else:
        lines.append(f"exact: NO ({len(verify['differences'])} differences: {'; '.join(verify['differences'][:5])})")
    return "\n".join(lines)
