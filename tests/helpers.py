"""Small real models and datasets for tests: generated on the fly, offline, fast on a 2-core CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

TINY_VIT_OPTIONS = "img_size=32&patch_size=8&depth=2&embed_dim=48&num_heads=2&num_classes=5"
TINY_VIT = f"random:vit_tiny_patch16_224?{TINY_VIT_OPTIONS}"


def make_image_folder(root: Path, per_class: int = 12, classes: int = 2, size: int = 40, seed: int = 0) -> Path:
    """Class sub-folders of smooth random RGB images (low-rank structure, like natural images)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for c in range(classes):
        folder = root / f"class_{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            freq = rng.uniform(0.5, 3.0, size=(3, 2))
            phase = rng.uniform(0, 2 * np.pi, size=3)
            channels = [np.sin(2 * np.pi * (freq[k, 0] * xx + freq[k, 1] * yy) + phase[k] + c) for k in range(3)]
            image = np.stack(channels, -1) * 100 + 128 + rng.normal(0, 8, size=(size, size, 3))
            Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(folder / f"img_{i:03d}.png")
    return root


def save_tiny_vit_checkpoint(path: Path, seed: int = 0) -> str:
    """A tiny timm ViT saved as safetensors; returns its ``file:`` model id."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2, embed_dim=48,
        num_heads=2, num_classes=5,
    )
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return f"file:{path}?arch=vit_tiny_patch16_224&{TINY_VIT_OPTIONS}"


def stop_process(process) -> None:
    """Terminate a server started by a test, killing it if it does not exit within 20 s."""
    import subprocess

    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=20)


def plotly_figures(app_test) -> list[dict]:
    """The Plotly figures an AppTest run drew, as the JSON specs Streamlit sends to the browser."""
    import json

    return [json.loads(node.proto.spec) for node in app_test.get("plotly_chart")]


def trace_values(data) -> list:
    """A trace's data array from a figure spec (Plotly sends numeric arrays base64-encoded)."""
    import base64

    if isinstance(data, dict) and "bdata" in data:
        return np.frombuffer(base64.b64decode(data["bdata"]), dtype=np.dtype(data["dtype"])).tolist()
    return list(data)


def assert_page_ok(app_test) -> None:
    """No exception and no error box on an AppTest page."""
    assert not app_test.exception, [e.value for e in app_test.exception]
    assert not app_test.error, [e.value for e in app_test.error]


def main_metric(app_test, label: str) -> str:
    """The value of the main area's metric named ``label`` (fails, listing the labels, when there is none)."""
    values = [m.value for m in app_test.main.metric if m.label == label]
    assert values, f"no metric {label!r}; have {[m.label for m in app_test.main.metric]}"
    return values[0]


FOLDED_PANELS = ("compare_tables_open", "layers_convergence_open", "layers_table_open", "layers_card_open",
                 "heads_table_open", "library_card_open", "page_idea_open")
"""The open state of every folded panel (:func:`ui.frame.folded`): their content is built only while open."""


def unfold(app_test, *keys: str):
    """Open the folded panels ``keys`` (all of them by default) on the AppTest's next run, as a person clicking
    them would; returns the AppTest. A panel opened so stays open until a run draws it no more. The page's idea
    (``page_idea_open``, on every page) is closed again by a page switch: open it after switching."""
    for key in keys or FOLDED_PANELS:
        app_test.session_state[key] = True
    return app_test
