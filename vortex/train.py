"""Train a vision model with Hugging Face Accelerate and write a vortex checkpoint.

    accelerate launch vortex/train.py --recipe recipes/cnn_digits.yaml --output_dir runs/cnn
    vortex train --recipe recipes/cnn_digits.yaml --output_dir runs/cnn        # the same program
    ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 vortex/train.py ...       # 2 CPU processes

The checkpoint holds model.safetensors, config.json, vortex.json (splits, final profile) and
profile.json / profile.png. Training state goes to OUTPUT_DIR/state/ every epoch (or every
--checkpointing_steps steps); --resume_from_checkpoint latest continues from the newest one.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import the package, not its sibling modules
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import math
import re

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed

from vortex.checkpoint import save_checkpoint
from vortex.data import data_shape, load_data, make_loader, num_classes, take
from vortex.errors import VortexError
from vortex.files import write_json
from vortex.labels import soft_target_loss
from vortex.loading import resolve_spec
from vortex.models import build_model, split_model
from vortex.plots import plot_profile
from vortex.probe import profile_model
from vortex.recipe import load_recipe
from vortex.report import profile_table


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vortex train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", help="YAML recipe from recipes/ (default: recipes/cnn_digits.yaml)")
    p.add_argument("--output_dir", "--output-dir", required=True, help="where the checkpoint is written")
    p.add_argument("--model", help="override the recipe's model (built-in name or package.module:function)")
    p.add_argument("--dataset", help="override the recipe's data set")
    p.add_argument("--epochs", type=int, help="override the recipe's number of epochs")
    p.add_argument("--seed", type=int, help="override the recipe's seed")
    p.add_argument("--lr", type=float, help="override the optimiser's learning rate")
    p.add_argument("--label_smoothing", "--label-smoothing", type=float,
                   help="smoothing alpha in (-inf, 1): 1-alpha on the true class; negative is allowed")
    p.add_argument("--max_train_samples", "--max-train-samples", type=int, help="train on the first N samples")
    p.add_argument("--checkpointing_steps", "--checkpointing-steps", default="epoch",
                   help="save the training state every N steps, or 'epoch' (default)")
    p.add_argument("--resume_from_checkpoint", "--resume-from-checkpoint",
                   help="a state directory under OUTPUT_DIR/state, or 'latest'")
    p.add_argument("--with_tracking", "--with-tracking", action="store_true",
                   help="log loss and accuracy through Accelerator(log_with=...)")
    p.add_argument("--report_to", "--report-to", default="tensorboard",
                   help="tracker for --with_tracking (tensorboard works offline; 'all' for every installed one)")
    return p


def make_optimizer(model: torch.nn.Module, cfg: dict) -> torch.optim.Optimizer:
    cfg = dict(cfg)
    name, lr, wd = cfg.pop("name", "adamw"), float(cfg.pop("lr", 1e-3)), float(cfg.pop("weight_decay", 0.0))
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, weight_decay=wd, momentum=float(cfg.get("momentum", 0.9)))
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)


def find_resume_dir(output_dir: Path, arg: str) -> Path:
    """The state directory to resume from: the newest under OUTPUT_DIR/state for 'latest'."""
    if arg != "latest":
        return Path(arg)
    candidates = sorted((output_dir / "state").glob("step_*"), key=lambda p: int(p.name.split("_")[1]))
    if not candidates:
        raise VortexError(f"--resume_from_checkpoint latest: no saved state under {output_dir / 'state'}")
    return candidates[-1]


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, accelerator: Accelerator) -> float:
    model.eval()
    correct = total = 0
    for x, y in loader:
        pred = accelerator.gather_for_metrics(model(x).argmax(1))
        y = accelerator.gather_for_metrics(y)
        correct += int((pred == y).sum())
        total += len(y)
    model.train()
    return correct / max(total, 1)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    recipe = load_recipe(args.recipe, model=args.model, dataset=args.dataset, epochs=args.epochs, seed=args.seed,
                         label_smoothing=args.label_smoothing, max_train_samples=args.max_train_samples)
    if args.lr is not None:
        recipe.optimizer["lr"] = args.lr
    output_dir = Path(args.output_dir)

    accelerator = Accelerator(
        log_with=args.report_to if args.with_tracking else None,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    set_seed(recipe.seed)

    # Data and model
    data = load_data(recipe.dataset)  # the fixed default split: every command sees the same test set
    train_ds, test_ds = take(data["train"], recipe.max_train_samples), data["test"]
    channels, height, _ = data_shape(train_ds)
    spec = resolve_spec(recipe.model, num_classes=num_classes(train_ds), data_channels=channels, data_size=height,
                        image_size=recipe.image_size, channels=recipe.channels, options=recipe.model_options)
    model = build_model(spec)
    size, chans = spec.image_size, spec.in_channels
    train_loader = make_loader(train_ds, recipe.batch_size, image_size=size, channels=chans, shuffle=True,
                               seed=recipe.seed)
    test_loader = make_loader(test_ds, 256, image_size=size, channels=chans)

    optimizer = make_optimizer(model, recipe.optimizer)
    total_steps = recipe.epochs * math.ceil(len(train_loader) / accelerator.num_processes)
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total_steps, 1))
                 if recipe.scheduler == "cosine" else torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0))
    model, optimizer, train_loader, test_loader, scheduler = accelerator.prepare(
        model, optimizer, train_loader, test_loader, scheduler)
    steps_per_epoch = len(train_loader)

    if args.with_tracking:
        accelerator.init_trackers("vortex", config={k: v for k, v in recipe.to_dict().items()
                                                    if isinstance(v, (int, float, str, bool))})

    # Resume: the state directory name says how many optimiser steps were done
    step = 0
    if args.resume_from_checkpoint:
        state_dir = find_resume_dir(output_dir, args.resume_from_checkpoint)
        accelerator.print(f"resuming from {state_dir}")
        accelerator.load_state(str(state_dir))
        match = re.fullmatch(r"step_(\d+)", state_dir.name)
        if not match:
            raise VortexError(f"cannot tell the step of state directory '{state_dir}': expected step_N")
        step = int(match.group(1))

    every = None if args.checkpointing_steps == "epoch" else int(args.checkpointing_steps)
    start_epoch, skip = divmod(step, steps_per_epoch)
    accuracy = 0.0
    model.train()
    for epoch in range(start_epoch, recipe.epochs):
        train_loader.set_epoch(epoch)
        loader = accelerator.skip_first_batches(train_loader, skip) if epoch == start_epoch and skip else train_loader
        running, batches = 0.0, 0
        for x, y in loader:
            loss = soft_target_loss(model(x), y, recipe.label_smoothing)
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            step += 1
            running, batches = running + loss.item(), batches + 1
            if every and step % every == 0:
                accelerator.save_state(str(output_dir / "state" / f"step_{step}"))
        accuracy = evaluate(model, test_loader, accelerator)
        accelerator.print(f"epoch {epoch + 1}/{recipe.epochs}: loss {running / max(batches, 1):.4f}, "
                          f"test accuracy {accuracy:.4f}")
        if args.with_tracking:
            accelerator.log({"train_loss": running / max(batches, 1), "test_accuracy": accuracy}, step=step)
        if every is None:
            accelerator.save_state(str(output_dir / "state" / f"step_{step}"))

    # Profile the trained model on held-out data (every process takes a shard), then save
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    sm = split_model(unwrapped, spec)
    probe = recipe.probe
    profile = profile_model(sm, test_ds, model_name=str(output_dir), dataset_name=recipe.dataset, image_size=size,
                            channels=chans, batch_size=int(probe.get("batch_size", 256)),
                            max_samples=probe.get("max_samples"))
    if accelerator.is_main_process:
        save_checkpoint(output_dir, unwrapped, spec, [s.name for s in sm.splits],
                        meta={"recipe": recipe.to_dict(), "test_accuracy": accuracy, "profile": profile,
                              "gpz": profile["gpz"]})
        write_json(output_dir / "profile.json", profile)
        plot_profile(profile, output_dir / "profile.png")
        accelerator.print(profile_table(profile))
        accelerator.print(f"checkpoint written to {output_dir}")
    accelerator.end_training()
    return 0


if __name__ == "__main__":
    from vortex.cli import run_guarded

    sys.exit(run_guarded(main))
