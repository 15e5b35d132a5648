"""Strict JSON: no NaN / Infinity in any file or printout of the package."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from dpcdvae.jsonio import dumps_strict, to_strict, write_json

SRC = Path(__file__).resolve().parents[1] / "src" / "dpcdvae"


def _strict_loads(text):
    def refuse(name):
        raise AssertionError(f"non-strict JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def test_non_finite_floats_become_null():
    obj = {"a": math.nan, "b": [math.inf, -math.inf, 1.5], "c": (np.float32("nan"), np.float64(2.0)),
           "d": np.array([1.0, np.nan]), "e": torch.tensor([np.inf, 3.0]), "f": np.int64(4), "g": np.bool_(True),
           "h": {"nested": [float("nan")]}}
    back = _strict_loads(dumps_strict(obj))
    assert back == {"a": None, "b": [None, None, 1.5], "c": [None, 2.0], "d": [1.0, None], "e": [None, 3.0],
                    "f": 4, "g": True, "h": {"nested": [None]}}


def test_unknown_objects_need_a_default():
    with pytest.raises(TypeError):
        dumps_strict({"p": Path("x")})
    assert _strict_loads(dumps_strict({"p": Path("x")}, default=str)) == {"p": "x"}
    assert to_strict({np.int64(3): 1}) == {"3": 1}


def test_write_json_and_results_of_short_runs(tmp_path):
    from dataclasses import asdict

    from dpcdvae.sampling.run import SampleResult, result_json

    res = SampleResult("out", 0, 0, 3, 0.1, math.nan, "cpu")  # a --resume with nothing left
    assert _strict_loads(result_json(res))["crystals_per_s"] is None
    path = write_json(tmp_path / "sub" / "r.json", asdict(res))
    assert _strict_loads(path.read_text())["crystals_per_s"] is None


def test_every_json_dump_goes_through_the_strict_helper():
    offenders = [f"{p.relative_to(SRC)}:{i}" for p in SRC.rglob("*.py") if p.name != "jsonio.py"
                 for i, line in enumerate(p.read_text().splitlines(), 1)
                 if "json.dump(" in line or "json.dumps(" in line]
    assert not offenders, offenders
