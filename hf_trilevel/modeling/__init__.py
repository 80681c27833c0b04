"""The TriLevel model: the remote-code set that `save_pretrained` copies, flat, into every checkpoint.

transformers copies the file that defines a saved class and, recursively, every `from .x import y` sibling it
imports, and `auto_map` names only file stems; so these files import nothing but each other, torch, transformers,
huggingface_hub and the standard library (tests/test_remote_code.py enforces it), and nothing else lives here.
This `__init__.py` is not part of the set: checkpoints never carry it.
"""

from .configuration_trilevel_deit import TriLevelDeiTConfig
from .configuration_trilevel_dinov2 import TriLevelDinov2Config
from .configuration_trilevel_vit import TriLevelViTConfig
from .modeling_trilevel_deit import (
    TriLevelDeiTForImageClassificationWithTeacher,
    TriLevelDeiTForImageClassificationWithTeacherOutput,
    TriLevelDeiTModel,
    TriLevelDeiTPreTrainedModel,
)
from .modeling_trilevel_dinov2 import (
    TriLevelDinov2ForImageClassification,
    TriLevelDinov2Model,
    TriLevelDinov2PreTrainedModel,
)
from .modeling_trilevel_vit import (
    TriLevelViTForImageClassification,
    TriLevelViTImageClassifierOutput,
    TriLevelViTModel,
    TriLevelViTModelOutput,
    TriLevelViTPreTrainedModel,
)

#: The files every saved checkpoint carries: what `save_pretrained` copies and `trust_remote_code` runs.
REMOTE_CODE_FILES = (
    "configuration_trilevel_vit.py",
    "modeling_trilevel_vit.py",
    "sparse_attention.py",
    "token_groups.py",
    "token_merging.py",
    "token_reduction.py",
    "token_selectors.py",
    "value_checks.py",
    "vit_blocks.py",
    "vit_layer.py",
)

#: A family's own files, which its checkpoints carry on top of `REMOTE_CODE_FILES` (they build on the ViT files).
FAMILY_CODE_FILES = {
    "deit": ("configuration_trilevel_deit.py", "modeling_trilevel_deit.py"),
    "dinov2": ("configuration_trilevel_dinov2.py", "modeling_trilevel_dinov2.py"),
}

__all__ = [
    "FAMILY_CODE_FILES",
    "REMOTE_CODE_FILES",
    "TriLevelDeiTConfig",
    "TriLevelDeiTForImageClassificationWithTeacher",
    "TriLevelDeiTForImageClassificationWithTeacherOutput",
    "TriLevelDeiTModel",
    "TriLevelDeiTPreTrainedModel",
    "TriLevelDinov2Config",
    "TriLevelDinov2ForImageClassification",
    "TriLevelDinov2Model",
    "TriLevelDinov2PreTrainedModel",
    "TriLevelViTConfig",
    "TriLevelViTForImageClassification",
    "TriLevelViTImageClassifierOutput",
    "TriLevelViTModel",
    "TriLevelViTModelOutput",
    "TriLevelViTPreTrainedModel",
]
