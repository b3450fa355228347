"""Tests of spacy_xlmrxl.data_check: asset lists, sha256 verification, copying from a data dir."""

import hashlib

import pytest
import srsly

from spacy_xlmrxl.training.data_check import (
    DataCheckError,
    check_assets,
    compare_with_sums,
    file_digest,
    load_asset_specs,
    read_sha256sums,
)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def layout(tmp_path):
    """A project with two assets and a local data folder holding them."""
    data = tmp_path / "data"
    (data / "ner").mkdir(parents=True)
    (data / "ner" / "a.txt").write_bytes(b"alpha\n")
    (data / "tok.model").write_bytes(b"rebuilt")
    project = tmp_path / "project"
    project.mkdir()
    srsly.write_yaml(
        project / "project.yml",
        {
            "assets": [
                {"dest": "assets/ner/a.txt", "url": "https://example.org/a.txt", "checksum": hashlib.md5(b"alpha\n").hexdigest(), "sha256": sha(b"alpha\n")},
                {"dest": "assets/tok.model", "sha256": [sha(b"official"), sha(b"rebuilt")]},
            ]
        },
    )
    return project, data


def test_load_asset_specs(layout):
    project, _ = layout
    specs = load_asset_specs(project / "project.yml")
    assert [s.dest for s in specs] == ["assets/ner/a.txt", "assets/tok.model"]
    assert specs[0].relative.as_posix() == "ner/a.txt" and specs[0].md5 == hashlib.md5(b"alpha\n").hexdigest()
    assert specs[1].sha256 == (sha(b"official"), sha(b"rebuilt"))


def test_check_copies_then_verifies_and_accepts_alternative_hash(layout):
    project, data = layout
    specs = load_asset_specs(project / "project.yml")
    assert [s.status for s in check_assets(specs, project)] == ["missing", "missing"]
    assert [s.status for s in check_assets(specs, project, data)] == ["copied", "copied"]
    assert (project / "assets" / "ner" / "a.txt").read_bytes() == b"alpha\n"
    assert [s.status for s in check_assets(specs, project, data)] == ["ok", "ok"]
    (project / "assets" / "tok.model").write_bytes(b"official")  # the other documented file
    assert check_assets(specs, project)[1].status == "ok"


def test_wrong_file_is_replaced_from_data_dir_or_reported(layout):
    project, data = layout
    specs = load_asset_specs(project / "project.yml")
    dest = project / "assets" / "ner" / "a.txt"
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"tampered")
    status = check_assets(specs[:1], project)[0]
    assert status.status == "mismatch" and sha(b"tampered") in status.detail and not status.good
    assert check_assets(specs[:1], project, data)[0].status == "copied"
    (data / "ner" / "a.txt").write_bytes(b"corrupt source")
    dest.unlink()
    status = check_assets(specs[:1], project, data)[0]
    assert status.status == "mismatch" and str(data / "ner" / "a.txt") in status.detail
    assert not dest.exists()  # a bad source is never copied


def test_link_mode(layout):
    project, data = layout
    specs = load_asset_specs(project / "project.yml")
    check_assets(specs, project, data, link=True)
    assert (project / "assets" / "tok.model").is_symlink()


def test_bad_asset_list_and_sums(tmp_path):
    srsly.write_yaml(tmp_path / "p.yml", {"assets": [{"dest": "assets/x", "sha256": "abc"}]})
    with pytest.raises(DataCheckError, match=r"assets\[0\] \(assets/x\): needs 'sha256'"):
        load_asset_specs(tmp_path / "p.yml")
    (tmp_path / "SUMS").write_text("nothash file\n")
    with pytest.raises(DataCheckError, match="SUMS:1"):
        read_sha256sums(tmp_path / "SUMS")


def test_compare_with_sums(layout):
    project, _ = layout
    specs = load_asset_specs(project / "project.yml")
    assert compare_with_sums(specs, {"ner/a.txt": sha(b"alpha\n")}) == []
    problems = compare_with_sums(specs, {"ner/a.txt": sha(b"beta"), "ner/b.txt": sha(b"b")})
    assert len(problems) == 2 and "ner/b.txt: listed in SHA256SUMS but not an asset" in problems


def test_file_digest_matches_hashlib(tmp_path):
    payload = bytes(range(256)) * 5000  # more than one chunk
    (tmp_path / "f").write_bytes(payload)
    assert file_digest(tmp_path / "f") == sha(payload)
    assert file_digest(tmp_path / "f", "md5") == hashlib.md5(payload).hexdigest()
