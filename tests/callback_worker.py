"""Run by tests/test_callback.py (under torchrun): a wrapped torchvision model trained by the
Trainer with VortexCallback and a target; rank 0 writes the log history next to the model."""

import sys

import numpy as np
import torch
import torchvision
from transformers import Trainer, TrainingArguments

from vortex.data import adapt_images, load_data
from vortex.files import write_json
from vortex.training.callback import ClassifierForTrainer, VortexCallback


def collate(rows: list[dict]) -> dict[str, torch.Tensor]:
    """Canonical digits rows -> 3-channel 16x16 pixel_values in [0, 1] and labels."""
    pixels = torch.tensor(np.stack([np.asarray(r["pixels"], dtype=np.uint8) for r in rows]))
    return {"pixel_values": adapt_images(pixels, 16, 3), "labels": torch.tensor([r["label"] for r in rows])}


def tiny_resnet() -> ClassifierForTrainer:
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10)
    net.maxpool = torch.nn.Identity()
    return ClassifierForTrainer(net)


if __name__ == "__main__":
    out = sys.argv[1]
    data = load_data("digits")
    args = TrainingArguments(
        output_dir=out,
        max_steps=4,
        per_device_train_batch_size=16,
        learning_rate=1e-3,
        save_strategy="no",
        report_to="none",
        remove_unused_columns=False,
        disable_tqdm=True,
        seed=0,
        use_cpu=True,
    )
    trainer = Trainer(model=tiny_resnet(), args=args, train_dataset=data["train"], data_collator=collate)
    VortexCallback(data["test"], target_gpz=3, every=2, image_size=16, channels=3, max_samples=200).attach(trainer)
    trainer.train()
    trainer.save_model(out)
    if trainer.is_world_process_zero():
        write_json(f"{out}/log_history.json", trainer.state.log_history)
