"""Numeric weight formats as pure numpy codecs (no ONNX in here): E2M1/E4M3/E8M0 elements,
NVFP4, MXFP4 and INT4 blockwise weights, nibble packing, and fake-quantized torch linears.

Public API:
    parse_format("nvfp4" | "mxfp4" | "int4[-64|-128]" | "int4asym[-…]") -> Format
    Format.quantize(w [K, N]) -> QuantizedWeight (.dequantize(), .codes, .scales, .nbytes(), ...)
    encode_e2m1 / decode_e2m1, encode_e4m3 / decode_e4m3, decode_e8m0, pack_nibbles / unpack_nibbles
    quantized_linears(module, {path: Format}) — a context with those nn.Linear weights fake-quantized
    quantized_sites_copy(module, [QuantizedSite(linears, format, int8_block)]) — a copy as a rewritten graph reports its sites;
    quantized_sites_view(...) the same, sharing every weight it does not quantize with the model
    QuantError (a MlpdeployError: NaN/inf weights, unknown formats, bad blocks)
Formats, block sizes and code tables are facts of mlpdeploy.contract (WEIGHT_FORMATS, WEIGHT_BLOCKS, E2M1_VALUES, ...).
"""

from mlpdeploy.quant.formats import (  # noqa: F401
    Format,
    QuantizedWeight,
    make_format,
    parse_format,
    quantize,
    signed_int4,
)
from mlpdeploy.quant.grid import QuantError, check_finite, round_to_grid  # noqa: F401
from mlpdeploy.quant.minifloat import decode_e2m1, decode_e4m3, decode_e8m0, encode_e2m1, encode_e4m3  # noqa: F401
from mlpdeploy.quant.packing import column_blobs, column_nibbles, pack_nibbles, unpack_nibbles  # noqa: F401
from mlpdeploy.quant.torch_apply import (  # noqa: F401
    QuantizedSite,
    dequantized_weight,
    quantized_linears,
    quantized_sites_copy,
    quantized_sites_view,
)
