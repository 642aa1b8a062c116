"""``python -m pipeline.sources.overlay``: the paper configs apply cleanly to the real params.yaml."""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.acquire import DataConfig
from pipeline.common.config import from_params, load_params

ROOT = Path(__file__).resolve().parents[3]
# params section -> (module, config class) for every stage whose section a config touches
STAGES = {"data": ("pipeline.acquire", "DataConfig"),
          "manifest": ("pipeline.manifest", "ManifestConfig"),
          "spectrograms": ("pipeline.spectrograms", "SpectrogramConfig"),
          "faces": ("pipeline.faces", "FacesConfig"),
          "face_attributes_train": ("pipeline.face_attributes_train", "FaceAttributesTrainConfig"),
          "tuples": ("pipeline.tuples", "TuplesConfig"),
          "model": ("model.avnet", "ModelConfig"),
          "train": ("model.trainer", "TrainConfig")}

# the published multi-part archives: (whole, MD5 of the concatenation, number of parts)
PUBLISHED = {"voxceleb1": ("vox1_dev_wav.zip", "ae63e55b951748cc486645f532ba230b", 4),
             "voxceleb2": ("vox2_dev_aac.zip", "bbc063c46078a602ca71605645c2a402", 8)}


@pytest.mark.parametrize("config", ["voxceleb1", "voxceleb2"])
def test_paper_config_applies_to_params_yaml(tmp_path: Path, config: str) -> None:
    params = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params)
    before = load_params(params)
    overlay = yaml.safe_load((ROOT / "configs" / f"{config}.yaml").read_text())
    # the documented command, run as a user would
    result = subprocess.run([sys.executable, "-m", "pipeline.sources.overlay",
                             str(ROOT / "configs" / f"{config}.yaml"), "--params", str(params)],
                            capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert re.search(r"faces.size: \d+ -> 224", result.stderr)
    after = load_params(params)
    for name, values in before.items():  # overlay values in, everything else untouched
        if not isinstance(values, dict):  # top-level scalars (lambda1..lambda4)
            assert after[name] == overlay.get(name, values), name
            continue
        for key, value in values.items():
            assert after[name][key] == overlay.get(name, {}).get(key, value), f"{name}.{key}"
    assert after["data"]["source"] == config and after["faces"]["size"] == 224
    assert after["spectrograms"]["preset"] == "aml"
    assert (after["tuples"]["train_binary"], after["tuples"]["test_multiway"]) == (14130, 7650)
    text = params.read_text()
    assert text.startswith("# One section per stage")  # comments survive
    assert "# 0 = every core" in text and "source: " + config in text
    for name, (module, cls) in STAGES.items():  # every touched stage builds its config
        if name in overlay:
            cfg = from_params(getattr(importlib.import_module(module), cls), params, name)
            assert cfg is not None
    side = 224  # the face branch's strides bring 224-px faces to 28 x 28 before the 10 x 10 pool
    for stride in after["model"]["face_strides"]:
        side //= stride[0]
    assert side == 28
    assert (after["train"]["lr"], after["train"]["lr_end"]) == (0.005, 0.00005)  # AML III-G
    entries = {e.name: e for e in from_params(DataConfig, params, "data").entries()}
    whole = PUBLISHED[config]
    assert entries[whole[0]].md5 == whole[1] and entries[whole[0]].is_group
    assert len([e for e in entries.values() if e.group == whole[0]]) == whole[2]
    assert entries["img_align_celeba.zip"].md5 == "00d2c5bc6d35e252742224ab0c1e8fcb"


@pytest.mark.parametrize("value", [5e-05, 0.005, 1e20, 2.5e-07, 1.0, -3e-5, float("inf")])
def test_floats_are_written_as_yaml_1_1_floats(value: float) -> None:
    """PyYAML (and DVC) read ``5e-05`` as a string; the overlay must write ``5.0e-05``."""
    import io

    from pipeline.sources.overlay import _yaml

    buf = io.StringIO()
    _yaml().dump({"x": value}, buf)
    back = yaml.safe_load(buf.getvalue())["x"]
    assert isinstance(back, float) and back == value
