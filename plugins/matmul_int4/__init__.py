"""MatMulInt4: MatMulNBits' 4-bit product at accuracy level 4, as mlpdeploy's ONNX Runtime CPU kernel."""
