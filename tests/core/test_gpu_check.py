"""scripts/gpu_check.sh --cpu: the GPU check's small CPU mode, so the script never rots."""
import os
import subprocess


def test_gpu_check_cpu_mode_prints_its_figures(root):
    env = {**os.environ, "PYTHON": str(root / ".venv" / "bin" / "python")}
    run = subprocess.run([str(root / "scripts" / "gpu_check.sh"), "--cpu"], cwd=root, capture_output=True, text=True,
                         timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    figures = dict(line.split("=", 1) for line in run.stdout.splitlines() if "=" in line)
    for key in ("detect_fp32_network_mpix_per_s", "detect_fp32_raster_mpix_per_s", "detect_fp32_pipeline_vs_raw",
                "detect_fp32_overlap_factor", "detect_fp32_objects_per_tile", "tracing_objects_per_s_per_thread",
                "train_step_fp32_ours_vs_bare"):
        assert float(figures[key]) > 0, key
    assert figures["backbone"] == "resnet18_fpn" and "tracing_skipped" not in figures
    assert float(figures["detect_fp32_overlap_factor"]) < 2.0
