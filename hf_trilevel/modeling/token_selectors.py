"""Token selection seam: which patch tokens survive a pruning layer, chosen by name like an attention backend.

A `TokenSelector` is an `nn.Module` that each pruning layer owns (so a learned selector's weights live in the
checkpoint under `...layers.{i}.token_selector.`). It scores and decides; the layer only applies the decision. The
config field `token_selector` names the class in a small registry, as `config._attn_implementation` names an
attention function in transformers' `AttentionInterface`:

    register_token_selector("my_selector", MySelector)
    config = TriLevelViTConfig(token_selector="my_selector")

The registry lives in this module: a checkpoint loaded with `trust_remote_code=True` runs its own copy of this file,
so a selector registered in the `hf_trilevel` package is not visible there (and vice versa). The contract (shapes,
padding convention, auxiliary losses) is documented in docs/token_selection.md.

This file is part of the remote-code set copied into every saved checkpoint: it imports only torch, the standard
library and flat siblings. It is a little over 400 lines because the registry and the three built-in selectors it
names are one unit (the registry is filled where the classes are defined); split the selectors out before adding more.
"""

import inspect
from dataclasses import dataclass

import torch
from torch import nn

from .token_reduction import (
    class_token_attention,
    gumbel_top_tokens,
    mass_kept_counts,
    num_kept_tokens,
    select_top_tokens,
    select_top_tokens_per_image,
)

# The built-in selector names whose pruning layers own a trained `TokenScorer`, and the importances "adaptive" ranks.
LEARNED_SCORE_SELECTORS = ("learned",)
TOKEN_IMPORTANCES = ("class_attention", "learned")


@dataclass
class TokenSelection:
    """A selector's decision for one pruning layer.

    Attributes:
        patch_index: `[batch, k]` int64 indices into the layer's current patch axis (0 = first patch token after the
            class token), ascending within each image's valid slots; or None to keep every token and return only
            `auxiliary_loss` (how a learned scorer that dropped nothing this step still joins the backward pass, which
            DDP without `find_unused_parameters` requires).
        scores: `[batch, tokens]` non-negative weights over the current sequence (class token first) that token
            fusion averages the dropped tokens with; required when `token_fusion=True`.
        kept_counts: `[batch]` int64 number of valid slots per image, or None when every image keeps all `k`
            (informational: the layer counts the valid slots from `valid_mask`).
        valid_mask: `[batch, k]` bool, False at padded slots, or None when every slot is valid. Padded slots come
            after each image's valid ones; their indices are ignored (point them at any dropped patch).
        auxiliary_loss: a scalar tensor the model adds to its loss (e.g. a learned selector's budget term), or None.
            Make it a mean over the batch's images: when the model splits a batch into groups by kept count, it
            weights each group's term by the group's share of the images.
        token_gates: `[batch, k]` multipliers of the kept patch tokens, or None. A straight-through gate is exactly
            1 in value and carries the gradient of a soft keep decision, which is how a learned scorer trains while
            the dropped tokens are physically removed.
    """

    patch_index: torch.Tensor | None
    scores: torch.Tensor | None = None
    kept_counts: torch.Tensor | None = None
    valid_mask: torch.Tensor | None = None
    auxiliary_loss: torch.Tensor | None = None
    token_gates: torch.Tensor | None = None


