import pytest
from conftest import SHARED, TINY

from bigmodel_cli.classification.data import load_glue, read_glue_tsv
from bigmodel_cli.classification.tasks import TASKS, get_task
from bigmodel_cli.errors import BigmodelError

pytestmark = pytest.mark.unit
MRPC = get_task("mrpc")


def test_tiny_mrpc_keeps_literal_quotes_and_drops_the_bom():
    columns = read_glue_tsv(MRPC, TINY / "mrpc-tiny" / "train.tsv")
    assert len(columns["sentence1"]) == 160 and set(columns["label"]) == {0, 1}
    assert any('" ' in s for s in columns["sentence1"])  # quotes stay text, not CSV quoting
    assert not columns["sentence1"][0].startswith("\ufeff")


@pytest.mark.skipif(not (SHARED / "glue" / "mrpc").is_dir(), reason="../shared/data not present")
def test_real_mrpc_loads_every_pair_exactly():
    train = load_glue(MRPC, "train", SHARED / "glue" / "mrpc")
    dev = load_glue(MRPC, "dev", SHARED / "glue" / "mrpc")
    assert (len(train), len(dev)) == (3668, 408)
    assert sum(dev["label"]) == 279  # majority class: 279/408 = 0.684
    assert sum(train["label"]) == 2474
    assert all(s.strip() for s in list(train["sentence1"]) + list(train["sentence2"]))


def test_ragged_row_names_file_and_line(tmp_path):
    path = tmp_path / "dev.tsv"
    path.write_text("Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\tonly three\n", encoding="utf-8")
    with pytest.raises(BigmodelError, match=r"dev.tsv line 2: 4 fields, the header has 5"):
        read_glue_tsv(MRPC, path)


def test_label_outside_label_set(tmp_path):
    path = tmp_path / "dev.tsv"
    path.write_text("Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n7\t1\t2\ta\tb\n", encoding="utf-8")
    with pytest.raises(BigmodelError, match="label '7' is not in the label set of mrpc"):
        read_glue_tsv(MRPC, path)


def test_wrong_columns_say_which(tmp_path):
    path = tmp_path / "dev.tsv"
    path.write_text("a\tb\n1\t2\n", encoding="utf-8")
    with pytest.raises(BigmodelError, match="no column '#1 String'"):
        read_glue_tsv(MRPC, path)


def test_every_glue_task_is_known():
    assert set(TASKS) == {"cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli"}
    with pytest.raises(BigmodelError, match="unknown task 'mrcp'"):
        get_task("mrcp")
