"""Extracted .dlpk packages in the temporary folder stay bounded (core/package.py prune_extractions).

Every package rewritten at a better epoch or trained again is a new extraction; before this bound a
machine's /tmp held 26 GB of them. The least recently used go first, never one a job may still be
reading (used within the last hour) and never the one just extracted."""
import json
import os
import tempfile
import time
import zipfile

from core import package


def _dlpk(path, name="m"):
    emd = {"ModelFile": f"{name}.pth", "ImageHeight": 64, "ImageWidth": 64, "ModelName": "MaskRCNN",
           "Classes": [{"Value": 1, "Name": "tent"}], "Framework": "MaskForge"}
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name}.emd", json.dumps(emd))
        z.writestr(f"{name}.pth", b"weights")
    return path


def test_old_extractions_go_recent_and_new_ones_stay(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    root = tmp_path / "tmp" / "maskforge-packages"
    root.mkdir(parents=True)
    now = time.time()
    for i in range(10):   # ten earlier extractions: the oldest used two days ago, the newest a minute ago
        old = root / f"old{i}"
        old.mkdir()
        (old / "m.pth").write_bytes(b"x" * 1000)
        age = 60 if i == 9 else 2 * 86400 - i * 3600
        os.utime(old, (now - age, now - age))
    pkg = package.load_package(_dlpk(tmp_path / "model.dlpk"))
    kept = sorted(e.name for e in root.iterdir() if not e.name.startswith("."))
    assert pkg.folder.parent == root and pkg.folder.name in kept
    assert len(kept) == package.KEPT_EXTRACTIONS
    assert "old9" in kept                       # used a minute ago: kept
    assert "old0" not in kept and "old1" not in kept    # the least recently used went
    os.utime(pkg.folder, (now - 86400, now - 86400))
    again = package.load_package(tmp_path / "model.dlpk")      # the same package: its extraction, used now
    assert again.folder == pkg.folder and time.time() - pkg.folder.stat().st_mtime < 600


def test_nothing_used_within_the_hour_is_removed_nor_the_one_kept(tmp_path):
    root = tmp_path / "cache"
    root.mkdir()
    start = time.time()
    for i in range(12):   # e0 the least recently used
        (root / f"e{i}").mkdir()
        os.utime(root / f"e{i}", (start + i, start + i))
    assert package.prune_extractions(root, keep=root / "e0", max_kept=3) == []   # all in use (just made)
    now = start + 7200
    removed = package.prune_extractions(root, keep=root / "e0", max_kept=3, now=now)
    assert len(removed) == 8 and (root / "e0").exists()     # 12 - 3 kept, but never the one in use
