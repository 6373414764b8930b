"""Shared fixtures: the nanoBragg.c parity corpus (../shared/golden or $NANOBRAGG_GOLDEN)."""
import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def corpus_dir() -> Path:
    return Path(os.environ.get("NANOBRAGG_GOLDEN", REPO.parent / "shared" / "golden"))


def corpus_cases():
    path = corpus_dir() / "cases.json"
    if not path.exists():
        return []
    return json.loads(path.read_text())["cases"]


@pytest.fixture
def corpus():
    path = corpus_dir()
    if not (path / "cases.json").exists():
        pytest.skip(f"parity corpus not found at {path} (set NANOBRAGG_GOLDEN)")
    return path


@pytest.fixture
def run_dir(tmp_path, corpus, monkeypatch):
    """A scratch folder holding inputs/ (as the corpus cases expect), made the cwd."""
    (tmp_path / "inputs").symlink_to((corpus / "inputs").resolve())
    monkeypatch.chdir(tmp_path)
    return tmp_path
