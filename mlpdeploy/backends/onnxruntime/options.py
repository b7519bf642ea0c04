"""The `onnxruntime` backend's options (its fields declare their command-line options)."""

from __future__ import annotations

from dataclasses import dataclass

from mlpdeploy.backends.onnxruntime.session import DEFAULT_OPT_LEVEL, OPT_LEVELS
from mlpdeploy.backends.options import BuildOptions, option


@dataclass
class OrtOptions(BuildOptions):
    device: str = option("auto", choices=("auto", "cpu", "cuda"), help="execution provider.")
    opt_level: str = option(DEFAULT_OPT_LEVEL, choices=tuple(OPT_LEVELS),
                            help="graph optimization level (at `all`, the saved model is optimized at `extended`, portable across "
                                 "CPUs; ONNX Runtime applies its layout transforms when it loads it).")
    fusions: bool = option(True, flags=("--no-ort-fusions", "--no-decoder-fusions"), negate=True,
                           help="build the graph as exported, without ORT contrib-op fusions (default: a --kv-cache decoder's attention "
                                "and norms as GroupQueryAttention, RotaryEmbedding, SkipSimplifiedLayerNormalization (pass ort-decoder); "
                                "any other graph through onnxscript's ORT fusions, e.g. Attention, BiasGelu, SkipLayerNormalization "
                                "(pass ort-fusions)). --no-decoder-fusions is the old name.")
    kernels: bool = option(False, flags=("--ort-kernels",),
                           help="compile mlpdeploy's CPU kernels (GroupRational, SparseMLP, MatMulInt4, MatMulInt8, CachedAttention; float32) "
                                "with the system C compiler and register them (default: the portable function bodies); int4 and int8 "
                                "MatMulNBits nodes (block 32, accuracy level 4) then run its MatMulInt4 / MatMulInt8 kernels, faster at every "
                                "row count and 2x at 8-16 rows (batched decoding, verify passes), and a cached decoder's GroupQueryAttention "
                                "nodes its CachedAttention kernel (1.7-5x faster per node at 1-16 rows).")
