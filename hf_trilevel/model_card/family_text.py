"""How a model card names a model's family (`hf_trilevel.modeling.FAMILY_CLASSES`): its title, what the model is, the
files its code lives in, and the tokens before the patches (`config.num_prefix_tokens`: ViT's class token, DeiT's
class and distillation tokens, none for SigLIP), which rank the patches and keep their attention rows.
"""

from dataclasses import dataclass

from ..modeling import family_of_config
from ..modeling.configuration_trilevel_vit import TriLevelViTConfig


@dataclass(frozen=True)
class FamilyText:
    """How a card names a family: its title, what the model is (a noun phrase the card follows with "that skips
    redundant work"), and its prefix tokens as a noun ("class token"; "" for a family without any)."""

    title: str
    description: str
    prefix_tokens: str


#: Each family's text by `FamilyClasses.name`; a family missing here gets `family_text`'s generic one.
FAMILY_TEXTS = {
    "vit": FamilyText("TriLevel ViT", "a 🤗 Transformers Vision Transformer", "class token"),
    "deit-distilled": FamilyText(
        "TriLevel DeiT",
        "🤗 Transformers' distilled DeiT (a Vision Transformer whose class and distillation tokens each feed a "
        "classifier head; the prediction averages their logits)",
        "class and distillation tokens",
    ),
    "dinov2": FamilyText(
        "TriLevel DINOv2",
        "🤗 Transformers' DINOv2 (a Vision Transformer with LayerScale whose classifier reads the class token and the "
        "mean of the patch tokens)",
        "class token",
    ),
    "clip": FamilyText(
        "TriLevel CLIP",
        "the vision tower of 🤗 Transformers' CLIP (a linear classifier on the mean of its patch tokens)",
        "class token",
    ),
    "siglip": FamilyText(
        "TriLevel SigLIP",
        "the vision tower of 🤗 Transformers' SigLIP (no class token; a linear classifier on the mean of its tokens)",
        "",
    ),
}


def family_text(config: TriLevelViTConfig) -> FamilyText:
    """`FAMILY_TEXTS` of the config's family, or a generic text from its name and prefix-token count."""
    family = family_of_config(config)
    if family.name in FAMILY_TEXTS:
        return FAMILY_TEXTS[family.name]
    count = config.num_prefix_tokens
    prefix = {0: "", 1: "class token"}.get(count, f"{count} prefix tokens")
    return FamilyText(f"TriLevel {family.name}", f"a 🤗 Transformers {family.name} vision transformer", prefix)


def code_files_text(config: TriLevelViTConfig) -> str:
    """The family's own configuration and modeling files, which a saved checkpoint carries (with their siblings)."""
    modules = (type(config).__module__, family_of_config(config).classifier_class.__module__)
    return ", ".join(f"`{module.rpartition('.')[2]}.py`" for module in modules)


def ranking_attention_text(config: TriLevelViTConfig) -> str:
    """Whose attention ranks the patches (`token_reduction.class_token_attention`): the prefix tokens' rows, or the
    mean query's for a family without prefix tokens."""
    prefix = family_text(config).prefix_tokens
    if not prefix:
        return "the attention of the mean query (the average of every token's query: there is no class token)"
    if config.num_prefix_tokens == 1:
        return f"the {prefix}'s attention"
    return f"the attention of the {prefix} (their rows averaged)"


def kept_rows_text(config: TriLevelViTConfig) -> str:
    """The rows and columns attention sparsity never cuts (`sparse_attention`: the prefix tokens')."""
    prefix = family_text(config).prefix_tokens
    if not prefix:
        return "there is no class token: only the fused token, with `token_fusion`, keeps its whole row and column"
    if config.num_prefix_tokens == 1:
        return f"the {prefix}'s row and column always stay"
    return f"the {prefix}' rows and columns always stay"


def input_tokens_text(config: TriLevelViTConfig, patches: int) -> str:
    """`64 tokens + class token`: the patch tokens and the prefix tokens before them."""
    prefix = family_text(config).prefix_tokens
    return f"{patches} tokens + {prefix}" if prefix else f"{patches} tokens, no class token"


__all__ = [
    "FAMILY_TEXTS",
    "FamilyText",
    "code_files_text",
    "family_text",
    "input_tokens_text",
    "kept_rows_text",
    "ranking_attention_text",
]