class TokenSelector(nn.Module):
    """Base class of token selectors: subclass, implement `forward`, and register the class under a name.

    Built once per pruning layer as `selector_class(config, layer_idx)`.

    A selector that returns per-image counts (`valid_mask`) sets `pads_tokens = True`: the layers then carry the
    padding through the masks of later layers. Rectangular selectors leave it False and pay nothing for padding.
    """

    pads_tokens: bool = False

    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        # The model's head count: a slimmed layer's missing heads count in the head average as the uniform
        # attention they had when masked (`class_token_attention`), so slimming changes no score.
        self.num_heads = config.num_attention_heads
        self.num_prefix_tokens = getattr(config, "num_prefix_tokens", 1)  # class token(s) leading every sequence

    def forward(
        self,
        hidden_states: torch.Tensor,
        query: torch.Tensor,
        key: torch.Tensor,
        patch_positions: torch.Tensor,
        attention_mask: torch.Tensor | None,
        *,
        keep_rate: float,
        fusion: bool,
        scaling: float,
        **settings,
    ) -> TokenSelection | None:
        """Decide which patch tokens survive; return None to keep them all.

        Args:
            hidden_states: `[batch, tokens, hidden]` after the layer's attention block and residual.
            query, key: `[batch, heads, tokens, head_dim]` of the layer's attention (no extra projection needed).
            patch_positions: `[batch, patches]` original positions of the current patch tokens (-1 = padding).
            attention_mask: the additive mask the layer's attention used, or None.
            keep_rate: this forward's `token_keep_rate`.
            fusion: whether the layer will fuse the dropped tokens (then `scores` is required).
            scaling: the attention's logit scale, `head_dim ** -0.5`.
            settings: further settings of this forward, read once per forward like the keep rate; today
                `sparsity`, the whole `SparsitySettings` (mass, floor, temperature). Accept `**settings` so that
                later additions do not break a selector.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement `forward`.")

    def log_importance(
        self,
        hidden_states: torch.Tensor,
        query: torch.Tensor,
        key: torch.Tensor,
        patch_positions: torch.Tensor,
        attention_mask: torch.Tensor | None,
        *,
        scaling: float,
    ) -> torch.Tensor:
        """`[batch, patches]` log importance of the current patch tokens (-inf at padding), with gradients.

        What the selector ranks by, so that a distillation term can teach it (dense/sparse training aligns it with
        the dense model's). The default is the log class-token attention, plus the corrections of the selector's
        `scorer` (a `TokenScorer`) if it has one, as `"learned"` and `"adaptive"` over learned importance rank; a
        selector with other scores overrides this. Called only when the forward records token importance.
        """
        prefix = getattr(self, "num_prefix_tokens", 1)
        heads = getattr(self, "num_heads", None)
        attention = class_token_attention(query, key, scaling, attention_mask, heads, prefix)
        return patch_log_scores(getattr(self, "scorer", None), hidden_states, attention, patch_positions, prefix)


class ClassAttentionSelector(TokenSelector):
    """Tri-Level E-ViT / EViT: keep the patches the class token attends to most (heads averaged).

    The decision carries no gradient; the scores do only when fusion uses them as weights.
    """

    def forward(
        self, hidden_states, query, key, patch_positions, attention_mask, *, keep_rate, fusion, scaling, **settings
    ):
        num_patches = patch_positions.shape[1]
        num_keep = num_kept_tokens(num_patches, keep_rate)
        if num_keep >= num_patches:
            return None
        prefix = self.num_prefix_tokens
        scores = fusion_scores(query, key, scaling, attention_mask, fusion, self.num_heads, prefix)
        with torch.no_grad():
            patch_index = select_top_tokens(scores[:, prefix : prefix + num_patches], num_keep)
        return TokenSelection(patch_index=patch_index, scores=scores)


def fusion_scores(
    query: torch.Tensor,
    key: torch.Tensor,
    scaling: float,
    attention_mask: torch.Tensor | None,
    fusion: bool,
    num_heads: int | None = None,
    num_prefix_tokens: int = 1,
) -> torch.Tensor:
    """Class-token attention `[batch, tokens]`, with gradients only when fusion weighs the dropped tokens by it."""
    with torch.set_grad_enabled(torch.is_grad_enabled() and fusion):
        return class_token_attention(query, key, scaling, attention_mask, num_heads, num_prefix_tokens)


class ZeroInitLinear(nn.Linear):
    """A `Linear` that the model's weight init sets to zero (see `TriLevelViTPreTrainedModel._init_weights`)."""


class TokenScorer(nn.Module):
    """A small MLP per pruning layer whose output corrects the log class-token attention of each patch.

    `LayerNorm -> Linear(hidden, hidden // 4) -> GELU -> Linear(hidden // 4, 1)`, DynamicViT-style (an MLP per
    pruning stage, reading that stage's tokens) rather than SViTE+'s single `Linear(hidden, 1)` after the
    embeddings: a token's importance changes with depth, and the later stages are where most tokens go. The output
    layer starts at zero, so a fresh scorer ranks exactly as class-token attention does, and a plain ViT (or
    `"class_attention"`) checkpoint starts from its own ranking instead of a random one.
    """

    def __init__(self, config):
        super().__init__()
        width = max(1, config.hidden_size // 4)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.hidden = nn.Linear(config.hidden_size, width)
        self.activation = nn.GELU()
        self.output = ZeroInitLinear(width, 1)

    def forward(self, patch_states: torch.Tensor) -> torch.Tensor:
        """`[batch, patches, hidden]` -> `[batch, patches]` additive log-score corrections."""
        return self.output(self.activation(self.hidden(self.norm(patch_states)))).squeeze(-1)


def learned_scorer_flops(config) -> int:
    """Forward FLOPs of one `TokenScorer` per patch token (2 per multiply-accumulate, as `flops.py` counts)."""
    width = max(1, config.hidden_size // 4)
    return 2 * config.hidden_size * width + 2 * width


def patch_log_scores(
    scorer: TokenScorer | None,
    hidden_states: torch.Tensor,
    class_attention: torch.Tensor,
    patch_positions: torch.Tensor,
    num_prefix_tokens: int = 1,
) -> torch.Tensor:
    """`[batch, patches]` log importance: log class-token attention, plus the scorer's correction; -inf at padding."""
    patches = slice(num_prefix_tokens, num_prefix_tokens + patch_positions.shape[1])
    log_scores = class_attention[:, patches].clamp_min(torch.finfo(torch.float32).tiny).log()
    if scorer is not None:
        log_scores = log_scores + scorer(hidden_states[:, patches]).float()
    return log_scores.masked_fill(patch_positions < 0, float("-inf"))


def scorer_in_graph(
    scorer: TokenScorer | None,
    hidden_states: torch.Tensor,
    patch_positions: torch.Tensor,
    training: bool,
    num_prefix_tokens: int = 1,
) -> TokenSelection | None:
    """Keep every token; in training, add the scorer's output times zero to the loss so its weights get a (zero)
    gradient. Under DDP without `find_unused_parameters` (the Trainer's setting with gradient checkpointing), a
    parameter that misses one backward pass stops the run, and a keep-rate warm-up at 1.0 drops nothing for a while.
    """
    if scorer is None or not (training and torch.is_grad_enabled()):
        return None
    output = scorer(hidden_states[:, num_prefix_tokens : num_prefix_tokens + patch_positions.shape[1]])
    return TokenSelection(patch_index=None, auxiliary_loss=output.sum() * 0.0)


class LearnedSelector(TokenSelector):
    """SViTE+ / DynamicViT, with real savings: a trained `TokenScorer` ranks the patches; the rest are removed.

    Keeps `ceil(n * token_keep_rate)` patches per image, like `"class_attention"`. In training the choice is a
    Gumbel top-k sample at `token_selector_temperature`, and the kept tokens are multiplied by straight-through
    gates (exactly 1) so the scorer trains with the task loss while dropped tokens are gathered away, not zeroed.
    In evaluation the top scores are kept, without noise. Fusion weights are the class-token attention.
    """

    def __init__(self, config, layer_idx: int):
        super().__init__(config, layer_idx)
        self.scorer = TokenScorer(config)

    def forward(
        self, hidden_states, query, key, patch_positions, attention_mask, *, keep_rate, fusion, scaling, **settings
    ):
        num_patches = patch_positions.shape[1]
        num_keep = num_kept_tokens(num_patches, keep_rate)
        if num_keep >= num_patches:
            return scorer_in_graph(self.scorer, hidden_states, patch_positions, self.training, self.num_prefix_tokens)
        prefix = self.num_prefix_tokens
        attention = fusion_scores(query, key, scaling, attention_mask, fusion, self.num_heads, prefix)
        log_scores = patch_log_scores(self.scorer, hidden_states, attention.detach(), patch_positions, prefix)
        if self.training:
            sparsity = settings["sparsity"]
            patch_index, _, gates = gumbel_top_tokens(
                log_scores, num_keep, sparsity.token_selector_temperature, sparsity.token_selector_noise
            )
            return TokenSelection(patch_index=patch_index, scores=attention, token_gates=gates)
        return TokenSelection(patch_index=select_top_tokens(log_scores.detach(), num_keep), scores=attention)


class AdaptiveSelector(TokenSelector):
    """SaiT: each image keeps the fewest patches whose importance reaches `token_keep_mass`, within bounds.

    Importance is the class-token attention (`token_importance="class_attention"`) or the learned scores
    (`"learned"`, trained as in `LearnedSelector`), renormalised over the image's current patches. Counts are
    bounded by `ceil(n * token_keep_rate)` above and `ceil(n * min(token_min_keep_rate, token_keep_rate))` below,
    see `mass_kept_counts`. The batch is padded to its largest count (`pads_tokens`), and the model splits it
    into groups of similar counts (`token_count_buckets`) so the padding costs little. Both read the counts on the
    host. An exported graph (`torch.export`, ONNX) reads the largest count as a data-dependent size (with attention
    sparsity: pads to the whole patch axis) and is never split; `torch.compile` pads to the whole patch axis.
    """

    pads_tokens = True

    def __init__(self, config, layer_idx: int):
        super().__init__(config, layer_idx)
        self.scorer = TokenScorer(config) if config.token_importance == "learned" else None

    def patch_log_scores(
        self, hidden_states: torch.Tensor, attention: torch.Tensor, patch_positions: torch.Tensor
    ) -> torch.Tensor:
        """`[batch, patches]` log importance (-inf at padding); its softmax is the mass the counts are taken from."""
        return patch_log_scores(self.scorer, hidden_states, attention, patch_positions, self.num_prefix_tokens)

    def forward(
        self, hidden_states, query, key, patch_positions, attention_mask, *, keep_rate, fusion, scaling, **settings
    ):
        sparsity = settings["sparsity"]
        attention = fusion_scores(query, key, scaling, attention_mask, fusion, self.num_heads, self.num_prefix_tokens)
        log_scores = self.patch_log_scores(hidden_states, attention.detach(), patch_positions)
        num_valid = (patch_positions >= 0).sum(dim=1)
        with torch.no_grad():
            importance = log_scores.softmax(dim=-1)
            mass, floor = sparsity.token_keep_mass, sparsity.token_min_keep_rate
            counts = mass_kept_counts(importance, num_valid, mass, keep_rate, floor)
            if self.num_prefix_tokens == 0:  # no class token: keep two tokens at least, so attention stays attention
                counts = torch.minimum(counts.clamp_min(2), num_valid)
        if torch.compiler.is_exporting() and sparsity.attention_keep_rate >= 1.0:
            # torch.export / ONNX: the width is read at run time (a data-dependent size; attention sparsity's budget
            # needs a Python width, so it pads below), and a lone image computes only its own tokens.
            width = counts.max().item()
            torch._check(width >= (1 if self.num_prefix_tokens else 2))  # sdpa asks whether there is one query
            torch._check(width <= patch_positions.shape[1])
        elif torch.compiler.is_compiling():  # a host read would break torch.compile's graph: pad to the whole axis
            width = patch_positions.shape[1]
        else:
            # One host read decides the path (and the padded width) for the whole batch.
            counts_host, valid_host = torch.stack([counts, num_valid]).tolist()
            if counts_host == valid_host:  # every image keeps every patch it has: nothing to drop
                return scorer_in_graph(
                    self.scorer, hidden_states, patch_positions, self.training, self.num_prefix_tokens
                )
            width = max(counts_host)
            if min(valid_host) == patch_positions.shape[1] and min(counts_host) == width:
                # No padding in or out (e.g. token_keep_mass=1.0): a rectangular decision, exactly the fixed rate's.
                counts = width
        if self.scorer is not None and self.training:
            patch_index, valid_mask, gates = gumbel_top_tokens(
                log_scores, counts, sparsity.token_selector_temperature, sparsity.token_selector_noise, width
            )
        elif isinstance(counts, int):
            patch_index, valid_mask, gates = select_top_tokens(log_scores.detach(), counts), None, None
        else:
            patch_index, valid_mask = select_top_tokens_per_image(log_scores.detach(), counts, width)
            gates = None
        kept_counts = None if valid_mask is None else counts
        return TokenSelection(
            patch_index=patch_index, scores=attention, kept_counts=kept_counts, valid_mask=valid_mask, token_gates=gates
        )


_BUILT_IN_SELECTORS: dict[str, type[TokenSelector]] = {
    "class_attention": ClassAttentionSelector,
    "learned": LearnedSelector,
    "adaptive": AdaptiveSelector,
}
_TOKEN_SELECTORS: dict[str, type[TokenSelector]] = dict(_BUILT_IN_SELECTORS)
# The selectors every checkpoint's code knows (a user's own are registered per process), in the order tools list them.
BUILT_IN_TOKEN_SELECTORS = tuple(_BUILT_IN_SELECTORS)


def register_token_selector(name: str, selector_class: type[TokenSelector], *, overwrite: bool = False) -> None:
    """Make `selector_class` available as `config.token_selector = name` for models built afterwards."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a token selector name must be a non-empty string, got {name!r}.")
    if not (isinstance(selector_class, type) and issubclass(selector_class, TokenSelector)):
        raise ValueError(f"`selector_class` must be a TokenSelector subclass, got {selector_class!r}.")
    if name in _BUILT_IN_SELECTORS and _BUILT_IN_SELECTORS[name] is not selector_class:
        raise ValueError(f"{name!r} is a built-in token selector and cannot be replaced; register under another name.")
    if name in _TOKEN_SELECTORS and not overwrite and _TOKEN_SELECTORS[name] is not selector_class:
        raise ValueError(f"a token selector named {name!r} is already registered; pass `overwrite=True` to replace.")
    _TOKEN_SELECTORS[name] = selector_class


def unregister_token_selector(name: str) -> None:
    """Remove a registered selector (the built-in ones stay)."""
    if name in _BUILT_IN_SELECTORS:
        raise ValueError(f"the built-in token selector {name!r} cannot be unregistered.")
    _TOKEN_SELECTORS.pop(name, None)


def registered_token_selectors() -> list[str]:
    """Names `config.token_selector` accepts, sorted."""
    return sorted(_TOKEN_SELECTORS)


def check_token_selector(name: object) -> str:
    """Return `name`, or raise `ValueError` listing the registered selectors."""
    if not isinstance(name, str) or name not in _TOKEN_SELECTORS:
        raise ValueError(
            f"`token_selector` must be one of {registered_token_selectors()} (add one with "
            f"`register_token_selector`), got {name!r}."
        )
    return name


def selector_pads_tokens(name: str) -> bool:
    """Whether the registered selector `name` returns per-image counts (and so pads batches)."""
    return _TOKEN_SELECTORS[check_token_selector(name)].pads_tokens


def accepts_settings(selector: TokenSelector) -> bool:
    """Whether `selector.forward` takes the per-forward settings (`**settings` or a `sparsity` keyword)."""
    parameters = inspect.signature(selector.forward).parameters.values()
    return any(parameter.kind is parameter.VAR_KEYWORD or parameter.name == "sparsity" for parameter in parameters)


def build_token_selector(config, layer_idx: int) -> TokenSelector:
    """The selector `config.token_selector` names, built for layer `layer_idx`."""
    return _TOKEN_SELECTORS[check_token_selector(config.token_selector)](config, layer_idx)


__all__ = [
    "AdaptiveSelector",
    "ClassAttentionSelector",
    "LearnedSelector",
    "TokenScorer",
    "TokenSelection",
    "TokenSelector",
    "accepts_settings",
    "build_token_selector",
    "check_token_selector",
    "learned_scorer_flops",
    "register_token_selector",
    "registered_token_selectors",
    "selector_pads_tokens",
    "unregister_token_selector",
]
