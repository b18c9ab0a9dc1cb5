"""Recipes: ``extends`` merges a base recipe table by table, and every recipe in
``training/`` reads."""
from pathlib import Path

import pytest

from ner.training.loop import read_recipe

BASE = """
[pipeline]
name = "base"
labels = ["PER", "LOC"]
threshold = 0.5
[data]
train = ["a:train"]
dev = ["a:dev", "b:dev"]
test = ["a:test"]
[encoder]
name = "e5-small"
trim_vocabulary = true
[model]
max_width = 10
window = 256
[training]
epochs = 3
seed = 0
[output]
path = "pipelines/base"
storage = "int8"
"""


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


def test_extends_merges_tables_key_by_key_and_replaces_lists(tmp_path):
    write(tmp_path, "base.toml", BASE)
    stage = write(tmp_path, "stage.toml", """
extends = "base.toml"
[data]
train = ["b:train"]
[training]
seed = 7
[output]
path = "runs/stage"
""")
    recipe = read_recipe(stage)
    assert recipe["data"] == {"train": ["b:train"], "dev": ["a:dev", "b:dev"], "test": ["a:test"]}
    assert recipe["training"] == {"epochs": 3, "seed": 7}
    assert recipe["output"] == {"path": "runs/stage", "storage": "int8"}
    assert recipe["encoder"] == {"name": "e5-small", "trim_vocabulary": True}
    assert recipe["pipeline"]["labels"] == ["PER", "LOC"]
    assert recipe["path"] == str(stage) and "extends" not in recipe


def test_a_recipe_from_init_takes_no_encoder_or_model_from_its_base(tmp_path):
    write(tmp_path, "base.toml", BASE)
    stage = write(tmp_path, "stage.toml", """
extends = "base.toml"
[encoder]
init = "pipelines/base"
[training]
epochs = 1
[output]
path = "runs/stage"
""")
    recipe = read_recipe(stage)
    assert recipe["encoder"] == {"init": "pipelines/base"}
    assert "model" not in recipe
    assert recipe["training"] == {"epochs": 1, "seed": 0}


def test_a_recipe_that_extends_must_name_its_own_output(tmp_path):
    write(tmp_path, "base.toml", BASE)
    stage = write(tmp_path, "stage.toml", 'extends = "base.toml"\n[training]\nseed = 1\n')
    with pytest.raises(ValueError, match="own \\[output\\] path"):
        read_recipe(stage)


def test_bases_chain(tmp_path):
    write(tmp_path, "base.toml", BASE)
    write(tmp_path, "middle.toml", 'extends = "base.toml"\n[training]\nseed = 1\n[output]\npath = "runs/m"\n')
    top = write(tmp_path, "top.toml", 'extends = "middle.toml"\n[training]\nepochs = 9\n[output]\npath = "runs/t"\n')
    assert read_recipe(top)["training"] == {"epochs": 9, "seed": 1}


RECIPES = sorted((Path(__file__).parents[1] / "training").glob("*.toml"))


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_shipped_recipe_reads_whole(path):
    recipe = read_recipe(path)
    assert recipe["output"]["path"]
    assert recipe["encoder"].get("init") or recipe["encoder"].get("name")
