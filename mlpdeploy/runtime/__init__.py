"""Load an artifact and run it.

Public API:
    runtime.engine.Engine, runtime.generate.CachedGenerator   run an artifact; decode with a KV cache
    runtime.step.Stepper                  the one step function every decoding loop drives (prefill, k tokens, rewind)
    runtime.speculative (make_drafter, Drafter, ...)        speculative decoding: `--speculative MODE`
    runtime.sampling.Sampling, runtime.ties (near-ties)     choosing tokens; what a greedy run records
    runtime.prompt_bench (bench_prompts)  decode speed on real prompts (`bench --decode --prompts`)
    runtime.latency (measure_latency, model_bytes, peak_rss_bytes), runtime.measure (measure_decode)
(ONNX Runtime sessions: `mlpdeploy.backends.onnxruntime.session`; candidates: `mlpdeploy.backends.candidate`.)
"""
