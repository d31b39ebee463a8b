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
from vortex.hub.layout import CARD, model_description, read_meta
from vortex.models import TRANSFORMERS
from vortex.records import AttackReport, ControllerSummary, Gpz, Profile
from vortex.report.tables import shape_text

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


def _attack_summary(directory: Path, meta: dict[str, Any]) -> AttackReport | None:
    if meta.get("attack"):
        return AttackReport.from_dict(meta["attack"])
    found = [directory / f for f in ATTACK_FILES if (directory / f).is_file()]
    return AttackReport.from_dict(json.loads(found[0].read_text())) if found else None


def _rows(
    profile: Profile | None, attack: AttackReport | None, halves: dict[str, Any] | None, split_names: list[str]
) -> list[dict[str, str]]:
    """One table row per split, every cell already formatted."""
    attacked = {s.index: s for s in attack.splits} if attack else {}
    profiled = {s.index: s for s in profile.splits} if profile else {}
    names = [s.name for s in profile.splits] if profile else split_names
    rows = []
    for k, name in enumerate(names, start=1):
        a, s = attacked.get(k), profiled.get(k)
        marks = []
        if profile:
            marks = ["predicted GPZ"] if k == profile.gpz.index else ["predicted zone"] if k in profile.gpz.zone else []
        marks += ["halves"] if halves and k == halves["index"] else []
        rows.append(
            {
                "index": str(k),
                "name": name,
                "shape": shape_text(s.shape) if s else "",
                "bytes": str(s.bytes) if s else "",
                "edge_params": str(s.edge_params) if s else "",
                "rho": _num(s and s.rho, 3),
                "rc2": _num(s and s.rc2),
                "mse": _num(a and a.mse),
                "psnr": _num(a and a.psnr),
                "ssim": _num(a and a.ssim, 3),
                "marks": ", ".join(marks),
            }
        )
    return rows


def eval_results(profile: Profile | None, attack: AttackReport | None, accuracy: float | None) -> list[EvalResult]:
    """model-index results: attack metrics per split (or rho per split without an attack), accuracy."""
    dataset = (profile and profile.dataset) or (attack and attack.dataset) or "unknown"
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
        for s in attack.splits:
            for metric in ("mse", "psnr", "ssim"):
                results.append(
                    EvalResult(
                        task_type="model-inversion",
                        task_name=f"Model inversion ({attack.attack})",
                        dataset_type=dataset,
                        dataset_name=dataset,
                        dataset_split="test",
                        metric_type=metric,
                        metric_value=round(float(getattr(s, metric)), 6),
                        metric_config=f"split_{s.index}",
                        metric_name=f"Inversion {metric.upper()} at split {s.index} ({s.name})",
                    )
                )
    elif profile:
        for s in profile.splits:
            results.append(
                EvalResult(
                    task_type="image-classification",
                    task_name="Image classification",
                    dataset_type=dataset,
                    dataset_name=dataset,
                    dataset_split="test",
                    metric_type="rho",
                    metric_value=round(float(s.rho), 6),
                    metric_config=f"split_{s.index}",
                    metric_name=f"rho (within-class share of variance) at split {s.index} ({s.name})",
                )
            )
    return results


def card_context(directory: str | Path, repo_id: str | None = None) -> dict[str, Any]:
    """Everything the template shows, read from the checkpoint directory."""
    directory = Path(directory)
    config = model_description(directory)
    if config.get("architecture") == TRANSFORMERS:  # its options are a whole transformers config: name its class
        classes = config["options"]["config"].get("architectures") or [TRANSFORMERS]
        config = {**config, "architecture": f"transformers {classes[0]}", "options": {}}
    meta = read_meta(directory)
    profile = Profile.from_dict(meta["profile"]) if meta.get("profile") else None
    attack, halves = _attack_summary(directory, meta), meta.get("halves")
    recipe = meta.get("recipe", {})
    dataset = (profile and profile.dataset) or recipe.get("dataset") or "unknown data"
    controller = ControllerSummary.from_dict(meta["controller"]) if isinstance(meta.get("controller"), dict) else None
    accuracy = meta.get("test_accuracy", profile and profile.accuracy)
    privacy = meta.get("privacy") if "splits" in (meta.get("privacy") or {}) else None  # None: no verdict attack ran
    gpz = profile.gpz if profile else Gpz.from_dict(meta["gpz"]) if meta.get("gpz") else None
    return {
        "repo_id": repo_id or "ORG/NAME",
        "title": repo_id or f"{config['architecture']} on {dataset}",
        "config": config,
        "dataset": dataset,
        "accuracy": _num(accuracy),
        "test_accuracy": accuracy,
        "profile": profile,
        "gpz": gpz,
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
        "controller_rounds": len(controller.history) if controller else 0,
        "levers": ", ".join(f"{k} = {v}" for k, v in controller.levers.items()) if controller else "",
        "rows": _rows(profile, attack, halves, config.get("split_points", [])),
        "plots": [p for p in PLOTS if (directory / p).is_file()],
        "vortex_version": config.get("vortex_version"),
        "base_model": meta.get("base_model"),
    }


def render_card(directory: str | Path, repo_id: str | None = None, license: str | None = None) -> ModelCard:
    """The model card of the checkpoint in `directory` (`repo_id` fills the loading snippets; `license`:
    by default the recipe's, else "other")."""
    ctx = card_context(directory, repo_id)
    results = eval_results(ctx["profile"], ctx["attack"], ctx["test_accuracy"])
    dataset = ctx["dataset"]
    hub_dataset = "/" in dataset and not Path(dataset).exists()  # a Hub dataset id, not a local path
    data = ModelCardData(
        model_name=(repo_id or ctx["title"]).split("/")[-1],
        library_name="vortex",
        license=license or ctx["recipe"].get("license") or "other",
        datasets=[dataset] if hub_dataset else None,
        pipeline_tag="image-classification",
        base_model=ctx["base_model"],
        tags=["vortex", "split-inference", "collaborative-inference", "model-inversion", "golden-partition-zone"],
        eval_results=results or None,
    )
    return ModelCard.from_template(data, template_path=str(TEMPLATE), **ctx)


def write_card(directory: str | Path, repo_id: str | None = None) -> Path:
    """Render the card and write it to DIR/README.md atomically."""
    text = str(render_card(directory, repo_id))
    return write_text(Path(directory) / CARD, text)
