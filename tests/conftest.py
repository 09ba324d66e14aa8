import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MASKFORGE_SHARED_DATA", ROOT.parent / "shared" / "data"))


def _shared(*parts):
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real test data {path} is absent (expected ../shared/data beside the repository)")
    return path


@pytest.fixture
def atlanta():
    return {"raster": _shared("atlanta-buildings", "image.tif"),
            "labels": _shared("atlanta-buildings", "buildings.geojson")}


@pytest.fixture
def osbs():
    return {"raster": _shared("osbs-trees", "image.tif"), "labels": _shared("osbs-trees", "trees.geojson"),
            "csv": _shared("osbs-trees", "trees.csv")}


@pytest.fixture
def root():
    return ROOT
