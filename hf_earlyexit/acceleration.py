# Copyright 2026 The hf-earlyexit Authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Early exit on top of the CPU inference tools users already apply to a transformers model.

The exit loop runs whatever linear layers and dtype the model has:

- int8 dynamic quantization (weights int8, activations quantized per call; CPU only): [`quantize_layers`] quantizes
  the linear layers inside the encoder layers and leaves the exit heads (and bypasses, poolers, classifiers) in fp32.
  `torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)` works too, but quantizes the
  heads as well: a head's products are too small for int8 to save anything and each call pays for quantizing its
  input, so at batch size 1 the early-exit model keeps less of its speed-up (converged SST-2 multi-exit model, no
  bypasses, at 2.48x: 0.85 of its fp32 speed-up against 0.98 with `quantize_layers`; a TOKEE tagger, whose time goes
  to its packed layers, 0.71 against 0.72; `benchmarks/results/compose`). Both change the exits of about the same share of
  the examples. torch 2.13 warns that `torch.ao`'s quantized tensors are deprecated in favour of `torchao`; they
  still work. Quantizing moves the confidences: calibrate the quantized model (`hf_earlyexit.calibrate(model,
  batches, ...)`) rather than reuse thresholds calibrated in fp32. Its live runs then match the calibration up to the
  few examples near a threshold (activations are quantized per call, so a sub-batch left after some examples exit
  gets slightly other logits than the full batch the calibration recorded), where fp32 matches it exactly;
- bf16: `AutoModel...from_pretrained(path, dtype=torch.bfloat16)` (bf16 weights), or running the model under
  `torch.autocast("cpu", dtype=torch.bfloat16)` (fp32 weights, bf16 matrix products; the outputs stay fp32).

`torch.compile` of the whole model does not pay: the exit decision is a data-dependent branch after every layer, so
dynamo breaks the graph there and recompiles for new batch compositions (a batch of one, a batch where nothing leaves).
[`compile_layers`] compiles the encoder layers instead, the work between two decisions, with dynamic shapes: one graph
serves every batch size and length after warm-up, and the exit loop stays Python.
"""

import warnings

import torch
from torch import nn

from .families import family_of


LAYER_LIST_NAMES = ("layer", "layers")


def encoder_layers(model: nn.Module) -> list[nn.Module]:
    """The encoder layers of `model`, in order: every entry of a `nn.ModuleList` named `layer` or `layers` (BERT's
    `encoder.layer`, DistilBERT's `transformer.layer`, ModernBERT's `layers`; a cascade's members each have theirs)."""
    return [
        layer
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and name.rpartition(".")[2] in LAYER_LIST_NAMES
        for layer in module
    ]


def compile_layers(model: nn.Module, *, dynamic: bool = True, **compile_kwargs) -> nn.Module:
    """Compiles every encoder layer of an early-exit model (or of any transformers encoder) in place with
    `torch.compile`, and returns the model.

    The weights, `state_dict` and `save_pretrained` are unchanged. Compilation happens on the first call of each layer;
    with `dynamic=True` later batches of other sizes and lengths reuse the graphs (batch size 1 gets one graph of its
    own, as `torch.compile` specialises on sizes 0 and 1). TOKEE's packed steps, which run the query, attention output
    and feed-forward of the active positions only, call the layers' parts directly and stay eager.

    Args:
        model: A model with encoder layers (see [`encoder_layers`]).
        dynamic: Passed to `torch.compile`.
        compile_kwargs: Other `torch.compile` arguments (`backend`, `mode`, `options`).

    Raises:
        ValueError: `model` has no encoder layers.
    """
    layers = encoder_layers(model)
    if not layers:
        raise ValueError(
            f"compile_layers: {type(model).__name__} has no encoder layers (no `nn.ModuleList` named "
            f"{' or '.join(repr(name) for name in LAYER_LIST_NAMES)}); compile the model itself with torch.compile"
        )
    for layer in layers:
        layer.compile(dynamic=dynamic, **compile_kwargs)
    return model


QUANTIZED_DTYPES = (torch.qint8, torch.float16)


def quantize_layers(model: nn.Module, dtype: torch.dtype = torch.qint8) -> nn.Module:
    """Dynamic quantization (`torch.ao.quantization.quantize_dynamic`; int8 by default) of the linear layers inside
    the encoder layers of an early-exit model (or of any transformers encoder), in place; returns the model.

    The exit heads, bypasses, poolers and classifiers stay fp32: their products are too small for quantization to
    pay, while every int8 call adds the quantization of its input. Quantize after loading, for inference on the CPU; the
    quantized model cannot be saved (`save_pretrained` the fp32 model and quantize again after loading).

    Args:
        model: A model with encoder layers (see [`encoder_layers`]).
        dtype: `torch.qint8` (int8 weights, int8 products) or `torch.float16` (fp16 weights, fp32 products), passed
            to `quantize_dynamic`.

    Raises:
        ValueError: `dtype` is neither of those, `model` has no encoder layers, or it is a ModernBERT TOKEE model,
            whose packed step slices the fused query/key/value weight (a quantized layer has no weight to slice).
    """
    if dtype not in QUANTIZED_DTYPES:
        raise ValueError(
            f"quantize_layers: dtype must be torch.qint8 or torch.float16 (what quantize_dynamic supports for "
            f"linear layers), got {dtype!r}"
        )
    layers = encoder_layers(model)
    if not layers:
        raise ValueError(
            f"quantize_layers: {type(model).__name__} has no encoder layers (no `nn.ModuleList` named "
            f"{' or '.join(repr(name) for name in LAYER_LIST_NAMES)}); quantize the model itself with "
            "torch.ao.quantization.quantize_dynamic"
        )
    backbone = getattr(model, "encoder_backbone", None)
    if backbone is not None and backbone.model_class_name == "ModernBertModel" and family_of(model).is_token:
        raise ValueError(
            "quantize_layers: TOKEE on ModernBERT slices the fused Wqkv weight to project only the active queries; "
            "dynamic quantization of it is not supported (bf16 is)"
        )
    with warnings.catch_warnings():  # torch 2.13 announces the deprecation of torch.ao's quantized tensors
        warnings.simplefilter("ignore")
        for layer in layers:
            torch.ao.quantization.quantize_dynamic(layer, {nn.Linear}, dtype=dtype, inplace=True)
    return model


__all__ = ["compile_layers", "encoder_layers", "quantize_layers"]
