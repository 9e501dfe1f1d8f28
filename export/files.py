"""Writing artifacts without ever leaving a half-written one behind (carseg.outputs does it)."""

from carseg.outputs import prepare_out_dir, publish, staged, temp_path

__all__ = ["prepare_out_dir", "publish", "staged", "temp_path"]
