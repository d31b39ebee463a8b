"""`vortex train`'s settings: dataclass fields defined once, the parser generated from them by HfArgumentParser;
the YAML recipe gives the values, the HF flags (and the older names, as aliases) override them."""

import dataclasses

import pytest

from vortex.errors import VortexError
from vortex.train import TrainConfig, parse_config
from vortex.training.config import RECIPE_ARGUMENTS, Recipe, load_recipe, recipe_overrides
from vortex.training.loop import ARGUMENTS, build_parser

HF_FLAGS = (  # run_image_classification_no_trainer.py's names
    "--per_device_train_batch_size",
    "--learning_rate",
    "--num_train_epochs",
    "--gradient_accumulation_steps",
    "--lr_scheduler_type",
    "--num_warmup_steps",
    "--dataset_name",
    "--dataset_config_name",
    "--image_column_name",
    "--label_column_name",
    "--max_train_samples",
    "--output_dir",
    "--seed",
    "--checkpointing_steps",
    "--resume_from_checkpoint",
    "--with_tracking",
    "--report_to",
    "--push_to_hub",
    "--hub_model_id",
)
OLD_NAMES = ("--epochs", "--batch_size", "--lr", "--dataset", "--target-gpz", "--output-dir", "--trust-code")


def test_the_yaml_gives_the_values_and_the_command_line_wins(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(
        "model: cnn\ndataset: digits\nepochs: 5\nbatch_size: 16\nscheduler: linear\nnum_warmup_steps: 3\n"
        "optimizer: {name: sgd, lr: 0.01, momentum: 0.8}\n"
    )
    given = parse_config(["--recipe", str(path), "--num_train_epochs", "2", "--batch_size", "8", "--lr", "0.5"])
    recipe = load_recipe(given.recipe, **recipe_overrides(given))
    assert (recipe.epochs, recipe.batch_size) == (2, 8)  # an HF flag, an older name as an alias
    assert recipe.optimizer == {"name": "sgd", "lr": 0.5, "momentum": 0.8}  # --lr sets the optimiser's lr only
    assert (recipe.scheduler, recipe.num_warmup_steps, recipe.model) == ("linear", 3, "cnn")  # from the YAML
    untouched = load_recipe(path, **recipe_overrides(parse_config(["--recipe", str(path)])))
    assert (untouched.epochs, untouched.batch_size, untouched.optimizer["lr"]) == (5, 16, 0.01)
    with pytest.raises(VortexError, match="scheduler must be one of .*, not 'steep'"):  # checked as a YAML value
        load_recipe(path, **recipe_overrides(parse_config(["--lr_scheduler_type", "steep"])))
    with pytest.raises(VortexError, match="epochs must be at least 1, got 0"):
        load_recipe(path, **recipe_overrides(parse_config(["--epochs", "0"])))


def test_every_name_of_an_option_sets_its_field():
    parser = build_parser()
    values = {int: "7", float: "0.25", str: "x"}
    checked = 0
    for action in parser._actions:
        dest = action.dest
        if dest == "help" or action.nargs == "?" or action.choices:
            continue
        kind = type(action.type("7")) if action.type not in (None, str) else str
        for option in action.option_strings:
            config = parse_config([option, values[kind]])
            got = getattr(config, dest)
            assert got == (["x"] if dest == "trust_code" else action.type(values[kind])), option
            checked += 1
    assert checked > 40
    assert parse_config(["--with_tracking", "--push-to-hub"]).with_tracking is True
    assert parse_config(["--privacy-attack", "enhanced"]).privacy_attack == "enhanced"
    with pytest.raises(SystemExit) as exit_:  # argparse's one line and status 2, not a traceback
        parse_config(["--epochz", "3"])
    assert exit_.value.code == 2


def test_the_fields_are_defined_once():
    config_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    parsed = {a.dest for a in build_parser()._actions if a.dest != "help"}
    assert parsed == config_fields  # every setting is an option, every option a setting
    assert config_fields == {f.name for cls in ARGUMENTS for f in dataclasses.fields(cls)}
    recipe_keys = {f.name for f in dataclasses.fields(Recipe)} | {"lr"}  # lr: the optimizer section's
    for cls in RECIPE_ARGUMENTS:
        for f in dataclasses.fields(cls):
            assert f.metadata["recipe"] in recipe_keys, f.name
    assert set(recipe_overrides(TrainConfig())) <= recipe_keys
    assert all(v is None for v in recipe_overrides(TrainConfig()).values())  # nothing overridden by default


def test_help_lists_the_hf_names_and_the_older_ones():
    text = build_parser().format_help()
    for flag in HF_FLAGS + OLD_NAMES:
        assert f"{flag} " in text or f"{flag}," in text, flag
    for group in ("model:", "data:", "optimisation:", "GPZ target:"):
        assert f"\n{group}\n" in text
    assert "--holdout" not in text  # an internal switch


def test_one_settings_file_is_read_the_hf_scripts_way(tmp_path):
    """`vortex train settings.yaml` (or .json): HfArgumentParser.parse_yaml_file over the same fields."""
    yaml_file = tmp_path / "settings.yaml"
    yaml_file.write_text(
        "recipe: cnn_digits\ntarget_gpz: 3\noutput_dir: runs/k3\nnum_train_epochs: 2\nlearning_rate: 0.001\n"
    )
    config = parse_config([str(yaml_file)])
    assert (config.recipe, config.target_gpz, config.output_dir) == ("cnn_digits", 3, "runs/k3")
    assert (config.num_train_epochs, config.learning_rate, config.max_accuracy_drop) == (2, 0.001, 0.02)
    assert load_recipe(config.recipe, **recipe_overrides(config)).optimizer["lr"] == 0.001
    json_file = tmp_path / "settings.json"
    json_file.write_text('{"target_gpz": 4, "per_device_train_batch_size": 16}')
    config = parse_config([str(json_file)])
    assert (config.target_gpz, config.per_device_train_batch_size, config.output_dir) == (4, 16, None)


def test_a_settings_file_that_is_a_recipe_or_no_mapping_is_one_line(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model: cnn\nepochs: 2\nbatch_size: 32\n")
    with pytest.raises(VortexError) as info:
        parse_config([str(recipe)])
    assert str(info.value) == (
        f"settings file '{recipe}' has keys that are no `vortex train` setting: ['batch_size', 'epochs'] (see "
        "`vortex train --help` for the names); a recipe file goes in --recipe or under `recipe:`"
    )
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    with pytest.raises(VortexError, match=r"^settings file '.*list.yaml' must be a mapping of setting names"):
        parse_config([str(listed)])
    with pytest.raises(VortexError, match=r"^settings file 'missing.yaml' does not exist$"):
        parse_config(["missing.yaml"])
    assert parse_config(["--recipe", str(recipe)]).recipe == str(recipe)  # with a flag, the file is a recipe
