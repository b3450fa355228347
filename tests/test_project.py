"""project.yml: weasel accepts it, its assets match ../shared/data's SOURCES.md / SHA256SUMS, and
its commands and workflow are consistent (every subcommand exists, every dependency is an asset,
a config or an output of an earlier step)."""

import hashlib
import re
import shlex
from pathlib import Path

import pytest
import srsly
from weasel.schemas import ProjectConfigSchema, validate
from weasel.util import load_project_config

from spacy_xlmrxl.cli import build_parser
from spacy_xlmrxl.training.data_check import compare_with_sums, file_digest, load_asset_specs, read_sha256sums

REPO = Path(__file__).resolve().parent.parent
PROJECT = REPO / "project.yml"
# the official XLM-R sentencepiece.bpe.model, as documented in ../shared/data/tokenizer/README.md
OFFICIAL_SPM_SHA256 = "cfc8146abe2a0488e9e2a0c56de7952f7c11ab059eca145a0a727afce0db2865"


@pytest.fixture(scope="module")
def config():
    return load_project_config(REPO)  # validates against weasel's schema, substitutes vars


@pytest.fixture(scope="module")
def specs():
    return load_asset_specs(PROJECT)


def test_weasel_schema_accepts_project():
    assert validate(ProjectConfigSchema, srsly.read_yaml(PROJECT)) == []


def test_every_asset_has_url_md5_and_sha256(specs):
    assert len(specs) == 41  # 40 data files + the tokenizer
    for spec in specs:
        assert spec.dest.startswith("assets/") and spec.url and spec.url.startswith("https://")
        assert spec.sha256 and all(re.fullmatch(r"[0-9a-f]{64}", h) for h in spec.sha256)
    data = [s for s in specs if not s.dest.startswith("assets/tokenizer/")]
    assert all(re.fullmatch(r"[0-9a-f]{32}", s.md5 or "") for s in data)


def test_asset_urls_are_pinned_to_the_commits_of_sources_md(shared_data, specs):
    sources = (shared_data / "SOURCES.md").read_text(encoding="utf8")
    for spec in specs:
        if spec.dest.startswith("assets/tokenizer/"):
            continue
        match = re.fullmatch(r"https://raw\.githubusercontent\.com/([^/]+/[^/]+)/([0-9a-f]{40})/(.+)", spec.url or "")
        assert match, spec.url
        repo, commit, path = match.groups()
        assert f"https://github.com/{repo}" in sources and commit in sources, spec.url
        assert f"`{path}`" in sources, path  # the "source path in repo" column
        assert all(h in sources for h in spec.sha256)


def test_checksums_match_shared_data(shared_data, specs):
    sums = read_sha256sums(shared_data / "SHA256SUMS")
    assert compare_with_sums(specs, sums) == []
    assert {s.relative.as_posix() for s in specs} == set(sums) | {"tokenizer/sentencepiece.bpe.model"}
    for spec in specs:
        local = shared_data / spec.relative
        if spec.md5 is not None:
            assert hashlib.md5(local.read_bytes()).hexdigest() == spec.md5, spec.dest


def test_tokenizer_asset_accepts_official_and_rebuilt_file(spm_model_path, specs):
    (spec,) = [s for s in specs if s.dest == "assets/tokenizer/sentencepiece.bpe.model"]
    assert OFFICIAL_SPM_SHA256 in spec.sha256
    assert file_digest(spm_model_path) in spec.sha256
    assert "FacebookAI/xlm-roberta-base" in (spec.url or "")


def test_workflow_commands_exist_and_are_ordered(config):
    commands = {c["name"]: c for c in config["commands"]}
    workflow = config["workflows"]["all"]
    assert workflow[0] == "check-data" and set(workflow) <= set(commands)
    for needed in ("convert", "train-ner", "train-textcat", "train-qa", "adapt-fill-mask", "evaluate-ner",
                   "evaluate-textcat", "evaluate-qa", "package", "metrics-table"):
        assert needed in workflow
    assets = {a["dest"] for a in config["assets"]}
    produced = set()
    for name in workflow:
        for dep in commands[name].get("deps", []):
            assert dep in assets or dep in produced or (REPO / dep).is_file(), f"{name}: {dep} comes from no earlier step"
        produced.update(commands[name].get("outputs", []))


def test_scripts_call_existing_subcommands_and_configs(config):
    subcommands = set(build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    for command in config["commands"]:
        for line in command["script"]:
            assert "${" not in line, line  # every variable is defined
            argv = shlex.split(line)
            if argv[:3] == ["python", "-m", "spacy_xlmrxl.cli"]:
                assert argv[3] in subcommands, line
                build_parser().parse_args(argv[3:])  # the arguments parse
            for arg in argv:
                if arg.startswith("configs/"):
                    assert (REPO / arg).is_file(), arg


def test_evaluations_cover_every_language(config):
    outputs = {o for c in config["commands"] for o in c.get("outputs", [])}
    for lang in ("en", "da", "de", "ru"):
        assert f"metrics/ner-{lang}.json" in outputs and f"metrics/ner-baseline-{lang}.json" in outputs
    for lang in ("eng_Latn", "deu_Latn", "rus_Cyrl", "zho_Hans", "arb_Arab", "hin_Deva", "swh_Latn", "jpn_Jpan"):
        assert f"metrics/textcat-{lang}.json" in outputs
    for lang in ("en", "de", "ru", "es", "zh", "ar", "hi", "vi"):
        assert f"metrics/qa-{lang}.json" in outputs


def test_no_training_on_test_splits(config):
    """SIB-200 and XQuAD are parallel: a test file in training would contaminate every language."""
    for command in config["commands"]:
        for line in command["script"]:
            if "--output corpus/textcat/train.spacy" in line or "--output corpus/text/train.spacy" in line:
                assert "test.tsv" not in line and "dev.tsv" not in line
            if "corpus/ner/train.spacy" in line and "convert-uner" in line:
                assert "test.iob2" not in line
