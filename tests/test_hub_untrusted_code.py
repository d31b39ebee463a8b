"""A served repo that names code (a custom architecture, transformers' `auto_map`) never runs it.

The named module is importable here (on sys.path, and in the repo itself) and writes a marker file when it is
imported: the marker must not exist after vortex has been asked to load the repo.
"""

from __future__ import annotations

import json
import sys

import pytest
from hub_helpers import git_commit
from huggingface_hub import constants

from vortex.errors import HubError, VortexError
from vortex.hub.loading import load_model
from vortex.hub.repo import files_to_publish, from_pretrained

pytestmark = pytest.mark.hub

MODULE = "vortex_test_planted"
CODE = """
import pathlib

pathlib.Path({marker!r}).touch()


def build(*args, **kwargs):
    raise SystemExit("planted code ran")


class PlantedConfig:
    pass


class PlantedModel:
    pass
"""
AUTO_MAP = {"AutoConfig": f"{MODULE}.PlantedConfig", "AutoModelForImageClassification": f"{MODULE}.PlantedModel"}


@pytest.fixture(scope="module")
def planted(local_hub, tiny_checkpoint, tmp_path_factory):
    """Repos naming MODULE: a vortex checkpoint whose config.json names `MODULE:build` as its architecture,
    and a transformers ViT whose config.json maps its auto classes to MODULE (model_type vit, or one of MODULE's)."""
    from transformers import ViTConfig, ViTForImageClassification

    root = tmp_path_factory.mktemp("planted")
    marker = root / "ran"
    code = CODE.format(marker=str(marker)).encode()
    (root / "path").mkdir()
    (root / "path" / f"{MODULE}.py").write_bytes(code)

    files = {name: (tiny_checkpoint / name).read_bytes() for name in files_to_publish(tiny_checkpoint)}
    config = {**json.loads(files["config.json"]), "architecture": f"{MODULE}:build"}
    git_commit(local_hub.mirrors, "planted/arch", {**files, "config.json": json.dumps(config).encode()}, "names code")

    vit = ViTConfig(
        image_size=8,
        patch_size=4,
        num_channels=1,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        num_labels=10,
    )
    ViTForImageClassification(vit).save_pretrained(root / "vit")
    weights = (root / "vit" / "model.safetensors").read_bytes()
    base = json.loads((root / "vit" / "config.json").read_text())
    for name, model_type in (("planted/auto-map", "vit"), ("planted/auto-map-only", MODULE)):
        config = {**base, "model_type": model_type, "auto_map": AUTO_MAP}
        repo = {"config.json": json.dumps(config).encode(), "model.safetensors": weights, f"{MODULE}.py": code}
        git_commit(local_hub.mirrors, name, repo, "auto_map names code")
    return root


@pytest.fixture
def hub(local_hub, planted, monkeypatch, tmp_path):
    """huggingface_hub talks to the local Hub with an empty cache; MODULE is importable (and not imported)."""
    url = local_hub.url
    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))
    monkeypatch.syspath_prepend(str(planted / "path"))
    assert MODULE not in sys.modules
    yield planted
    assert MODULE not in sys.modules and not (planted / "ran").exists()


@pytest.mark.parametrize("part", ["edge", "full"])
def test_a_checkpoint_naming_a_module_is_refused_before_importing_it(hub, part):
    with pytest.raises(HubError) as err:
        from_pretrained("planted/arch", part=part)
    assert f"config.json names the architecture '{MODULE}:build', which is not built in" in str(err.value)
    assert "\n" not in str(err.value)


def test_auto_map_is_ignored_and_transformers_own_class_is_built(hub, tmp_path):
    loaded = load_model("planted/auto-map", num_classes=10, data_channels=1, data_size=8)
    assert type(loaded.model).__name__ == "ViTForImageClassification"
    assert type(loaded.model).__module__.startswith("transformers.")
    downloaded = {p.name for p in (tmp_path / "hf_cache").rglob("*") if p.is_file() and "snapshots" in p.parts}
    assert downloaded == {"config.json", "model.safetensors"}  # the repo's code was not even downloaded


def test_auto_map_without_a_transformers_model_type_is_refused(hub):
    with pytest.raises(VortexError) as err:
        load_model("planted/auto-map-only", num_classes=10, data_channels=1, data_size=8)
    message = str(err.value)
    assert "describes no transformers model vortex can build" in message and f"'{MODULE}'" in message
    assert "never code from a repo" in message and "\n" not in message
