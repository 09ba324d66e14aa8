"""A network's weights read from a PyTorch file: as data, and unwrapped to a bare state dict.

Why a module of its own: packages (package.py) and networks (model.py) both read ``.pth`` files, and
the model needs the package; reading the file is the lower step both stand on, so imports run one way
(model -> package -> state_dicts). ``torch.load(weights_only=True)`` always: a weights file is data,
never code, and a refusal says how to save the file so it is read.
"""
from pathlib import Path

from .errors import UserError


# What arcgis.learn's save_optimizer=True adds to a .pth besides tensors: fastai's optimizer state
# with numpy scalars. These types are plain data; the allow-list lets weights_only read them without
# ever unpickling code.
def _numpy_safe_globals():
    import numpy as np
    found = [np.dtype, type(np.dtype("float32")), type(np.dtype("float64")), type(np.dtype("int64"))]
    for name in ("numpy.core.multiarray", "numpy._core.multiarray"):
        try:
            found.append(getattr(__import__(name, fromlist=["scalar"]), "scalar"))
        except (ImportError, AttributeError):
            pass
    return found


def torch_load_weights(path):
    """``torch.load(weights_only=True)`` with the data-only allow-list; a clear message when it refuses."""
    import torch
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        text = str(exc)
        if "Unsupported global" in text or "weights_only" in text.lower() and "GLOBAL" in text:
            bad = text.split("GLOBAL", 1)[1].split()[0] if "GLOBAL" in text else "an object"
            raise UserError(
                f"'{Path(path).name}' holds a pickled Python object ({bad}) besides the weights. MaskForge reads "
                "weights as data and never unpickles code; save the model's state_dict alone (in arcgis.learn: "
                "save(..., save_optimizer=False)) and try again.") from None
        first = " ".join(text.split())
        first = first[:first.find(". ") + 1] if ". " in first[:400] else first[:400].rsplit(" ", 1)[0] + " ..."
        raise UserError(f"Cannot read the weights '{Path(path).name}' (PyTorch says: {first}) The file is "
                        "truncated, corrupted or not a PyTorch file; copy it again.") from None


def unwrap_state(blob, source):
    """The tensors of a checkpoint: a bare state dict or one wrapped as ``model``, ``state_dict`` or
    ``model_state_dict`` (arcgis.learn, Lightning, most training scripts), ``module.`` prefixes removed."""
    state = blob
    for key in ("model", "state_dict", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not state or not all(hasattr(v, "shape") for v in state.values()):
        raise UserError(f"{source} holds no state dict of tensors (found {type(blob).__name__}"
                        + (f" with keys {', '.join(map(str, list(blob)[:5]))}" if isinstance(blob, dict) else "")
                        + "); it is not a model weights file MaskForge can read.")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def read_state_file(path, source=None):
    """The state dict of a ``.pth``/``.pt`` file, read as data (weights_only)."""
    return unwrap_state(torch_load_weights(path), source or f"'{Path(path).name}'")
