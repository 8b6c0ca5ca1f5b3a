"""`--quantize` values: what the launcher checks before starting anything and what the shard applies.

tgi-py quantizes the checkpoint's float weights itself when it loads them (shard/quantization.py):
  int8  per output channel, symmetric (a float32 scale per weight row). TGI's `eetq` means the same
        (int8 weight-only, per channel), so it is accepted as another name for it.
  int4  groups of 32 weights along the input dimension, each with a scale and a minimum (fp16), the
        layout of GGUF's Q4_1 blocks.
TGI's other values name checkpoint formats or GPU kernels that tgi-py does not have; they, and anything
else, are refused with the list of what is supported.
"""

from __future__ import annotations

ALIASES = {"int8": "int8", "eetq": "int8", "int4": "int4"}
# TGI's own --quantize values that are not supported here (named in the error, so that it reads as
# "known, but not here" rather than "a typo").
TGI_UNSUPPORTED = ("awq", "compressed-tensors", "exl2", "fp8", "gptq", "marlin", "bitsandbytes", "bitsandbytes-nf4",
                   "bitsandbytes-fp4")
SUPPORTED_TEXT = ("int8 (per-output-channel int8 weights; TGI's eetq is accepted as the same) and int4 "
                  "(groups of 32 with a scale and a minimum, as GGUF Q4_1)")


class UnsupportedQuantization(ValueError):
    pass


def resolve_quantize(value: str | None) -> str | None:
    """The canonical kind ("int8", "int4") of a --quantize value, None for none; unsupported values raise
    UnsupportedQuantization with a message that names what is supported."""
    if value is None:
        return None
    name = value.strip().lower()
    if name in ("", "none"):
        return None
    if name in ALIASES:
        return ALIASES[name]
    what = "TGI's" if name in TGI_UNSUPPORTED else "an unknown"
    raise UnsupportedQuantization(
        f"--quantize {value}: {what} quantization that tgi-py does not support. tgi-py quantizes the "
        f"float weights itself at load; supported: {SUPPORTED_TEXT}")
