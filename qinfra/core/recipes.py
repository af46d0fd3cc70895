"""Recipes: how a variant's artifact is *made* (qinfra:variants.<v>.recipe), as the user writes
them, and which format each one makes. Running them is artifacts/recipes.py; the model-dependent
refusals (a group size that does not divide) are planning/recipe_checks.py."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field

from qinfra.core.formats import Format, format_info
from qinfra.core.spec_types import SpecModel, Whole


class Scheme(StrEnum):
    """llm-compressor's preset schemes qinfra runs (compressed-tensors checkpoints)."""

    W8A8 = "W8A8"
    W4A16 = "W4A16"
    W4A16_ASYM = "W4A16_ASYM"
    W8A16 = "W8A16"
    FP8_DYNAMIC = "FP8_DYNAMIC"


# The format each scheme's checkpoint is, and whether its weights are quantized in groups
# (compressed-tensors presets: W4A16, W4A16_ASYM and W8A16 in groups of 128; W8A8 and FP8 per
# channel).
SCHEME_FORMAT: dict[Scheme, Format] = {
    Scheme.W8A8: Format.INT8,
    Scheme.W4A16: Format.W4A16,
    Scheme.W4A16_ASYM: Format.W4A16,
    Scheme.W8A16: Format.W8A16,
    Scheme.FP8_DYNAMIC: Format.FP8,
}
GROUPED_SCHEMES = frozenset({Scheme.W4A16, Scheme.W4A16_ASYM, Scheme.W8A16})
DEFAULT_GROUP_SIZE = 128  # the grouped presets'
# Group sizes offered when the asked one does not divide the model, largest first.
GROUP_SIZES = (256, 128, 64, 32, 16)


class GgufRecipe(SpecModel):
    """convert_hf_to_gguf.py over a 16-bit checkpoint to GGUF F16, then llama-quantize to the
    variant's type when that is not F16."""

    name: Literal["gguf"] = Field(description="The recipe.")


class CompressorRecipe(SpecModel):
    """llm-compressor over a 16-bit checkpoint: `rtn` is data-free (QuantizationModifier), `gptq`
    calibrates on text (GPTQModifier)."""

    name: Literal["llm-compressor"] = Field(description="The recipe.")
    scheme: Scheme = Field(description="llm-compressor preset scheme; it decides the format.")
    group_size: Whole | None = Field(None, ge=1, le=65536, description="Weights per scale "
                                     "(W4A16, W4A16_ASYM, W8A16; default 128). Must divide every linear "
                                     "layer's input size: `qinfra plan` checks.")
    algorithm: Literal["rtn", "gptq"] = Field("rtn", description="rtn: round to nearest, no "
                                              "data; gptq: calibrated on `calibration`.")
    calibration: str | None = Field(None, description="gptq: a UTF-8 text file, one sample per "
                                    "line (relative paths start at the project root); default: "
                                    "the English text that ships with qinfra.")
    samples: Whole = Field(64, ge=1, le=100_000, description="gptq: calibration samples used.")
    max_seq_len: Whole = Field(512, ge=8, le=1_000_000, description="gptq: tokens per sample.")
    ignore: list[str] = Field(["lm_head"], description="Layers left in 16 bits.")

    @property
    def group(self) -> int | None:
        """The group size the checkpoint will have (None: not grouped)."""
        if self.scheme not in GROUPED_SCHEMES:
            return None
        return self.group_size or DEFAULT_GROUP_SIZE


class DequantizeRecipe(SpecModel):
    """A quantized compressed-tensors checkpoint (the variant's `source`) back to 16 bits, then,
    for a gguf-* variant, on through the gguf recipe: the lesson's GPTQ -> 16-bit -> GGUF path."""

    name: Literal["dequantize"] = Field(description="The recipe.")
    dtype: Literal["float16", "bfloat16"] = Field("float16", description="The 16-bit type the "
                                                  "weights are expanded to.")


RecipeSpec = Annotated[GgufRecipe | CompressorRecipe | DequantizeRecipe,
                       Field(discriminator="name")]


def recipe_problem(recipe: RecipeSpec, fmt: Format, source: str | None) -> tuple[str, str, str] | None:
    """(field under the recipe, value, what is allowed) when `recipe` cannot make `fmt`; the
    stack schema turns it into a FieldError."""
    info = format_info(fmt)
    if isinstance(recipe, GgufRecipe) and not info.is_gguf:
        return ("name", recipe.name, f"a recipe that makes {fmt}: llm-compressor (vLLM formats) "
                "or none; gguf makes gguf-* formats")
    if isinstance(recipe, CompressorRecipe):
        made = SCHEME_FORMAT[recipe.scheme]
        if made is not fmt:
            fits = [s.value for s, f in SCHEME_FORMAT.items() if f is fmt]
            makes = ", ".join(sorted({f.value for f in SCHEME_FORMAT.values()}))
            allowed = (f"a scheme that makes {fmt}: {', '.join(fits)}" if fits else
                       f"none: llm-compressor makes {makes}")
            return ("scheme", recipe.scheme.value, allowed)
        if recipe.group_size is not None and recipe.scheme not in GROUPED_SCHEMES:
            return ("group_size", recipe.group_size,
                    f"unset for {recipe.scheme.value} (only {', '.join(sorted(GROUPED_SCHEMES))} "
                    "quantize in groups)")
        if recipe.algorithm == "rtn" and recipe.calibration is not None:
            return ("calibration", recipe.calibration, "unset with algorithm rtn (data-free), "
                    "or algorithm gptq")
    if isinstance(recipe, DequantizeRecipe):
        if source is None:
            return ("name", recipe.name, "dequantize with the variant's `source` set to the "
                    "quantized checkpoint it expands")
        if not (info.is_gguf or fmt in (Format.BF16, Format.FP16)):
            return ("name", recipe.name, f"a recipe that makes {fmt}; dequantize makes 16-bit "
                    "checkpoints (bf16, fp16) and, through them, gguf-* files")
    return None
