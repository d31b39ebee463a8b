"""vortex as users install it: a wheel, used from outside the repository."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(ROOT), "-w", str(out)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return next(out.glob("vortex_split-*.whl"))


def test_the_wheel_ships_recipes_and_card_templates(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {Path(n).name for n in names if n.startswith(("vortex/recipes/", "vortex/hub_cards/"))}
    expected = {p.name for p in (ROOT / "recipes").glob("*.yaml")} | {"model_card.md.jinja"}
    assert shipped == expected


def test_train_and_card_from_an_installed_wheel_outside_the_repo(wheel, tmp_path):
    """A fresh virtual environment (its dependencies borrowed from this one, vortex itself not), the wheel
    installed with pip, and the `vortex` command run from another directory."""
    env_dir = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True, capture_output=True, timeout=300)
    python = env_dir / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    deps = [p for p in sys.path if p.endswith("site-packages")]  # torch, transformers, ... (not vortex: editable)
    (Path(site) / "borrowed_dependencies.pth").write_text("\n".join(deps) + "\n")
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {"PATH": f"{env_dir / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path)}
    where = subprocess.run(
        [str(python), "-c", "import vortex; print(vortex.__file__)"], cwd=work, env=env, capture_output=True, text=True
    )
    assert where.stdout.startswith(site), where.stdout + where.stderr  # the wheel's vortex, not the repository's
    proc = subprocess.run(
        ["vortex", "train", "--output_dir", "run", "--num_train_epochs", "1", "--max_train_samples", "128"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "checkpoint written to run" in proc.stdout
    card = (work / "run" / "README.md").read_text()
    assert "A `cnn` image classifier for **digits**" in card
