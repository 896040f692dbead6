import pytest
import yaml

from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.recipe import FinetuneRecipe, PretrainRecipe, list_recipes, load_recipe, parse_override

pytestmark = pytest.mark.unit


def write(tmp_path, text: str, name="r.yaml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("name", list_recipes())
def test_every_shipped_recipe_loads(name):
    kind = name.split("/")[0]
    flags = {"data.train_file": "train.csv"} if name == "finetune/custom" else None  # files come as flags
    recipe, _ = load_recipe(kind, name, flags=flags)
    assert isinstance(recipe, PretrainRecipe if kind == "pretrain" else FinetuneRecipe)


@pytest.mark.parametrize("name", list_recipes())
def test_every_shipped_recipe_starts_with_its_command(name):
    from bigmodel_cli.recipe import find_recipe

    first = find_recipe(name).read_text().splitlines()[0]
    assert first.startswith("# bigmodel ")


def test_merge_order_defaults_yaml_flags_set(tmp_path):
    path = write(tmp_path, "data: {train_files: [a.txt]}\ntraining: {learning_rate: 1.0e-4, seed: 7}\n")
    recipe, _ = load_recipe("pretrain", path, overrides=["training.learning_rate=3e-5"])
    assert recipe.training.learning_rate == pytest.approx(3e-5)  # --set beats YAML
    assert recipe.training.seed == 7  # YAML beats defaults
    assert recipe.training.per_device_train_batch_size == 32  # default
    recipe, _ = load_recipe("finetune", write(tmp_path, "data: {task: rte}\n", "f.yaml"),
                            flags={"data.task": "mrpc"}, overrides=["data.task=cola"])
    assert recipe.data.task == "cola"


def test_list_override_and_yaml_values():
    assert parse_override("data.train_files=[a.txt,b.txt]") == (["data", "train_files"], ["a.txt", "b.txt"])
    assert parse_override("tokenizer.name_or_path=null") == (["tokenizer", "name_or_path"], None)
    assert parse_override("training.save_strategy=no") == (["training", "save_strategy"], "no")
    with pytest.raises(BigmodelError, match="expected key=value"):
        parse_override("training.learning_rate")


def test_unquoted_no_in_yaml_and_set_mean_no(tmp_path):
    path = write(tmp_path, "data: {train_files: [a.txt]}\ntraining: {eval_strategy: no, bf16: no}\n")
    recipe, _ = load_recipe("pretrain", path, overrides=["training.save_strategy=no", "training.bf16=yes"])
    assert recipe.training.eval_strategy == "no" and recipe.training.save_strategy == "no"
    assert recipe.training.bf16 is True


def test_unknown_key_names_file_key_and_nearest(tmp_path):
    path = write(tmp_path, "data: {train_files: [a.txt]}\ntraining: {learing_rate: 0.1}\n")
    with pytest.raises(BigmodelError) as err:
        load_recipe("pretrain", path)
    message = str(err.value)
    assert path in message and "training.learing_rate" in message and "did you mean 'training.learning_rate'" in message


@pytest.mark.parametrize(
    "text, words",
    [
        ("data: {train_files: [a.txt]}\ntraining: {learning_rate: -1}\n", ["training.learning_rate", "greater than 0"]),
        ("data: {train_files: [a.txt]}\nmodel: {hidden_size: 100, num_attention_heads: 3}\n", ["not divisible"]),
        ("data: {train_files: [a.txt], max_seq_length: 1024}\n", ["max_position_embeddings"]),
        ("data: {train_files: [a.txt]}\ntraining: {num_train_epochs: many}\n", ["training.num_train_epochs"]),
        ("data: {}\n", ["train_files"]),
        ("- a\n- b\n", ["mapping"]),
        ("data: {train_files: [a.txt]\n", ["not valid YAML", "line"]),
        ("data: {train_files: [a.txt]}\ntraining: {bf16: true, fp16: true}\n", ["bf16 and fp16 are both true", "choose one"]),
    ],
)
def test_bad_recipes_say_what_to_fix(tmp_path, text, words):
    with pytest.raises(BigmodelError) as err:
        load_recipe("pretrain", write(tmp_path, text))
    for word in words:
        assert word in str(err.value)


def test_all_problems_reported_at_once(tmp_path):
    path = write(tmp_path, "data: {train_files: [a.txt]}\ntraining: {learning_rate: -1, seeed: 3}\n")
    with pytest.raises(BigmodelError) as err:
        load_recipe("pretrain", path)
    assert "learning_rate" in str(err.value) and "seeed" in str(err.value)


def test_missing_recipe_lists_shipped_ones():
    with pytest.raises(BigmodelError, match="pretrain/bert-tiny"):
        load_recipe("pretrain", "pretrain/nope")


def test_relative_data_paths_resolve_beside_the_recipe():
    recipe, _ = load_recipe("pretrain", "pretrain/tiny-debug")
    from pathlib import Path

    assert Path(recipe.data.train_files[0]).is_file()


def test_warmup_fraction_or_steps(tmp_path):
    recipe, _ = load_recipe("pretrain", write(tmp_path, "data: {train_files: [a]}\ntraining: {warmup_steps: 100}\n"))
    assert recipe.training.trainer_kwargs()["warmup_steps"] == 100
    assert isinstance(recipe.training.trainer_kwargs()["warmup_steps"], int)
    with pytest.raises(BigmodelError, match="warmup_steps"):
        load_recipe("pretrain", write(tmp_path, "data: {train_files: [a]}\ntraining: {warmup_steps: 2.5}\n", "w.yaml"))


def test_resolved_recipe_round_trips(tmp_path):
    from bigmodel_cli.recipe import dump_recipe

    recipe, _ = load_recipe("finetune", "finetune/mrpc")
    dump_recipe(recipe, tmp_path / "resolved.yaml", "header")
    again, _ = load_recipe("finetune", str(tmp_path / "resolved.yaml"))
    assert again == recipe
    written = yaml.safe_load((tmp_path / "resolved.yaml").read_text())["training"]["learning_rate"]
    assert isinstance(written, float) and written == recipe.training.learning_rate == 5e-5
