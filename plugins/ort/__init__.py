"""mlpdeploy's compiled ONNX Runtime CPU kernels (opt-in): C sources, build, ABI-checked loading."""
