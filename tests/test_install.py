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
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {"PYTHONPATH": str(site), "PATH": str(Path(sys.executable).parent), "HOME": str(tmp_path)}
    code = "import vortex, sys; print(vortex.__file__); sys.exit(__import__('vortex.cli.main').cli.main.main())"
    proc = subprocess.run(
        [sys.executable, "-c", code, "train", "--output_dir", "run", "--epochs", "1", "--max_train_samples", "128"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines()[0].startswith(str(site))  # the wheel's vortex, not the repository's
    card = (work / "run" / "README.md").read_text()
    assert "A `cnn` image classifier for **digits**" in card
