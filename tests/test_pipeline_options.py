"""Pipeline options check themselves on construction: a PipelineOptions that exists is valid."""
from __future__ import annotations

import pickle

import pytest

from pipelines.errors import LesionConfigError, PipelineError, PipelineOptionError
from pipelines.options import PipelineOptions


@pytest.mark.parametrize("field, value, words", [
    ("device", "gpu", "device 'gpu'"),
    ("device", "cuda:x", "device 'cuda:x'"),
    ("step_size", 0.0, "step_size"),
    ("step_size", 1.5, "step_size"),
    ("step_size", float("nan"), "step_size"),
    ("seg_type", "fractional", "seg_type 'fractional'"),
    ("min_slices", 1, "min_slices"),
    ("min_slices", 2.5, "min_slices"),
    ("mirroring", "yes", "mirroring"),
    ("model", " ", "model"),
])
def test_an_option_out_of_range_is_refused_with_a_sentence_naming_it(field, value, words):
    with pytest.raises(PipelineOptionError) as caught:
        PipelineOptions(**{field: value})
    assert words in str(caught.value) and "\n" not in str(caught.value)


def test_unknown_lesion_thresholds_are_refused_before_any_work():
    with pytest.raises(LesionConfigError) as caught:
        PipelineOptions(lesion_thresholds={"no_such_threshold": 1})
    assert "no_such_threshold" in str(caught.value)
    assert isinstance(caught.value, PipelineError)


def test_options_travel_to_workers_and_record_no_local_folder():
    options = PipelineOptions(device="cpu", step_size=0.25, models_dir="/srv/models")
    assert pickle.loads(pickle.dumps(options)) == options
    assert "models_dir" not in options.parameters()
    assert options.parameters()["step_size"] == 0.25
    assert [str(p) for p in options.models_dirs()][0] == "/srv/models"
