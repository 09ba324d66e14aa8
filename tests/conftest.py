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


class UserGeoPackage:
    """A user's GeoPackage with their own layers, 'my_labels' (polygons) and 'roads' (lines), in EPSG:32636.

    Outputs written into it must leave these layers as they are: ``assert_kept`` compares them feature by
    feature (geometry and every attribute) with what was written; ``digest`` is the file's bytes' hash."""

    def __init__(self, path, write=True):
        import numpy as np
        import pyogrio.raw
        import shapely
        self.path = Path(path)
        self.layers = {
            "my_labels": ([shapely.box(400000 + 10 * i, 3000000, 400005 + 10 * i, 3000005) for i in range(4)],
                          {"classvalue": np.array([1, 2, 1, 2], np.int32),
                           "note": np.array(["mine", "mine too", None, "édité"], dtype=object)}, "Polygon"),
            "roads": ([shapely.LineString([(400000, 3000000 + k), (400100, 3000050 + k)]) for k in range(3)],
                      {"name": np.array(["A1", "B2", "C3"], dtype=object)}, "LineString"),
        }
        for k, (layer, (geoms, fields, kind)) in enumerate(self.layers.items() if write else ()):
            pyogrio.raw.write(str(self.path), shapely.to_wkb(np.array(geoms, dtype=object)), list(fields.values()),
                              list(fields), layer=layer, driver="GPKG", geometry_type=kind, crs="EPSG:32636",
                              dataset_options={"VERSION": "1.2"} if k == 0 else None)

    def digest(self):
        import hashlib
        return hashlib.sha256(self.path.read_bytes()).hexdigest()

    def layer_names(self):
        import pyogrio
        return sorted(str(n) for n in pyogrio.list_layers(self.path)[:, 0])

    def assert_kept(self):
        import numpy as np
        import pyogrio.raw
        import shapely
        for layer, (geoms, fields, _) in self.layers.items():
            meta, _, wkb, data = pyogrio.raw.read(str(self.path), layer=layer)
            assert [g.wkt for g in shapely.from_wkb(wkb)] == [g.wkt for g in geoms], layer
            assert list(meta["fields"]) == list(fields), layer
            for name, values in zip(meta["fields"], data):
                assert list(values) == list(fields[name]), (layer, name)


@pytest.fixture
def user_gpkg(tmp_path):
    return UserGeoPackage(tmp_path / "project.gpkg")
