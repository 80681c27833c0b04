"""The front door: `hf_trilevel` exports the model classes and about 20 names; 0.1.0's other names still work.

Helpers moved to their folders (`hf_trilevel.example_pruning`, `hf_trilevel.training`, ...) and four techniques were
renamed. For one release each old name still imports from `hf_trilevel`, warns where it lives now, and is the very
object found there, so user code keeps working and sees what to change.
"""

import warnings
from importlib import import_module

import pytest

import hf_trilevel

MOST_OTHER_NAMES = 20
# `hf_trilevel.__all__` of 0.1.0, before the layout moved: every name must still import from `hf_trilevel`.
FRONT_DOOR_0_1_0 = (
    "DenseSparseTraining", "EpochPlan", "ExamplePruningCallback", "ExampleStatistics", "ForgettingPolicy",
    "KeepRateScheduleCallback", "LossPolicy", "NoPruning", "PruningPolicy", "RandomPolicy", "SparseTrainingCallback",
    "TokenSelection", "TokenSelector", "TokenSelectorTemperatureCallback", "TrainingBatch", "TrainingTechnique",
    "TriLevelTrainer", "TriLevelViTConfig", "TriLevelViTForImageClassification", "TriLevelViTImageClassifierOutput",
    "TriLevelViTModel", "TriLevelViTModelOutput", "TriLevelViTPreTrainedModel", "default_token_prune_layers",
    "keyed_generator", "operating_point", "register_token_selector", "registered_token_selectors", "slim",
    "structured_unit_masks", "sum_across_processes", "token_schedule",
)  # fmt: skip
RENAMED_TECHNIQUES = {
    "ExamplePruningCallback": "ExamplePruning",
    "KeepRateScheduleCallback": "KeepRateSchedule",
    "TokenSelectorTemperatureCallback": "SelectorTemperatureSchedule",
    "SparseTrainingCallback": "WeightSparsity",
}


def test_the_front_door_holds_at_most_twenty_names_besides_the_trilevel_classes():
    others = [name for name in hf_trilevel.__all__ if not name.startswith("TriLevel")]
    assert len(others) <= MOST_OTHER_NAMES, others
    assert len(set(hf_trilevel.__all__)) == len(hf_trilevel.__all__)


@pytest.mark.parametrize("name", hf_trilevel.__all__)
def test_every_front_door_name_imports_without_a_warning(name):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert getattr(hf_trilevel, name) is not None
    assert name not in hf_trilevel.MOVED_NAMES


@pytest.mark.parametrize("name", FRONT_DOOR_0_1_0)
def test_every_0_1_0_name_still_imports_from_hf_trilevel(name):
    assert name in hf_trilevel.__all__ or name in hf_trilevel.MOVED_NAMES


@pytest.mark.parametrize("old_name", hf_trilevel.MOVED_NAMES)
def test_a_moved_name_warns_with_its_new_home_and_is_the_object_found_there(old_name):
    module, new_name = hf_trilevel.MOVED_NAMES[old_name]
    with pytest.warns(FutureWarning, match=rf"hf_trilevel\.{old_name}`.*`{module}\.{new_name}`") as record:
        moved = getattr(hf_trilevel, old_name)
    assert moved is getattr(import_module(module), new_name)
    assert [warning.filename for warning in record] == [__file__]  # it points at the user's line


def test_a_from_import_of_a_moved_name_works_and_warns():
    with pytest.warns(FutureWarning, match=r"use `hf_trilevel\.training\.generators\.keyed_generator`"):
        from hf_trilevel import keyed_generator
    from hf_trilevel.training.generators import keyed_generator as new_home

    assert keyed_generator is new_home


@pytest.mark.parametrize(("old_name", "new_name"), RENAMED_TECHNIQUES.items())
def test_each_old_technique_name_is_the_renamed_front_door_class(old_name, new_name):
    with pytest.warns(FutureWarning, match=new_name):
        assert getattr(hf_trilevel, old_name) is getattr(hf_trilevel, new_name)


def test_an_unknown_name_raises_attribute_error_and_warns_nothing():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(AttributeError, match="module 'hf_trilevel' has no attribute 'no_such_name'"):
            _ = hf_trilevel.no_such_name
        with pytest.raises(ImportError, match="no_such_name"):
            from hf_trilevel import no_such_name  # noqa: F401
