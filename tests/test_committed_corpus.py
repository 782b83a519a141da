"""The committed SmolLM2 training corpus (bench/corpus/, made on the H200 by `jetspec make-corpus`,
issue 17) is what its manifest says: it loads as a corpus, its counts match, and no row is cut."""

import json
import tarfile
from pathlib import Path

import pytest

from jetspec.drafters.head.corpus import load_corpus

ROOT = Path(__file__).resolve().parents[1] / "bench" / "corpus"
ARCHIVE = ROOT / "SmolLM2-135M-Instruct.tar.xz"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    if not ARCHIVE.is_file():
        pytest.skip(f"{ARCHIVE.name} is moved out of the tree (bench/device/out_of_tree.sh out)")
    out = tmp_path_factory.mktemp("corpus")
    with tarfile.open(ARCHIVE, "r:xz") as t:
        t.extractall(out, filter="data")
    return out / "corpus"


def test_the_archive_is_the_manifest_s_corpus(corpus):
    committed = json.loads((ROOT / "SmolLM2-135M-Instruct.manifest.json").read_text())
    assert json.loads((corpus / "manifest.json").read_text()) == committed
    data = load_corpus(corpus)
    rows = len(data.prompt_lens)
    assert rows == committed["rows"] >= 50_000
    answers = sum(len(data.row(s)) - int(data.prompt_lens[s]) for s in range(rows))
    assert answers == committed["answer_tokens"]
    assert all(0 < int(data.prompt_lens[s]) < len(data.row(s)) for s in range(0, rows, 97))  # prompt and answer both there
    assert committed["target"]["target_name"] == "SmolLM2-135M-Instruct" and committed["overlap_check"]["n"] == 13
