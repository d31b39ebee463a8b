"""Fine-tune a small transformers vision model on digits with `transformers.Trainer` + VortexCallback.

    python examples/trainer_digits.py --output_dir runs/trainer_resnet                 # ResNet, profile only
    python examples/trainer_digits.py --target-gpz 3 --output_dir runs/trainer_resnet3  # land the GPZ at split 3
    python examples/trainer_digits.py --model vit --epochs 10 --lr 1e-3 --output_dir runs/trainer_vit
    ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 examples/trainer_digits.py ...    # 2 CPU processes

The models are built offline from small configs (ViT: 16x16 inputs, patch 4; ResNet and
ConvNeXt: 32x32). 300 training images are held out as the probe set; at each evaluation the
callback logs rc2/<split>, rho/<split> and gpz, and each checkpoint-N gets profile.json and
vortex.json. With --target-gpz K the callback's controller moves the GPZ to split K.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from transformers import (
    ConvNextConfig,
    ConvNextForImageClassification,
    ResNetConfig,
    ResNetForImageClassification,
    Trainer,
    TrainingArguments,
    ViTConfig,
    ViTForImageClassification,
)

from vortex import VortexCallback
from vortex.data import adapt_images, load_data
from vortex.records import Profile
from vortex.report.tables import profile_table

SIZES = {"vit": 16, "resnet": 32, "convnext": 32}


def build_model(name: str, num_labels: int) -> torch.nn.Module:
    """A small transformers image classifier for 1-channel inputs, from its config (no download)."""
    if name == "vit":
        return ViTForImageClassification(
            ViTConfig(
                image_size=16,
                patch_size=4,
                num_channels=1,
                hidden_size=64,
                num_hidden_layers=4,
                num_attention_heads=4,
                intermediate_size=128,
                num_labels=num_labels,
            )
        )
    if name == "resnet":
        return ResNetForImageClassification(
            ResNetConfig(
                num_channels=1,
                embedding_size=32,
                hidden_sizes=[32, 64, 128, 128],
                depths=[1, 1, 1, 1],
                layer_type="basic",
                downsample_in_first_stage=False,
                num_labels=num_labels,
            )
        )
    return ConvNextForImageClassification(
        ConvNextConfig(
            num_channels=1, patch_size=2, hidden_sizes=[32, 64, 128, 128], depths=[1, 1, 1, 1], num_labels=num_labels
        )
    )


def collator(size: int):
    """Canonical rows (`pixels` uint8, `label`) -> the Trainer's batch: pixel_values in [0, 1] and labels."""

    def collate(rows: list[dict]) -> dict[str, torch.Tensor]:
        pixels = torch.tensor(np.stack([np.asarray(r["pixels"], dtype=np.uint8) for r in rows]))
        return {"pixel_values": adapt_images(pixels, size, 1), "labels": torch.tensor([r["label"] for r in rows])}

    return collate


def accuracy(pred) -> dict[str, float]:
    return {"accuracy": float((pred.predictions.argmax(-1) == pred.label_ids).mean())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(SIZES), default="resnet")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--target-gpz", "--target_gpz", type=int, help="split K where the GPZ should start")
    p.add_argument("--epochs", type=float, default=6)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument(
        "--every", type=int, default=10, help="profile every N steps (with a target: the controller's interval)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--report_to", default="none", help="tensorboard, wandb, ... (as TrainingArguments)")
    args = p.parse_args()

    data = load_data("digits")
    parts = data["train"].train_test_split(test_size=300, seed=0, stratify_by_column="label")
    train_ds, probe_ds, test_ds = parts["train"], parts["test"], data["test"]
    size = SIZES[args.model]
    torch.manual_seed(args.seed)
    model = build_model(args.model, num_labels=10)

    training_args = TrainingArguments(
        output_dir=args.output_dir,
        num_train_epochs=args.epochs,
        learning_rate=args.lr,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=256,
        lr_scheduler_type="cosine",
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=2,
        logging_steps=10,
        seed=args.seed,
        remove_unused_columns=False,
        report_to=args.report_to,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_ds,
        eval_dataset=test_ds,
        data_collator=collator(size),
        compute_metrics=accuracy,
    )
    VortexCallback(
        probe_ds,
        target_gpz=args.target_gpz,
        every=args.every,
        image_size=size,
        dataset_name="digits (300 held-out training images)",
    ).attach(trainer)
    trainer.train()
    trainer.save_model(args.output_dir)

    test_accuracy = trainer.evaluate()["eval_accuracy"]  # every process takes part
    if trainer.is_world_process_zero():
        meta = json.loads((Path(args.output_dir) / "vortex.json").read_text())
        print(profile_table(Profile.from_dict(meta["profile"])))
        print(f"test accuracy {test_accuracy:.4f}")
        if args.target_gpz:
            print(
                f"target GPZ {meta['target_gpz']}: rho transition at {meta['reached_gpz']} "
                "(protection not verified: the callback runs no attack); "
                f"{len(meta['controller']['history'])} measurements, levers {meta['controller']['levers']}"
            )


if __name__ == "__main__":
    main()
