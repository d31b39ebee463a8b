"""Model cards: README.md of a checkpoint, rendered from hub_cards/ with huggingface_hub's ModelCard.

The YAML header carries `model-index` results (`EvalResult`): inversion-attack MSE / PSNR / SSIM
per split when an attack summary exists, the profile's rho per split otherwise, and test accuracy.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from vortex.files import write_text
from vortex.hub.layout import CARD, CONFIG, read_meta

TEMPLATE = resources.files("vortex") / "hub_cards" / "model_card.md.jinja"  # the repository's hub_cards/
PLOTS = ("profile.png", "vortex.png", "attack.png", "attack/attack.png")
ATTACK_FILES = ("attack.json", "attack/attack.json")  # `vortex attack --out DIR` or `--out DIR/attack`


def _num(x: Any, digits: int = 4) -> str:
    return "" if x is None else f"{x:.{digits}g}"


def _smoothing(alpha: Any) -> str:
    """The label lever of a recipe in words (a number, or a schedule given as a list or mapping)."""
    if not isinstance(alpha, (int, float)):
        return f"label smoothing schedule {json.dumps(alpha)}"
    if alpha == 0:
        return "one-hot targets (label smoothing alpha = 0)"
    kind = "negative smoothing: the true class gets more than 1" if alpha < 0 else "the class clouds keep tightening"
    return f"label smoothing alpha = {alpha} ({kind})"


def _attack_summary(directory: Path, meta: dict[str, Any]) -> dict[str, Any] | None:
    if meta.get("attack"):
        return meta["attack"]
    found = [directory / f for f in ATTACK_FILES if (directory / f).is_file()]
    return json.loads(found[0].read_text()) if found else None


def _rows(
    profile: dict[str, Any], attack: dict[str, Any] | None, halves: dict[str, Any] | None, split_names: list[str]
) -> list[dict[str, str]]:
    """One table row per split, every cell already formatted."""
    gpz = profile.get("gpz", {})
    by_index = {s["index"]: s for s in (attack or {}).get("splits", [])}
    splits = profile.get("splits") or [{"index": i, "name": n} for i, n in enumerate(split_names, start=1)]
    rows = []
    for s in splits:
        a, k = by_index.get(s["index"], {}), s["index"]
        marks = ["predicted GPZ"] if k == gpz.get("index") else ["predicted zone"] if k in gpz.get("zone", []) else []
        marks += ["halves"] if halves and k == halves["index"] else []
        rows.append(
            {
                "index": str(k),
                "name": s["name"],
                "shape": "x".join(map(str, s.get("shape", []))),
                "bytes": str(s.get("bytes", "")),
                "edge_params": str(s.get("edge_params", "")),
                "rho": _num(s.get("rho"), 3),
                "rc2": _num(s.get("rc2")),
                "mse": _num(a.get("mse")),
                "psnr": _num(a.get("psnr")),
                "ssim": _num(a.get("ssim"), 3),
                "marks": ", ".join(marks),
            }
        )
    return rows


def eval_results(profile: dict[str, Any], attack: dict[str, Any] | None, accuracy: float | None) -> list[EvalResult]:
    """model-index results: attack metrics per split (or rho per split without an attack), accuracy."""
    dataset = profile.get("dataset") or (attack or {}).get("dataset") or "unknown"
    results = []
    if accuracy is not None:
        results.append(
            EvalResult(
                task_type="image-classification",
                task_name="Image classification",
                dataset_type=dataset,
                dataset_name=dataset,
                dataset_split="test",
                metric_type="accuracy",
                metric_value=round(float(accuracy), 6),
                metric_name="Test accuracy",
            )
        )
    if attack:
        for s in attack["splits"]:
            for metric in ("mse", "psnr", "ssim"):
                if s.get(metric) is not None:
                    results.append(
                        EvalResult(
                            task_type="model-inversion",
                            task_name=f"Model inversion ({attack.get('attack', 'attack')})",
                            dataset_type=dataset,
                            dataset_name=dataset,
                            dataset_split="test",
                            metric_type=metric,
                            metric_value=round(float(s[metric]), 6),
                            metric_config=f"split_{s['index']}",
                            metric_name=f"Inversion {metric.upper()} at split {s['index']} ({s['name']})",
                        )
                    )
    else:
        for s in profile.get("splits", []):
            results.append(
                EvalResult(
                    task_type="image-classification",
                    task_name="Image classification",
                    dataset_type=dataset,
                    dataset_name=dataset,
                    dataset_split="test",
                    metric_type="rho",
                    metric_value=round(float(s["rho"]), 6),
                    metric_config=f"split_{s['index']}",
                    metric_name=f"rho (within-class share of variance) at split {s['index']} ({s['name']})",
                )
            )
    return results


def card_context(directory: str | Path, repo_id: str | None = None) -> dict[str, Any]:
    """Everything the template shows, read from the checkpoint directory."""
    directory = Path(directory)
    config = json.loads((directory / CONFIG).read_text())
    meta = read_meta(directory)
    profile, attack, halves = meta.get("profile", {}), _attack_summary(directory, meta), meta.get("halves")
    recipe = meta.get("recipe", {})
    dataset = profile.get("dataset") or recipe.get("dataset") or "unknown data"
    controller = meta.get("controller") if isinstance(meta.get("controller"), dict) else {}
    levers = controller.get("levers") or {}
    accuracy = meta.get("test_accuracy", profile.get("accuracy"))
    privacy = meta.get("privacy") if "splits" in (meta.get("privacy") or {}) else None  # None: no verdict attack ran
    return {
        "repo_id": repo_id or "ORG/NAME",
        "title": repo_id or f"{config['architecture']} on {dataset}",
        "config": config,
        "dataset": dataset,
        "accuracy": _num(accuracy),
        "test_accuracy": accuracy,
        "profile": profile,
        "gpz": profile.get("gpz") or meta.get("gpz"),
        "attack": attack,
        "halves": halves,
        "recipe": recipe,
        "label_lever": _smoothing(recipe.get("label_smoothing", 0.0)),
        "target": meta.get("target_gpz"),
        "reached": meta.get("reached_gpz"),
        "target_reached": meta.get("target_reached"),
        "privacy": privacy,
        "privacy_mse": _num(next((s["mse"] for s in privacy["splits"] if s["index"] == privacy["target"]), None))
        if privacy
        else "",
        "controller_rounds": len(controller.get("history", [])),
        "levers": ", ".join(f"{k} = {v}" for k, v in levers.items() if not isinstance(v, (dict, list))),
        "rows": _rows(profile, attack, halves, config.get("split_points", [])),
        "plots": [p for p in PLOTS if (directory / p).is_file()],
        "vortex_version": config.get("vortex_version"),
    }


def render_card(directory: str | Path, repo_id: str | None = None) -> ModelCard:
    """The model card of the checkpoint in `directory` (`repo_id` fills the loading snippets)."""
    ctx = card_context(directory, repo_id)
    results = eval_results(ctx["profile"], ctx["attack"], ctx["test_accuracy"])
    dataset = ctx["dataset"]
    hub_dataset = "/" in dataset and not Path(dataset).exists()  # a Hub dataset id, not a local path
    data = ModelCardData(
        model_name=(repo_id or ctx["title"]).split("/")[-1],
        library_name="vortex",
        license=ctx["recipe"].get("license") or "other",
        datasets=[dataset] if hub_dataset else None,
        pipeline_tag="image-classification",
        tags=["vortex", "split-inference", "collaborative-inference", "model-inversion", "golden-partition-zone"],
        eval_results=results or None,
    )
    return ModelCard.from_template(data, template_path=str(TEMPLATE), **ctx)


def write_card(directory: str | Path, repo_id: str | None = None) -> Path:
    """Render the card and write it to DIR/README.md atomically."""
    text = str(render_card(directory, repo_id))
    return write_text(Path(directory) / CARD, text)
