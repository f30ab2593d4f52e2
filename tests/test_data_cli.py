"""`workbench data check|prepare` on a fabricated root."""
from __future__ import annotations

import argparse
import json

from workbench.data.check import check_dataset
from workbench.data.cli import add_commands
from workbench.data.manifests import load_all_manifests

try:
    from data_fixtures import CORRUPT, make_eurosat, make_toy
except ImportError:
    from tests.data_fixtures import CORRUPT, make_eurosat, make_toy


def run(argv, capsys):
    parser = argparse.ArgumentParser(prog="workbench")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    rc = args.func(args)
    return rc, capsys.readouterr().out


def test_check_reports_counts_and_next_steps(tmp_path, capsys, monkeypatch):
    make_eurosat(tmp_path)
    rc, out = run(["data", "check", "--root", str(tmp_path), "--dataset", "eurosat", "oxford_pets"], capsys)
    assert rc == 1
    assert "eurosat (EuroSAT): INCOMPLETE" in out
    assert "classes 5/10, train 30/13500, val 15/5400, test 10/8100" in out
    assert "images: 55 present, 0 missing, 1 unreadable" in out
    assert CORRUPT in out
    assert "split_zhou_EuroSAT.json" in out  # the next step names CoOp's split file
    # the missing dataset: exact path and where to get it
    assert "oxford_pets (OxfordPets): MISSING" in out
    assert str(tmp_path / "oxford_pets") in out
    assert f"extract it to {tmp_path / 'oxford_pets' / 'images'}" in out


def test_check_missing_images_and_json(tmp_path, capsys):
    dset = make_eurosat(tmp_path)
    (dset / "2750" / "Forest" / "Forest_train_0.jpg").unlink()
    rep = check_dataset("eurosat", tmp_path, verify="none")
    assert (rep.present, rep.missing, rep.checked) == (54, 1, 0)
    assert rep.missing_examples == ["Forest/Forest_train_0.jpg"]
    rc, out = run(["data", "check", "--root", str(tmp_path), "--dataset", "eurosat", "--json"], capsys)
    data = json.loads(out)
    assert data[0]["missing"] == 1 and data[0]["unreadable"] == 1 and data[0]["status"] == "incomplete"


def test_check_ok_toy_and_prepare(tmp_path, capsys):
    make_toy(tmp_path)
    rc, out = run(["data", "check", "--root", str(tmp_path), "--dataset", "toy_objects", "--verify", "all"], capsys)
    assert rc == 0 and "toy_objects (Toy objects): OK" in out and "24 of 24 decoded" in out
    assert "workbench data prepare" in out
    rc, out = run(["data", "prepare", "--root", str(tmp_path), "--dataset", "toy_objects", "--shots", "1", "2",
                   "--seeds", "1", "2"], capsys)
    assert rc == 0 and "4 written" in out
    files = sorted(p.name for p in (tmp_path / "toy_objects" / "split_fewshot").iterdir())
    assert files == ["shot_1-seed_1.json", "shot_1-seed_2.json", "shot_2-seed_1.json", "shot_2-seed_2.json"]
    rc, out = run(["data", "prepare", "--root", str(tmp_path), "--dataset", "toy_objects", "--shots", "1",
                   "--seeds", "1"], capsys)
    assert "0 written, 1 reused" in out
    # a split file of the old sampling rule is rewritten, and counted as written
    old = tmp_path / "toy_objects" / "split_fewshot" / "shot_1-seed_1.json"
    old.write_text(json.dumps({**json.loads(old.read_text()), "version": 1}))
    rc, out = run(["data", "prepare", "--root", str(tmp_path), "--dataset", "toy_objects", "--shots", "1",
                   "--seeds", "1"], capsys)
    assert "1 written, 0 reused" in out and json.loads(old.read_text())["version"] >= 2


def test_check_all_does_not_fail(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORKBENCH_TOY_DATA", str(tmp_path / "toys"))
    make_eurosat(tmp_path)
    rc, out = run(["data", "check", "--root", str(tmp_path), "--verify", "none"], capsys)
    assert rc == 0 and "summary:" in out and "imagenet_r (ImageNet-R): MISSING" in out
    assert str(tmp_path / "toys" / "toy_vocab") in out  # toys looked up under the toy root
    rc, out = run(["data", "prepare", "--root", str(tmp_path), "--shots", "1", "--seeds", "1"], capsys)
    assert "eurosat: written" in out and "imagenet_a: skipped" in out and "dtd: missing" in out


def test_check_without_a_root_says_how_to_give_one(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("WORKBENCH_DATA", raising=False)
    monkeypatch.setenv("WORKBENCH_TOY_DATA", str(tmp_path / "toys"))
    rc, out = run(["data", "check", "--verify", "none"], capsys)
    assert rc == 1  # nothing found to check
    assert "eurosat (EuroSAT): NOT CHECKED, needs a data root (holding eurosat/)" in out
    real = sum(not m.is_toy for m in load_all_manifests())  # every manifest that is not a toy dataset
    assert out.count("needs a data root") == real and "problem: dataset" not in out
    assert out.count("--root DIR or set WORKBENCH_DATA=DIR") == 1
    assert "toy_objects (Toy objects): MISSING" in out and f"{real} not checked" in out
    # the toy datasets present: they are checked, and that is a result
    make_toy(tmp_path / "toys")
    rc, out = run(["data", "check", "--verify", "none"], capsys)
    assert rc == 0 and "toy_objects (Toy objects): OK" in out and out.count("needs a data root") == real
    # one dataset named without a root: not checked, non-zero
    rc, out = run(["data", "check", "--dataset", "dtd"], capsys)
    assert rc == 1 and "dtd (DTD): NOT CHECKED" in out


def test_check_of_an_empty_root_fails(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORKBENCH_TOY_DATA", str(tmp_path / "toys"))
    rc, out = run(["data", "check", "--root", str(tmp_path), "--verify", "none"], capsys)
    assert rc == 1 and f"summary: {len(load_all_manifests())} missing" in out
