"""CachedAttention: the subset of com.microsoft GroupQueryAttention mlpdeploy's cached decoders use (packed QKV, rotary, causal per row), as an ONNX Runtime CPU kernel."""
