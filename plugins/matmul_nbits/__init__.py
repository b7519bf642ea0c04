"""MatMulInt4 / MatMulInt8: MatMulNBits' 4- and 8-bit products at accuracy level 4, as mlpdeploy's ONNX Runtime CPU kernels."""
