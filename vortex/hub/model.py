"""`vortex.VortexModel`: a checkpoint's whole model, edge half or cloud half as a Hub-native object.

    edge = vortex.VortexModel.from_pretrained("org/name", part="edge")  # edge/ and vortex.json only
    z = edge(images)                                                    # edge.config.payload_bytes per image
    edge.save_pretrained("edge_model")                                  # the half's layout, loadable again
    edge.push_to_hub("org/name-edge", token=...)

It follows huggingface_hub's `PyTorchModelHubMixin` (the same three methods; `token`, `revision`,
`cache_dir`, `local_files_only`, `force_download`) without inheriting it: the mixin builds the model
from config.json's values and falls back to pickle files, while vortex loads through its own checks
(safetensors only, hashes, architectures built in or trusted by name: vortex/hub/repo.py).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vortex.files import write_json
from vortex.hub.checkpoint import save_checkpoint, write_half
from vortex.hub.layout import CONFIG, META, META_CONFIG, gpz_index, model_description, read_meta
from vortex.hub.repo import commit_to_hub, load_pretrained, publish
from vortex.models import ModelSpec


@dataclass(frozen=True)
class Verdict:
    """The privacy verdict of a `--target-gpz K` run: did an inversion attack fail at split K?"""

    target: int
    protected: bool  # split K resists the attack (attack MSE >= min_mse)
    reached: bool  # and the rho transition is at K
    attack: str | None
    attack_mse: float | None  # at split K
    min_mse: float | None

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> Verdict | None:
        """The verdict vortex.json records under `privacy`; None when no verdict attack ran."""
        privacy = meta.get("privacy") or {}
        if "splits" not in privacy:
            return None
        criterion = privacy.get("criterion") or {}
        mse = next((s.get("mse") for s in privacy["splits"] if s.get("index") == privacy["target"]), None)
        return cls(
            privacy["target"],
            bool(privacy.get("protected")),
            bool(privacy.get("reached")),
            criterion.get("attack"),
            mse,
            criterion.get("min_mse"),
        )


@dataclass(frozen=True)
class VortexConfig:
    """What a VortexModel is: the part, the model it belongs to, where it is cut and what vortex.json says."""

    part: str  # "full", "edge" or "cloud"
    model: ModelSpec
    split_points: list[str]
    input_shape: list[int]  # of one image
    split_index: int | None  # the split the halves are cut at (a whole model: its stored halves', if any)
    split_name: str | None
    z_shape: list[int] | None
    payload_bytes: int | None  # float32 z of one image, what the edge sends
    gpz: int | None  # the predicted GPZ, where vortex.json records it
    privacy: Verdict | None  # where vortex.json records a verdict attack

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class VortexModel(nn.Module):
    """A vortex model or half, loaded verified from the Hub or a directory; `forward` runs it."""

    def __init__(
        self,
        module: nn.Module,
        config: VortexConfig,
        *,
        split: dict[str, Any] | None = None,
        description: dict[str, Any] | None = None,
        meta: dict[str, Any] | None = None,
        model_sha256: str | None = None,
    ):
        super().__init__()
        self.module = module
        self.config = config
        self._split, self._description, self._meta, self._model_sha256 = split, description, meta or {}, model_sha256

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)

    @classmethod
    def from_pretrained(
        cls,
        repo_or_dir: str | Path,
        part: str = "full",
        *,
        split: int | str | None = None,
        revision: str | None = None,
        token: str | None = None,
        local_files_only: bool = False,
        force_download: bool = False,
        cache_dir: str | Path | None = None,
        trust_code: Sequence[str] = (),
    ) -> VortexModel:
        """Load `part` of a checkpoint ('full', 'edge' or 'cloud'; `split`: cut the full weights elsewhere)
        from a Hub repo `org/name` or a directory, in eval mode: as `vortex.from_pretrained`, with vortex.json."""
        loaded = load_pretrained(
            repo_or_dir,
            part,
            split=split,
            revision=revision,
            token=token,
            local_files_only=local_files_only,
            force_download=force_download,
            cache_dir=cache_dir,
            trust_code=trust_code,
            with_meta=True,
        )
        meta, spec, cut = read_meta(loaded.path), loaded.spec, loaded.split or {}
        config = VortexConfig(
            part=part,
            model=spec,
            split_points=loaded.split_points,
            input_shape=[spec.in_channels, spec.image_size, spec.image_size],
            split_index=cut.get("index"),
            split_name=cut.get("name"),
            z_shape=cut.get("z_shape"),
            payload_bytes=cut.get("z_bytes"),
            gpz=gpz_index(meta),
            privacy=Verdict.from_meta(meta),
        )
        model = cls(
            loaded.module,
            config,
            split=loaded.split,
            description=model_description(loaded.path),
            meta=meta,
            model_sha256=loaded.model_sha256,
        )
        return model.eval()

    def save_pretrained(self, save_directory: str | Path) -> Path:
        """Write a directory `from_pretrained` loads: a whole checkpoint (halves at `config.split_index`, else
        the GPZ), or for a half its layout (config.json, PART/config.json, PART/model.safetensors, vortex.json)."""
        out, part, spec = Path(save_directory), self.config.part, self.config.model
        if part == "full":
            names = self.config.split_points
            return save_checkpoint(out, self.module, spec, names, meta=self._meta, split=self.config.split_index)
        _, digest = write_half(out, part, self.module, spec, self.config.split_points, self._split, self._model_sha256)
        write_json(out / CONFIG, {**self._description, "halves_sha256": {part: digest, "model": self._model_sha256}})
        if self._meta:  # GPZ, privacy verdict, profile; the half's own config records its split
            write_json(out / META, {k: v for k, v in self._meta.items() if k not in (META_CONFIG, "halves")})
        return out

    def push_to_hub(
        self,
        repo_id: str,
        *,
        token: str | None = None,
        private: bool = False,
        revision: str | None = None,
        commit_message: str | None = None,
    ) -> str:
        """Save to a temporary directory and push it to `repo_id` in one commit (a whole model as
        `vortex publish` does, with its card); return the commit URL. The token is sent to the Hub only."""
        with tempfile.TemporaryDirectory(prefix="vortex-push-") as tmp:
            self.save_pretrained(tmp)
            if self.config.part == "full":
                return publish(
                    tmp, repo_id, token=token, private=private, revision=revision, commit_message=commit_message
                ).commit_url
            return _push_folder(Path(tmp), repo_id, self.config.part, token, private, revision, commit_message)


def _push_folder(
    folder: Path,
    repo_id: str,
    part: str,
    token: str | None,
    private: bool,
    revision: str | None,
    commit_message: str | None,
) -> str:
    """Upload a saved half in one commit (creating the repo and branch if needed), retrying transient failures."""
    files = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}
    return commit_to_hub(
        repo_id,
        files,
        token=token,
        private=private,
        revision=revision,
        message=commit_message or f"Upload the vortex {part} half",
        failure=f"push of the {part} half to Hub repo '{repo_id}' failed",
        advice="Push again.",
    )[1]
