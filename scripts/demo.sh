#!/usr/bin/env bash
# The demo so far: generate the project's sample camp scene, then export training
# chips from it through the plugin's Processing algorithm in real QGIS (qgis_process).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=demo_output
rm -rf "$OUT/chips"
mkdir -p "$OUT"

echo "== 1. Sample scene (a georeferenced camp of tents, with their footprints)"
.venv/bin/python -m core sample --out "$OUT/sample" --size 768 --seed 7 --kind camp

echo "== 2. Export Training Data through QGIS Processing (maskforge:exporttrainingdata)"
start=$(date +%s%N)
# Debian's /usr/bin/qgis_process wrapper passes an option this build rejects: call the binary.
qgis_process.bin run maskforge:exporttrainingdata -- \
  INPUT_RASTER="$OUT/sample/image.tif" INPUT_LABELS="$OUT/sample/labels.gpkg" \
  CLASS_VALUE_FIELD=classvalue CLASS_NAME_FIELD=classname \
  TILE_SIZE_X=256 TILE_SIZE_Y=256 STRIDE_X=128 STRIDE_Y=128 OUTPUT_FOLDER="$OUT/chips" 2>/dev/null \
  | sed -n '/^Results/,$p'
end=$(date +%s%N)

echo "== Summary"
cat "$OUT/chips/stats.txt"
echo "export time: $(( (end - start) / 1000000 )) ms (QGIS start included)"
echo "Output: $OUT/chips (images/, labels/1/, map.txt, annotations.json, esri_*.json/.emd)"
