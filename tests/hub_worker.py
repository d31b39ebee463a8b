"""Run by tests/test_hub_download.py in a fresh process, so HF_ENDPOINT / HF_HUB_OFFLINE apply as for a user.

    python tests/hub_worker.py PLAN.json OUT_DIR

Each step of the plan loads a model (`vortex.from_pretrained(**kwargs)`, or `load_model` for
`"call": "load_model"`) and runs it on one of the saved inputs; OUT_DIR gets outputs.safetensors
and results.json (per step: ok, or the error's class and message).
"""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

import vortex
from vortex.errors import VortexError
from vortex.hub.loading import load_model


def run(plan: dict, out: Path) -> None:
    inputs = load_file(plan["inputs"])
    results, outputs = {}, {}
    for step in plan["steps"]:
        step = dict(step)
        name, feed, call = step.pop("name"), step.pop("input", "x"), step.pop("call", "from_pretrained")
        try:
            if call == "load_model":
                module = load_model(step["repo"], num_classes=10, data_channels=1, data_size=8).model.eval()
            else:
                module = vortex.from_pretrained(**step)
        except VortexError as exc:
            results[name] = {"error": type(exc).__name__, "message": str(exc)}
            continue
        with torch.no_grad():
            outputs[name] = module(inputs[feed]).contiguous()
        results[name] = {"ok": True, "type": type(module).__name__}
    out.mkdir(parents=True, exist_ok=True)
    save_file(outputs, str(out / "outputs.safetensors"))
    (out / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    run(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2]))
