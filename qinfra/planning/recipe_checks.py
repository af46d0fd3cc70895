"""What a recipe will make, checked against the model and the devices before anything runs: a
group size that does not divide a layer, a scheme whose kernel the fleet's GPUs lack. Pure: the
planner calls these with the model facts it already loaded."""

from __future__ import annotations

import dataclasses

from qinfra.core.formats import format_info
from qinfra.core.hardware import Gpu
from qinfra.core.modelinfo import ModelInfo, Quantization
from qinfra.core.recipes import (
    DEFAULT_GROUP_SIZE,
    GROUP_SIZES,
    SCHEME_FORMAT,
    CompressorRecipe,
    Scheme,
)
from qinfra.core.spec import VariantSpec


def linear_inputs(model: ModelInfo) -> dict[str, int]:
    """Input width of each kind of linear layer (what a weight group runs along); MLA models
    have more, but llm-compressor's W4A16 on those is out of qinfra's tested range anyway."""
    sizes = {"hidden_size (q/k/v, gate/up)": model.hidden_size,
             "attention output (o_proj)": model.num_attention_heads * model.head_dim,
             "intermediate_size (down_proj)": model.intermediate_size}
    if model.moe is not None:
        sizes["expert intermediate_size"] = model.moe.intermediate_size
        if model.moe.shared_intermediate_size:
            sizes["shared expert intermediate_size"] = model.moe.shared_intermediate_size
    return sizes


def dividing_groups(model: ModelInfo) -> tuple[int, ...]:
    """The offered group sizes that divide every linear layer's input, largest first."""
    sizes = linear_inputs(model).values()
    return tuple(g for g in GROUP_SIZES if all(s % g == 0 for s in sizes))


def fitting_group(model: ModelInfo, most: int = DEFAULT_GROUP_SIZE) -> int | None:
    """The largest offered group size up to `most` that divides every linear layer's input."""
    return next((g for g in dividing_groups(model) if g <= most), None)


def recipe_errors(variant: VariantSpec, model: ModelInfo) -> tuple[str, ...]:
    """Why the variant's recipe cannot make a servable artifact of this model, each with the
    nearest setting that can."""
    recipe = variant.recipe
    if not isinstance(recipe, CompressorRecipe) or (group := recipe.group) is None:
        return ()
    sizes = linear_inputs(model)
    bad = {name: size for name, size in sizes.items() if size % group}
    if not bad:
        return ()
    fits = dividing_groups(model)
    nearest = min(fits, key=lambda g: (abs(g - group), -g)) if fits else None
    named = ", ".join(f"{name} {size}" for name, size in bad.items())
    fix = (f"group_size {nearest}" if nearest else
           f"scheme {Scheme.W8A8.value} (per-channel, no groups)")
    return (f"recipe llm-compressor {recipe.scheme.value}: group_size {group} does not divide "
            f"{named}; nearest that divides every layer: {fix}",)


def model_as_made(variant: VariantSpec, model: ModelInfo) -> ModelInfo:
    """The model facts the recipe's checkpoint will carry (its bits and group size), so a made
    W4A16 artifact is sized with the scales it will have, not the table's default group."""
    recipe = variant.recipe
    if not isinstance(recipe, CompressorRecipe) or recipe.group is None:
        return model
    info = format_info(SCHEME_FORMAT[recipe.scheme])
    bits = int(info.linear_bits)  # 4 or 8: the table's figure without its scales
    quant = Quantization("compressed-tensors", bits=bits, group_size=recipe.group,
                         zero_points=recipe.scheme is Scheme.W4A16_ASYM)
    return dataclasses.replace(model, quantization=quant)


def recipe_device_error(variant: VariantSpec, gpu: Gpu) -> str | None:
    """An FP8 W8A8 checkpoint made for GPUs without FP8 tensor cores: vLLM would run it only
    weight-only through Marlin, so making it is refused in favour of INT8 W8A8."""
    recipe = variant.recipe
    if not isinstance(recipe, CompressorRecipe) or recipe.scheme is not Scheme.FP8_DYNAMIC:
        return None
    need = format_info(SCHEME_FORMAT[recipe.scheme]).vllm_min_cc
    if need is None or gpu.compute_capability >= need:
        return None
    return (f"recipe llm-compressor FP8_DYNAMIC makes FP8 W8A8, which needs compute capability "
            f">= {need}; {gpu.name} has {gpu.compute_capability}, so vLLM would fall back to "
            f"FP8 weight-only. Nearest: scheme {Scheme.W8A8.value} (format int8, INT8 W8A8 from "
            "compute capability 7.5)")
